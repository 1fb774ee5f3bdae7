"""Expert iteration: the student teaches itself from its own verified programs, in rounds.

As published: the student is prompted few-shot on the training questions and
samples programs; the sandbox keeps the correct ones (``keep: first`` correct
program per question, or ``all`` unique ones); the student is fine-tuned on
every pair kept so far; the new student samples again on the questions still
unsolved. Rounds stop when one adds no pair or after ``rounds``.

``restart_from_base: true`` (published) fine-tunes the base weights each
round; ``false`` continues from the previous round's student. Either way a
round trains on all pairs kept so far (cumulative). Later rounds keep the
few-shot prompt (``later_rounds_prompt: few-shot``, as the first round) or
prompt the fine-tuned student with the bare question it was trained on
(``zero-shot``).

Layout under ``out_dir`` (``students/expert-iteration/`` in a run)::

    round-1/samples/  round-1/executions.jsonl   round-1/new_pairs.jsonl
    round-1/train_pairs.jsonl   (cumulative)     round-1/model/  (HF checkpoint)
    round-1/round.json                           the round's record, written last
    rounds.jsonl                                 one record per round
    train_pairs.jsonl                            every pair kept, all rounds

A round with ``round.json`` is done and skipped on a rerun; an unfinished one
resumes its sampling, verification and training where they stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ekt.data.prompt_format import load_format
from ekt.errors import EktError
from ekt.generation.budget import AdaptiveBudget
from ekt.generation.generate import format_stops, generate
from ekt.generation.sampling import SamplingParams
from ekt.layout import ExpertIterationLayout
from ekt.records import Problem, TrainPair, read_records, write_json_atomic, write_jsonl_atomic
from ekt.sandbox.pool import SandboxConfig
from ekt.training.train import TrainConfig, train_student
from ekt.verification.filtering import KEEP, filter_stage
from ekt.verification.verify import RoundJudge, verify

PROMPTS = {"few-shot": "teacher", "zero-shot": "student"}


@dataclass
class ExpertIterationConfig:
    """``expert_iteration:`` block of a run config. Sampling defaults: ``teacher_sampling``."""

    rounds: int = 3
    keep: str = "first"  # first | all: correct programs kept per question
    restart_from_base: bool = True  # published; false: continue from the last round
    later_rounds_prompt: str = "few-shot"  # few-shot | zero-shot
    # Overrides of ``teacher_sampling`` for the rounds (None: the teacher's setting), applied
    # with ``dataclasses.replace`` (``sampling``): the values are checked there, once.
    n: int | None = None  # samples per question per round
    temperature: float | None = None  # sampling temperature of the rounds
    max_new_tokens: int | None = None  # tokens per sample at most
    seed: int | None = None  # seed of the rounds' samples
    batch_size: int | None = None  # sequences decoded together

    def sampling(self, base: Any) -> Any:
        """``base`` (the teacher's sampling settings) with this block's overrides."""
        keys = ("n", "temperature", "max_new_tokens", "seed", "batch_size")
        return dataclasses.replace(
            base, **{k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        )

    def validate(self) -> None:
        if self.rounds < 1:
            raise EktError(f"expert_iteration.rounds must be >= 1, got {self.rounds}")
        if self.keep not in KEEP:
            raise EktError(f"expert_iteration.keep must be first or all, got {self.keep!r}")
        if self.later_rounds_prompt not in PROMPTS:
            raise EktError(
                "expert_iteration.later_rounds_prompt must be few-shot or zero-shot, "
                f"got {self.later_rounds_prompt!r}"
            )
        if self.n is not None and self.n < 1:
            raise EktError(f"expert_iteration.n must be >= 1, got {self.n}")
        if self.temperature is not None and not self.temperature >= 0:
            raise EktError(f"expert_iteration.temperature must be >= 0, got {self.temperature}")


@dataclass
class RoundRecord:
    round: int
    sampled_from: str  # the model that sampled this round
    prompt: str  # few-shot | zero-shot
    attempted: int  # questions sampled (the still-unsolved ones)
    solved: int  # of those, questions with a kept program this round
    pairs_added: int
    cumulative_pairs: int
    trained_from: str | None  # None when the round added nothing and nothing was trained
    train_steps: int
    train_loss: float | None  # last logged training loss of the round's fine-tuning
    model: str | None  # the round's student checkpoint
    seconds: float


@dataclass
class ExpertIterationResult:
    model: str | None  # the final student (None: no round kept any pair)
    pairs_path: Path
    rounds: list[RoundRecord]


def expert_iteration(
    student: str,
    problems: Sequence[Problem],
    out_dir: str | Path,
    task: Any,
    make_sampler: Callable[[str], Callable[[], Any]],
    params: SamplingParams,
    config: ExpertIterationConfig | None = None,
    train_config: TrainConfig | None = None,
    sandbox: SandboxConfig | None = None,
    device: str | None = None,
    cluster: Any = None,
    budget: AdaptiveBudget | None = None,
    prompt_format: str | None = None,
) -> ExpertIterationResult:
    """Run the rounds (see the module doc); ``make_sampler(model)`` gives a sampler factory.

    ``params`` are the sampling settings of every round (n, temperature, ...); ``cluster``
    (``ekt.pipeline.distributed.RayCluster``) runs sampling and verification on Ray.
    ``budget`` (adaptive, from ``teacher_sampling``): each round samples its questions in
    rounds of indices, verified as they come, a question stopping once it has what
    ``keep`` takes (``ekt.generation.budget``).
    """
    cfg = config or ExpertIterationConfig()
    cfg.validate()
    layout = ExpertIterationLayout(Path(out_dir))
    layout.dir.mkdir(parents=True, exist_ok=True)
    records: list[RoundRecord] = []
    pairs: list[TrainPair] = []
    solved: set[str] = set()
    previous: str | None = None  # the last round's student
    for r in range(1, cfg.rounds + 1):
        rl = layout.round(r)
        rdir, done = rl.dir, rl.record
        if done.exists():
            rec = _load_record(done)
            records.append(rec)
            new = read_records(rl.new_pairs, TrainPair)
            pairs += new
            solved |= {p.problem_id for p in new}
            print(f"expert iteration round {r}: done ({rec.pairs_added} pairs added); skipping")
            if rec.model is None:
                break
            previous = rec.model
            continue
        t0 = time.time()
        todo = [p for p in problems if p.id not in solved]
        if not todo:
            print(f"expert iteration: every question solved after round {r - 1}")
            break
        sampler_model = previous or student
        prompt = "few-shot" if r == 1 else cfg.later_rounds_prompt
        # the student's layout; a few-shot round shows the task's exemplars in it
        fmt = task.prompt_format(prompt_format) if prompt == "few-shot" else prompt_format
        print(
            f"expert iteration round {r}: {sampler_model} samples {params.n} programs "
            f"({prompt}) for {len(todo)} unsolved questions"
        )
        with contextlib.ExitStack() as stack:
            judge = None
            if budget is not None:  # verification interleaved with sampling
                judge = stack.enter_context(
                    RoundJudge(rdir, rl.executions, task, sandbox, cluster=cluster,
                               prompt_format=fmt)  # fmt: skip
                )
            g = generate(
                make_sampler(sampler_model),
                todo,
                rdir,
                format_stops(params, load_format(fmt)),
                prompt=PROMPTS[prompt],
                prompt_format=fmt,
                settings={"model": sampler_model, "task": task.name, "round": r},
                cluster=cluster,
                budget=budget,
                judge=judge,
            )
        print(g.line())
        v = verify(rdir, rl.executions, task, None, sandbox, cluster=cluster, prompt_format=fmt)
        print(v.line())
        f = filter_stage(
            rl.executions,
            rl.new_pairs,
            task,
            keep=cfg.keep,
            source=f"student-round-{r}",
        )
        new = [
            p
            for p in read_records(rl.new_pairs, TrainPair)
            if p.problem_id not in solved
        ]
        pairs += new
        solved |= {p.problem_id for p in new}
        rec = RoundRecord(
            round=r,
            sampled_from=sampler_model,
            prompt=prompt,
            attempted=len(todo),
            solved=len({p.problem_id for p in new}),
            pairs_added=len(new),
            cumulative_pairs=len(pairs),
            trained_from=None,
            train_steps=0,
            train_loss=None,
            model=None,
            seconds=0.0,
        )
        if new:
            write_jsonl_atomic(rl.train_pairs, pairs)
            init = student if cfg.restart_from_base or previous is None else previous
            result = train_student(
                init, rl.train_pairs, rl.model, train_config, device=device,
                prompt_format=prompt_format,
            )  # fmt: skip
            if result is None:  # cannot happen with pairs, but never claim a model
                raise EktError(f"round {r}: training produced no model")
            rec.trained_from = init
            rec.train_steps = result.steps
            rec.train_loss = result.final_loss
            rec.model = result.out_dir
            previous = result.out_dir
        rec.seconds = round(time.time() - t0, 1)
        write_json_atomic(done, asdict(rec))
        records.append(rec)
        print(
            f"expert iteration round {r}: {rec.solved}/{rec.attempted} questions solved, "
            f"{rec.pairs_added} pairs added ({rec.cumulative_pairs} in all); {f.line()}"
        )
        if not new:
            print(f"expert iteration: round {r} added nothing; stopping")
            break
    write_jsonl_atomic(layout.rounds, records)
    write_jsonl_atomic(layout.train_pairs, pairs)
    return ExpertIterationResult(previous, layout.train_pairs, records)


def _load_record(path: Path) -> RoundRecord:
    try:
        return RoundRecord(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as e:
        raise EktError(
            f"{path}: unreadable round record ({e}); delete it to redo the round"
        ) from None
