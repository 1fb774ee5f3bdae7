"""How far apart the embedded teacher (gemma3-270m) and student (smollm2-135m) tokenizers are:
shared token strings, and whether the same prompt+program text is cut into the same tokens
(a per-token KL between them needs that, or an alignment). For issue 28's cross-tokenizer
on-policy decision.

Usage: ``python benchmarks/tokenizer_overlap.py``
"""

import statistics

from transformers import AutoTokenizer

from ekt.data.prompt_format import load_format
from ekt.data.tasks import get_task
from ekt.models import resolve_model

s = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
t = AutoTokenizer.from_pretrained(resolve_model("gemma3-270m"))
sv, tv = s.get_vocab(), t.get_vocab()
# compare decoded token strings (byte-level BPE and sentencepiece spell spaces differently)
sd = {s.convert_tokens_to_string([k]) for k in sv}
td = {t.convert_tokens_to_string([k]) for k in tv}
shared = len(sd & td)
print(f"vocab sizes {len(sv)} {len(tv)} decoded strings shared {shared} "
      f"({shared / len(sd):.0%} of the student's)")  # fmt: skip
fmt = load_format("function")
probs = get_task("basic_arithmetic").load("train")[:50]
texts = [fmt.student(p) + "    a = 1\n    return a\n" for p in probs]
same = 0
for x in texts:
    a = [s.decode([i]) for i in s(x, add_special_tokens=False).input_ids]
    b = [t.decode([i]) for i in t(x, add_special_tokens=False).input_ids]
    same += a == b
ls = statistics.mean(len(s(x, add_special_tokens=False).input_ids) for x in texts)
lt = statistics.mean(len(t(x, add_special_tokens=False).input_ids) for x in texts)
print(f"tokens per prompt+program: student {ls:.1f}, teacher {lt:.1f}; "
      f"identical segmentation {same}/{len(texts)}")  # fmt: skip
