"""On-policy distillation on tiny models: TRL's DistillationTrainer with reverse KL, the
teacher another tiny model with the same tokenizer; with a different tokenizer, ekt's ULD
route (ekt.training.onpolicy_uld)."""

import json
import math

import pytest
from lm_measures import kill_at_step, weights_moved
from tiny_models import make_tiny_model

from ekt.data.tasks import get_task
from ekt.methods.onpolicy import onpolicy_config, same_vocabulary, train_onpolicy
from ekt.records import read_jsonl
from ekt.training.onpolicy_uld import teacher_view


@pytest.mark.slow
def test_tiny_onpolicy_distillation_trains_the_student_with_trl(tiny_model_dir, tmp_path):
    teacher = make_tiny_model(tmp_path / "teacher", seed=1)  # same corpus: same tokenizer
    problems = get_task("basic_arithmetic").load("train")[:4]
    out = tmp_path / "out"
    cfg = onpolicy_config(out, max_steps=3, per_device_train_batch_size=2,
                          max_completion_length=12, learning_rate=1e-2)  # fmt: skip
    res = train_onpolicy(str(tiny_model_dir), str(teacher), problems, out, cfg)
    assert res.steps == 3 and res.tokens_seen > 0
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [o["step"] for o in log if "loss" in o] == [1, 2, 3]
    assert weights_moved(tiny_model_dir, out / "model") > 0  # the student was trained
    assert train_onpolicy(str(tiny_model_dir), str(teacher), problems, out).steps == 3  # done


def test_a_teacher_with_another_tokenizer_distils_through_uld_and_resumes(tiny_model_dir, tmp_path):
    """Cross-tokenizer route (ekt.training.onpolicy_uld): the student moves, the log has each
    step's finite loss and the teacher's own token count, and a killed run resumes to the
    same log as an uninterrupted one."""
    from transformers import AutoTokenizer

    teacher = make_tiny_model(tmp_path / "teacher", vocab_size=300, seed=1)  # other merges
    s_tok, t_tok = (AutoTokenizer.from_pretrained(d) for d in (tiny_model_dir, teacher))
    assert not same_vocabulary(s_tok, t_tok)
    problems = get_task("basic_arithmetic").load("train")[:4]
    settings = {"max_steps": 4, "save_steps": 2, "per_device_train_batch_size": 2,
                "max_completion_length": 12, "learning_rate": 1e-2}  # fmt: skip

    full = tmp_path / "full"
    res = train_onpolicy(str(tiny_model_dir), str(teacher), problems, full,
                         onpolicy_config(full, **settings))  # fmt: skip
    assert res.steps == 4 and res.tokens_seen > 0
    log = [o for _, o in read_jsonl(full / "train_log.jsonl") if "loss" in o]
    assert [o["step"] for o in log] == [1, 2, 3, 4]
    assert all(math.isfinite(o["loss"]) and o["loss"] > 0 for o in log)
    counts = [o["teacher/tokens"] for o in log]
    assert counts == sorted(counts) and counts[0] > 0 and res.teacher_tokens == counts[-1]
    assert weights_moved(tiny_model_dir, full / "model") > 0  # the ULD loss had a gradient

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_onpolicy(str(tiny_model_dir), str(teacher), problems, cut,
                       onpolicy_config(cut, **settings), callbacks=[kill_at_step(3)])  # fmt: skip
    again = train_onpolicy(str(tiny_model_dir), str(teacher), problems, cut,
                           onpolicy_config(cut, **settings))  # fmt: skip
    assert again.resumed_from and again.resumed_from.endswith("checkpoint-2")
    keys = ("step", "loss", "num_tokens", "teacher/tokens", "completions/mean_length")
    resumed = [o for _, o in read_jsonl(cut / "train_log.jsonl") if "loss" in o]
    assert [[o[k] for k in keys] for o in resumed] == [[o[k] for k in keys] for o in log]
    assert again.teacher_tokens == res.teacher_tokens


def test_the_teacher_reads_the_students_completion_in_its_own_tokens(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    teacher = make_tiny_model(tmp_path / "teacher", vocab_size=300, seed=1)
    s_tok, t_tok = (AutoTokenizer.from_pretrained(d) for d in (tiny_model_dir, teacher))
    prompt, body = "# Question: 2 + 3?\ndef solution():", "\n    return 2 + 3\n"
    p_ids = s_tok(prompt)["input_ids"]
    c_ids = s_tok(body)["input_ids"]
    ids, n = teacher_view(s_tok, t_tok, p_ids, [*c_ids, s_tok.eos_token_id])
    assert t_tok.decode(ids[-n:-1]) == body and ids[-1] == t_tok.eos_token_id
    assert t_tok.decode(ids[:-n]) == prompt
    assert n - 1 != len(c_ids)  # another segmentation: positions pair by index, not by text
    ids, n = teacher_view(s_tok, t_tok, p_ids, c_ids)  # cut at the length limit: no EOS
    assert t_tok.decode(ids[-n:]) == body


def test_a_teacher_token_budget_ends_the_training_before_it_is_spent(tiny_model_dir, tmp_path):
    """teacher_token_budget (issue 28): the training stops after the last step that one more
    step could take past the budget, and never scores more; a budget below one step is
    refused before any training."""
    from transformers import AutoTokenizer

    from ekt.data.prompt_format import load_format
    from ekt.methods.grpo import student_prompts
    from ekt.methods.onpolicy import BudgetTooSmall, step_bound

    teacher = make_tiny_model(tmp_path / "teacher", seed=1)  # same tokenizer: exact counts
    problems = get_task("basic_arithmetic").load("train")[:4]
    settings = {"max_steps": 4, "save_steps": 4, "per_device_train_batch_size": 2,
                "max_completion_length": 12, "learning_rate": 1e-2}  # fmt: skip
    full = tmp_path / "full"
    train_onpolicy(str(tiny_model_dir), str(teacher), problems, full,
                   onpolicy_config(full, **settings))  # fmt: skip
    log = [o for _, o in read_jsonl(full / "train_log.jsonl") if "loss" in o]
    seen = [o["num_tokens"] for o in log]  # teacher tokens scored after each step
    prompts, _ = student_prompts(load_format(None), problems)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    most = step_bound(tok, None, prompts, onpolicy_config(full, **settings))
    assert max(b - a for a, b in zip([0, *seen], seen)) <= most  # the bound holds

    budget = int(seen[1]) + most  # one more step fits after step 2, not after step 3
    cut = tmp_path / "cut"
    res = train_onpolicy(str(tiny_model_dir), str(teacher), problems, cut,
                         onpolicy_config(cut, **settings), teacher_budget=budget)  # fmt: skip
    assert res.steps == 3 and res.tokens_seen == seen[2] <= budget
    capped = [o for _, o in read_jsonl(cut / "train_log.jsonl") if "loss" in o]
    assert [(o["step"], o["loss"]) for o in capped] == [(o["step"], o["loss"]) for o in log[:3]]

    none = tmp_path / "none"
    with pytest.raises(BudgetTooSmall, match="cannot pay for one step"):
        train_onpolicy(str(tiny_model_dir), str(teacher), problems, none,
                       onpolicy_config(none, **settings), teacher_budget=most - 1)  # fmt: skip
    assert not list(none.glob("checkpoints/checkpoint-*"))  # refused before any step
