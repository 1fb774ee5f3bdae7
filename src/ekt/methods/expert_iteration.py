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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ekt.data.prompt_format import load_format
from ekt.errors import EktError
from ekt.generation.budget import AdaptiveBudget, adaptive_budget
from ekt.generation.config import SamplingParams
from ekt.generation.generate import GenerateSettings, format_stops, generate, usage
from ekt.layout import ExpertIterationLayout
from ekt.methods.base import (
    EVERY_STUDENT,
    OWN_ROLLOUTS,
    Context,
    Cost,
    Fitted,
    Method,
    count_lines,
    trained_tokens,
)
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


@dataclass
class Rounds:
    """Everything the rounds use besides the questions and the folder."""

    student: str  # the base student's model spec
    task: Any
    make_sampler: Callable[[str], Callable[[], Any]]  # model spec -> sampler factory
    params: SamplingParams  # every round's sampling (n, temperature, ...)
    config: ExpertIterationConfig = field(default_factory=ExpertIterationConfig)
    train: TrainConfig | None = None
    sandbox: SandboxConfig | None = None
    device: str | None = None
    cluster: Any = None  # ekt.pipeline.distributed.RayCluster: sampling and verifying on Ray
    budget: AdaptiveBudget | None = None  # adaptive: a question stops once ``keep`` is met
    prompt_format: str | None = None  # the student's layout


@dataclass
class _State:
    """What the rounds so far have given: pairs kept, questions solved, the last student."""

    pairs: list[TrainPair] = field(default_factory=list)
    solved: set[str] = field(default_factory=set)
    previous: str | None = None


def expert_iteration(
    problems: Sequence[Problem], out_dir: str | Path, setup: Rounds
) -> ExpertIterationResult:
    """Run the rounds (see the module doc); a round with its record is done and skipped."""
    cfg = setup.config
    cfg.validate()
    layout = ExpertIterationLayout(Path(out_dir))
    layout.dir.mkdir(parents=True, exist_ok=True)
    records: list[RoundRecord] = []
    state = _State()
    for r in range(1, cfg.rounds + 1):
        rl = layout.round(r)
        if rl.record.exists():
            rec = _load_record(rl.record)
            records.append(rec)
            _keep(state, read_records(rl.new_pairs, TrainPair))
            print(f"expert iteration round {r}: done ({rec.pairs_added} pairs added); skipping")
            if rec.model is None:
                break
            state.previous = rec.model
            continue
        todo = [p for p in problems if p.id not in state.solved]
        if not todo:
            print(f"expert iteration: every question solved after round {r - 1}")
            break
        rec = _round(setup, rl, r, todo, state)
        records.append(rec)
        if not rec.pairs_added:
            print(f"expert iteration: round {r} added nothing; stopping")
            break
    write_jsonl_atomic(layout.rounds, records)
    write_jsonl_atomic(layout.train_pairs, state.pairs)
    return ExpertIterationResult(state.previous, layout.train_pairs, records)


def _keep(state: _State, new: list[TrainPair]) -> None:
    state.pairs += new
    state.solved |= {p.problem_id for p in new}


def _round(setup: Rounds, rl: Any, r: int, todo: list[Problem], state: _State) -> RoundRecord:
    """One round: prepare its pairs, fit the student on every pair so far, write its record."""
    t0 = time.time()
    model = state.previous or setup.student
    prompt = "few-shot" if r == 1 else setup.config.later_rounds_prompt
    filtered = prepare_round(setup, rl, r, model, prompt, todo)
    new = [p for p in read_records(rl.new_pairs, TrainPair) if p.problem_id not in state.solved]
    _keep(state, new)
    rec = RoundRecord(
        round=r, sampled_from=model, prompt=prompt, attempted=len(todo),
        solved=len({p.problem_id for p in new}), pairs_added=len(new),
        cumulative_pairs=len(state.pairs), trained_from=None, train_steps=0, train_loss=None,
        model=None, seconds=0.0,
    )  # fmt: skip
    if new:
        fit_round(setup, rl, r, state, rec)
    write_round(rl.record, rec, t0)
    print(
        f"expert iteration round {r}: {rec.solved}/{rec.attempted} questions solved, "
        f"{rec.pairs_added} pairs added ({rec.cumulative_pairs} in all); {filtered}"
    )
    return rec


def prepare_round(
    setup: Rounds, rl: Any, r: int, model: str, prompt: str, todo: list[Problem]
) -> str:
    """``model`` samples ``todo``; the sandbox verifies; the filter keeps the round's new
    pairs (``rl.new_pairs``). Returns the filter's line."""
    params, task, cluster = setup.params, setup.task, setup.cluster
    # the student's layout; a few-shot round shows the task's exemplars in it
    fmt = task.prompt_format(setup.prompt_format) if prompt == "few-shot" else setup.prompt_format
    print(
        f"expert iteration round {r}: {model} samples {params.n} programs "
        f"({prompt}) for {len(todo)} unsolved questions"
    )
    with contextlib.ExitStack() as stack:
        judge = None
        if setup.budget is not None:  # verification interleaved with sampling
            judge = stack.enter_context(
                RoundJudge(rl.dir, rl.executions, task, setup.sandbox, cluster=cluster,
                           prompt_format=fmt)  # fmt: skip
            )
        g = generate(
            setup.make_sampler(model),
            todo,
            rl.dir,
            format_stops(params, load_format(fmt)),
            GenerateSettings(
                prompt=PROMPTS[prompt],
                prompt_format=fmt,
                settings={"model": model, "task": task.name, "round": r},
                budget=setup.budget,
            ),
            cluster=cluster,
            judge=judge,
        )  # fmt: skip
    print(g.line())
    v = verify(rl.dir, rl.executions, task, None, setup.sandbox, cluster=cluster,
               prompt_format=fmt)  # fmt: skip
    print(v.line())
    f = filter_stage(rl.executions, rl.new_pairs, task, keep=setup.config.keep,
                     source=f"student-round-{r}")  # fmt: skip
    return f.line()


def fit_round(setup: Rounds, rl: Any, r: int, state: _State, rec: RoundRecord) -> None:
    """Fine-tune on every pair kept so far: from the base weights (``restart_from_base``)
    or from the last round's student; the result goes into ``rec`` and ``state``."""
    write_jsonl_atomic(rl.train_pairs, state.pairs)
    init = (setup.student if setup.config.restart_from_base or state.previous is None
            else state.previous)  # fmt: skip
    result = train_student(init, rl.train_pairs, rl.model, setup.train, device=setup.device,
                           prompt_format=setup.prompt_format)  # fmt: skip
    if result is None:  # cannot happen with pairs, but never claim a model
        raise EktError(f"round {r}: training produced no model")
    rec.trained_from, rec.train_steps = init, result.steps
    rec.train_loss, rec.model = result.final_loss, result.out_dir
    state.previous = result.out_dir


def write_round(path: Path, rec: RoundRecord, t0: float) -> None:
    """The round's record, written last: a round with it is done."""
    rec.seconds = round(time.time() - t0, 1)
    write_json_atomic(path, asdict(rec))


def _load_record(path: Path) -> RoundRecord:
    try:
        return RoundRecord(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as e:
        raise EktError(
            f"{path}: unreadable round record ({e}); delete it to redo the round"
        ) from None


# -- the method -----------------------------------------------------------------------------


def fit(ctx: Context, problems: Sequence[Problem], pairs: Path | None) -> Fitted:
    """The run's student learns from its own verified programs, round by round."""
    cfg = ctx.cfg
    sampling = cfg.expert_iteration.sampling(cfg.teacher_sampling)
    factory, batch = ctx.sampler_factory, sampling.batch_size
    layout = ctx.layout.expert_iteration()
    setup = Rounds(
        student=cfg.student, task=ctx.task,
        make_sampler=lambda spec: factory(spec, cfg.device, batch, cfg.eval.backend),
        params=sampling.sampling_params(), config=cfg.expert_iteration, train=cfg.train,
        sandbox=ctx.sandbox, device=cfg.device, cluster=ctx.cluster,
        budget=adaptive_budget(sampling, cfg.expert_iteration.keep),
        prompt_format=cfg.student_prompt_format,
    )  # fmt: skip
    with ctx.stage(f"expert iteration: {cfg.student} learns from its own verified programs"):
        result = expert_iteration(problems, layout.dir, setup)
    rounds = sorted(layout.dir.glob("round-*"))
    cost = Cost(
        student_tokens_generated=sum(usage(r)["completion_tokens"] for r in rounds),
        training_tokens=sum(trained_tokens(r / "model") for r in rounds),
        sandbox_executions=count_lines(*(r / "executions.jsonl" for r in rounds)),
    )
    return Fitted(result.model, result.pairs_path, cost)


METHOD = Method(
    name="expert-iteration",
    summary="the student's own verified programs, in rounds",
    consumes=(OWN_ROLLOUTS,),
    fit=fit,
    settings_key="expert_iteration",
    settings=ExpertIterationConfig,
    # teacher_sampling: the rounds' sampling defaults
    invalidated_by=(*EVERY_STUDENT, "train", "teacher_sampling", "expert_iteration"),
    pairs=lambda lay: lay.expert_iteration().train_pairs,
)
