"""Held-out check after benchmarks/grpo_short_run.py: greedy zero-shot accuracy of the base
student and the GRPO student on the first N test questions, graded in the sandbox, paired.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/grpo_heldout.py MODEL_DIR N``
"""

import sys

from ekt.data.prompt_format import load_format
from ekt.data.tasks import get_task
from ekt.generation.backends.torch_sampler import TransformersSampler
from ekt.generation.config import SamplingParams
from ekt.methods.grpo import SandboxReward
from ekt.models import load_model
from ekt.sandbox.pool import Sandbox, SandboxConfig

task = get_task("basic_arithmetic")
test = task.load("test")[: int(sys.argv[2])]
fmt = load_format("function")
params = SamplingParams(n=1, temperature=0.0, max_new_tokens=48, stop=fmt.stop)
res = {}
with Sandbox(SandboxConfig(workers=1)) as box:
    for name in ("smollm2-135m", sys.argv[1]):
        m, tok = load_model(name, dtype="float32")
        s = TransformersSampler(m, tok, batch_size=32, progress=False)
        got = {
            c.problem_id: c.text for c in s.sample([(p.id, fmt.student(p)) for p in test], params)
        }
        r = SandboxReward(
            box, task, test, fmt, False, "/tmp/w28/heldout_" + name.replace("/", "_") + ".jsonl"
        )
        recs = r.score([got[p.id] for p in test], [p.id for p in test], 0)
        res[name] = [x.correct for x in recs]
        print(
            f"{name}: greedy zero-shot {sum(x.correct for x in recs)}/{len(test)} "
            "test questions correct"
        )
a, b = res.values()
print(
    "paired: base wrong & grpo right",
    sum((not x) and y for x, y in zip(a, b)),
    "| base right & grpo wrong",
    sum(x and not y for x, y in zip(a, b)),
)
