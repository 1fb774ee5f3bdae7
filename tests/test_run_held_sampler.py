"""`ekt run` evaluates the teacher first and samples its training programs with the same loaded
model: one load instead of two, and the same records as a run that loads it twice."""

from __future__ import annotations

import gc
import weakref

from ekt.generation.backends import make_sampler
from ekt.pipeline.config import build_config
from ekt.pipeline.run import Runner

CONFIG = {
    "task": "basic_arithmetic",
    "train_limit": 3,
    "device": "cpu",
    "methods": ["ekt"],
    "evaluate_base_student": False,
    "teacher_sampling": {"n": 2, "max_new_tokens": 12, "temperature": 0.8, "batch_size": 3},
    "eval": {"limit": 2, "n": 2, "k": [1], "max_new_tokens": 12, "batch_size": 4},
    "sandbox": {"workers": 1, "timeout": 3},
}


class Counting:
    """``make_sampler`` that counts the models it loads and keeps a weak reference to each."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.made: list[weakref.ref] = []

    def __call__(self, spec, device, batch_size, backend):
        inner = make_sampler(spec, device, batch_size, backend)

        def make():
            self.loads.append(spec)
            sampler = inner()
            self.made.append(weakref.ref(sampler))
            return sampler

        return make


def _run(tmp_path, name: str, tiny: str, evaluate_teacher: bool) -> tuple[Runner, Counting]:
    cfg = build_config({**CONFIG, "teacher": tiny, "student": tiny, "name": name,
                        "evaluate_teacher": evaluate_teacher})  # fmt: skip
    counting = Counting()
    runner = Runner(cfg, tmp_path / name, sampler_factory=counting)
    runner.run()
    return runner, counting


def _text(path) -> list[str]:
    return sorted(p.read_text() for p in sorted(path.rglob("shard-*.jsonl")))


def test_the_teacher_is_loaded_once_for_its_evaluation_and_its_sampling(tmp_path, tiny_model_dir):
    held, counting = _run(tmp_path, "held", str(tiny_model_dir), evaluate_teacher=True)
    assert counting.loads.count(str(tiny_model_dir)) == 1  # the teacher: once, for both stages
    stages = list(held.times)
    assert stages.index(next(s for s in stages if s.startswith("evaluate teacher"))) < (
        stages.index(next(s for s in stages if s.startswith("teacher ")))
    )  # the evaluation first, so that the sampling finds the model loaded
    gc.collect()
    assert all(ref() is None for ref in counting.made)  # let go before the students train

    # the same teacher samples as a run whose teacher sampling loads its own model
    alone, counting = _run(tmp_path, "alone", str(tiny_model_dir), evaluate_teacher=False)
    assert counting.loads.count(str(tiny_model_dir)) == 1
    got, want = _text(held.dir / "teacher"), _text(alone.dir / "teacher")
    assert got and got == want
