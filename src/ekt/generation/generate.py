"""Stage: sample programs from a model into append-only, resumable JSONL shards.

Layout of ``out_dir``::

    generate.json            settings of the job (refuses to resume with other settings)
    samples/shard-00000.jsonl  one Completion per line, problems [0, S) of the job
    samples/shard-00000.done   completeness marker, written once the shard is whole

A rerun skips complete shards and samples a partial shard again, writing only
the sample indices that are missing. Samplers seed every sample from (seed,
problem id, sample index) and batch a shard's problems the same way every time,
so a resumed run writes the same records as an uninterrupted one.

With an adaptive budget (``budget=``, ``ekt.generation.budget``) a shard is sampled
in rounds: round ``k`` draws indices ``[k*r, (k+1)*r)`` for the shard's questions
still active, then ``judge`` (the caller's verification of the round's programs,
``ekt.verification.verify.RoundJudge``) says how many distinct correct programs
each has, and those ``satisfied`` leave. Every round is logged once decided::

    budget.jsonl   {"shard", "round", "start", "stop", "active", "left": {id: correct}}

A rerun replays the log to the first undecided round, draws that round again
for the same active questions (the same request list: the same samples), writing
only what is missing, and judges it (the judge skips what it verified before).
On a cluster (``ShardCluster.generate_rounds``) every shard's next round is in flight
at once on replicas kept for the whole stage; a shard's rounds stay in order, so the
files are the ones a single process writes.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ekt.data.extract import extract
from ekt.data.prompt_format import Prompt, PromptFormat, load_format
from ekt.data.provenance import changed_problems, data_sha, question_sha, stale_line
from ekt.errors import EktError
from ekt.generation.budget import AdaptiveBudget, rounds
from ekt.generation.config import SamplingParams
from ekt.generation.sampler import Sampler
from ekt.locks import output_lock
from ekt.records import (
    Completion,
    JsonlWriter,
    Problem,
    dedupe_jsonl,
    duplicates_note,
    from_dict,
    read_jsonl,
    write_json_atomic,
)

BUDGET_LOG = "budget.jsonl"

# An adaptive budget's judgement of a round: distinct correct programs per question of the
# completions given, over every sample of that question judged so far.
Judge = Callable[[list[Completion]], Mapping[str, int]]


# One round of one shard for a cluster: (requests, params with n = the round's size, start).
RoundJob = tuple[list[tuple[str, Any]], SamplingParams, int]


class ShardCluster(Protocol):
    """Where shards are sampled off this process (``ekt.pipeline.distributed.RayCluster``)."""

    def generate_shards(
        self,
        sampler: Any,
        shards: Sequence[tuple[int, list[tuple[str, Any]]]],
        params: SamplingParams,
        start: int | None = None,
    ) -> Iterator[tuple[int, list[Completion]]]: ...

    def generate_rounds(
        self,
        sampler: Any,
        jobs: Sequence[tuple[int, RoundJob]],
        then: Callable[[int, list[Completion]], RoundJob | None],
    ) -> None:
        """Draw every ``(shard, (requests, params, start))`` job; as each one's completions
        come back, ``then(shard, completions)`` gives that shard's next job (or None)."""
        ...


PROMPTS = ("teacher", "student")


def prompt_maker(prompt: str, fmt: str | PromptFormat | None = None) -> Callable[[Problem], Prompt]:
    """The teacher's (few-shot) or the student's (zero-shot) prompt of a format."""
    if prompt not in PROMPTS:
        raise EktError(f"unknown prompt {prompt!r}; choose teacher or student")
    f = load_format(fmt)
    return f.teacher if prompt == "teacher" else f.student


def format_stops(params: SamplingParams, fmt: PromptFormat) -> SamplingParams:
    """``params`` with the prompt format's stop strings, unless the user set their own."""
    if tuple(params.stop) != tuple(SamplingParams().stop):
        return params
    return replace(params, stop=tuple(fmt.stop))


@dataclass
class GenerateSummary:
    problems: int
    samples: int
    new_samples: int
    tokens: int  # completion tokens of the new samples
    seconds: float
    extract_failed: int = 0  # new samples from which no program could be extracted
    prompt_tokens: int = 0  # prompt tokens billed for the new samples (API servers)
    cost: float | None = None  # USD for the new samples, with a price table (BackendConfig)
    full_samples: int | None = None  # adaptive budget: the samples a full budget draws
    left_early: int = 0  # adaptive budget: questions that left before n samples
    gave_up: int = 0  # ... of which without a correct program (give_up_after)

    def line(self) -> str:
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        msg = (
            f"generate: {self.problems} problems, {self.samples} samples "
            f"({self.new_samples} new), {self.tokens} new tokens, "
            f"{self.seconds:.1f}s ({rate:.1f} tok/s)"
        )
        if self.prompt_tokens:
            msg += f"; {self.prompt_tokens} prompt tokens"
        if self.cost is not None:
            msg += f"; cost ${self.cost:.4f}"
        if self.full_samples is not None:
            saved = self.full_samples - self.samples
            ratio = self.full_samples / self.samples if self.samples else 0.0
            msg += (
                f"; adaptive budget: {self.left_early}/{self.problems} questions left early "
                f"({self.gave_up} gave up), {self.samples} samples drawn of a full "
                f"{self.full_samples} ({saved} saved, {ratio:.2f}x)"
            )
        if self.new_samples:
            msg += f"; {self.extract_failed} without a program"
            if 2 * self.extract_failed > self.new_samples:
                msg += (
                    " — most replies hold no program: is the prompt format right for this "
                    "model? (chat models: --prompt-format chat; see `extract_error` in the "
                    "samples)"
                )
        return msg


def cost_of(prompt_tokens: int, completion_tokens: int, price: tuple[float, float] | None):
    """USD for the tokens at ``price`` = (USD per million prompt, per million completion)."""
    if price is None:
        return None
    return prompt_tokens * price[0] / 1e6 + completion_tokens * price[1] / 1e6


def shard_paths(out_dir: str | Path) -> list[Path]:
    return sorted((Path(out_dir) / "samples").glob("shard-*.jsonl"))


# keys a newer ekt adds to generate.json: a job written before them resumes
_ADDED_KEYS = frozenset({"questions_sha256"})
# keys that say where things are, not what was sampled (a moved folder resumes)
_WHERE_KEYS = frozenset({"task_file", "data_dir"})


def check_questions(out: str | Path, problems: Sequence[Problem]) -> None:
    """Refuse samples (in ``out``'s shards) whose question has changed since they were drawn,
    naming the problems and the way out."""
    by_id = {p.id: p for p in problems}
    records = (obj for path in shard_paths(out) for _, obj in read_jsonl(path))
    changed = changed_problems(
        (r for r in records if r.get("problem_id") in by_id), by_id, answer_format=""
    )
    if changed:
        way_out = "use --force to sample them again, or another --out"
        raise EktError(stale_line(changed, f"{out} was sampled", way_out))


def check_settings(path: Path, settings: dict, force: bool = False) -> None:
    """Write ``settings`` to ``path``, or refuse when a previous job there used other settings."""
    if path.exists() and not force:
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if old is not None and not isinstance(old, dict):
            old = {}  # not settings at all: every key differs
        if isinstance(old, dict):
            old = {**{k: settings[k] for k in _ADDED_KEYS & settings.keys()}, **old}
        was = old or {}
        changed = sorted(k for k in set(was) | set(settings)
                         if k not in _WHERE_KEYS and was.get(k) != settings.get(k))  # fmt: skip
        if old is not None and changed:
            raise EktError(
                f"{path.parent} holds results made with other settings ({', '.join(changed)} "
                "changed); use another --out, or --force to start over"
            )
    write_json_atomic(path, settings)


@dataclass
class _Tally:
    """What the new samples of a job add up to."""

    new: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    extract_failed: int = 0

    def summary(self, problems: int, total: int, seconds: float, price) -> GenerateSummary:
        return GenerateSummary(
            problems, total, self.new, self.tokens, seconds, self.extract_failed,
            self.prompt_tokens, cost_of(self.prompt_tokens, self.tokens, price),
        )  # fmt: skip


@dataclass(frozen=True)
class GenerateSettings:
    """How a generate job prompts, shards, records and budgets its samples."""

    prompt: str = "teacher"  # "teacher" (few-shot) or "student" (zero-shot), see PROMPTS
    shard_size: int = 100  # problems per shard file
    settings: dict | None = None  # extra keys recorded in generate.json (model, task, ...)
    force: bool = False  # start over: earlier samples and their settings are dropped
    prompt_format: str | PromptFormat | None = None  # a built-in name or a YAML path
    price: tuple[float, float] | None = None  # USD per million prompt, completion tokens
    budget: AdaptiveBudget | None = None  # adaptive: rounds, judged (None: the full budget)


def generate(
    sampler: Sampler | Callable[[], Sampler],
    problems: Sequence[Problem],
    out_dir: str | Path,
    params: SamplingParams,
    how: GenerateSettings | None = None,
    *,
    cluster: ShardCluster | None = None,
    judge: Judge | None = None,
) -> GenerateSummary:
    """Sample ``params.n`` completions per problem into shards under ``out_dir``.

    ``how`` holds the job's settings (:class:`GenerateSettings`; default: a teacher's
    few-shot job in shards of 100).

    ``sampler`` may be a factory, called only when there is work left, so a
    finished job never loads its model. With ``cluster`` (an
    ``ekt.pipeline.distributed.RayCluster``) the shards are sampled by model replicas on a
    Ray cluster, each built there from the factory; the files written are the same.
    ``prompt_format`` (a built-in name, a YAML path; default ``function``) lays the
    prompts out and says how replies become programs; ``price`` (USD per million prompt
    and completion tokens) puts the cost of the new samples in the summary.

    ``budget`` (adaptive) samples in rounds and stops a question once ``judge`` says it
    has what the filter keeps (module docstring); ``None`` is the full budget.

    The job holds ``out_dir``'s one-writer lock (``ekt.locks``): a second job on the same
    folder stops at once. Shards that hold a sample twice (an older version's, a copied
    folder) are repaired first, keeping each sample's first record, and said so.
    """
    how = how or GenerateSettings()
    with output_lock(out_dir):
        job = _prepare(problems, Path(out_dir), params, how, judge)
        if how.budget is not None:
            assert judge is not None
            return _generate_adaptive(job, sampler, cluster, how.budget, judge)
        if cluster is not None:
            return _generate_on_cluster(job, sampler, cluster)
        return _generate_local(job, sampler)


@dataclass
class _Job:
    """A generate job, prepared: what every mode needs to sample and write its shards."""

    problems: Sequence[Problem]
    out: Path
    params: SamplingParams
    make_prompt: Callable[[Problem], Prompt]
    fmt: PromptFormat
    shard_size: int
    questions: Mapping[str, str]  # problem id -> question_sha
    price: tuple[float, float] | None
    tally: _Tally = field(default_factory=_Tally)
    t0: float = field(default_factory=time.time)  # when sampling began

    def shards(self) -> Iterator[tuple[int, Sequence[Problem], Path]]:
        """Every shard: its index, its problems and its file."""
        for shard_idx, start in enumerate(range(0, len(self.problems), self.shard_size)):
            chunk = self.problems[start : start + self.shard_size]
            yield shard_idx, chunk, self.out / "samples" / f"shard-{shard_idx:05d}.jsonl"

    def summary(self, total: int) -> GenerateSummary:
        return self.tally.summary(len(self.problems), total, time.time() - self.t0, self.price)


def _prepare(
    problems: Sequence[Problem], out: Path, params: SamplingParams, how: GenerateSettings,
    judge: Judge | None,
) -> _Job:
    """Check the settings against the folder's (refusing other ones and changed
    questions), record them in generate.json and repair duplicated samples."""
    make_prompt = prompt_maker(how.prompt, how.prompt_format)
    fmt = load_format(how.prompt_format)
    if how.shard_size < 1:
        raise EktError("--shard-size must be >= 1")
    (out / "samples").mkdir(parents=True, exist_ok=True)
    if how.force:
        for p in (out / "samples").iterdir():
            p.unlink()
    settings = _job_settings(problems, params, how, fmt, judge)
    questions = {p.id: question_sha(p.question) for p in problems}
    if not how.force:  # samples of a question that has changed since are stale: name them
        check_questions(out, problems)
    check_settings(out / "generate.json", settings, force=how.force)
    if how.force:
        (out / BUDGET_LOG).unlink(missing_ok=True)
    repair_duplicates(out)
    return _Job(problems, out, params, make_prompt, fmt, how.shard_size, questions, how.price)


def _job_settings(
    problems: Sequence[Problem], params: SamplingParams, how: GenerateSettings,
    fmt: PromptFormat, judge: Judge | None,
) -> dict:
    """What generate.json records: a rerun with other settings is refused."""
    job = {
        "prompt": how.prompt,
        "sampling": asdict(params),
        "problems": len(problems),
        "first_problem": problems[0].id if problems else None,
        **(how.settings or {}),
        "prompt_format": fmt.label,
    }
    job["sampling"]["stop"] = list(params.stop)
    if how.budget is not None and judge is None:
        raise EktError("an adaptive budget needs a judge (the verification of each round)")
    job["budget"] = how.budget.settings() if how.budget is not None else "full"
    job["questions_sha256"] = data_sha(problems, gold=False)  # what the prompts showed
    return job


def _generate_local(job: _Job, sampler: Sampler | Callable[[], Sampler]) -> GenerateSummary:
    """The full budget in this process: the shards left to do, one after another."""
    total = 0
    live: Sampler | None = None
    n = job.params.n
    for _, chunk, path in job.shards():
        if path.with_suffix(".done").exists():
            total += len(chunk) * n
            continue
        have = _have(path)
        # A partial shard is sampled again whole (writing only what is missing): the
        # sampler batches consecutive problems together, so the same problem list
        # gives bit-identical samples, and a resumed shard equals an uninterrupted one.
        todo = chunk if any(len(have[p.id]) < n for p in chunk) else []
        if todo:
            if live is None:
                live = _sampler_of(sampler)
            requests = [(p.id, job.make_prompt(p)) for p in todo]
            _write_shard(path, have, live.sample(requests, job.params), job.fmt, job.tally,
                         job.questions)  # fmt: skip
        _finish_shard(path, chunk, have, job.params)
        total += len(chunk) * n
    return job.summary(total)


def _sample_key(_: int, obj: dict) -> tuple[Any, Any]:
    return obj.get("problem_id"), obj.get("sample_idx")


def repair_duplicates(out_dir: str | Path) -> int:
    """Keep the first record of every (problem, sample) in each shard; a note on stderr
    names the lines removed. Returns how many were."""
    removed = 0
    for p in shard_paths(out_dir):
        dups = dedupe_jsonl(p, _sample_key)
        if dups:
            print(duplicates_note(p, dups), file=sys.stderr)
            removed += len(dups)
    return removed


def _have(path: Path) -> dict[str, set[int]]:
    """Sample indices per problem already in a (partial) shard file."""
    have: dict[str, set[int]] = defaultdict(set)
    if path.exists():
        for _, obj in read_jsonl(path):
            have[obj["problem_id"]].add(int(obj["sample_idx"]))
    return have


def _write_shard(
    path: Path,
    have: dict[str, set[int]],
    completions: Iterable[Completion],
    fmt: PromptFormat,
    tally: _Tally,
    questions: Mapping[str, str],
    written: dict[tuple[str, int], Completion] | None = None,
) -> None:
    """Append the completions the shard lacks, each with its extracted program (or why not)
    and the hash of its question (``questions``: id -> ``question_sha``); ``written`` (when
    given) gets each record as it is written."""
    with JsonlWriter(path) as writer:
        for c in completions:
            if c.sample_idx in have[c.problem_id]:
                continue  # written before the interruption
            got = extract(c.text, fmt.entry_point, fmt.header)
            c.program, c.extract_error = got.program, got.error
            c.question_sha = questions.get(c.problem_id, "")
            writer.write(c)
            have[c.problem_id].add(c.sample_idx)
            if written is not None:
                written[(c.problem_id, c.sample_idx)] = c
            tally.new += 1
            tally.tokens += c.n_tokens
            tally.prompt_tokens += c.prompt_tokens
            tally.extract_failed += not got.ok


def _finish_shard(
    path: Path, chunk: Sequence[Problem], have: dict[str, set[int]], params: SamplingParams
) -> None:
    missing = [p.id for p in chunk if len(have[p.id]) < params.n]
    if missing:
        raise EktError(
            f"sampler returned too few samples for {missing[0]} (and {len(missing) - 1} more)"
        )
    path.with_suffix(".done").write_text("")


def _generate_on_cluster(job: _Job, sampler: Any, cluster: ShardCluster) -> GenerateSummary:
    """The full budget on a Ray cluster's generation replicas (``ekt.pipeline.distributed``).

    Every replica samples a shard's whole problem list, as the local path does, so
    the records are the same; the driver writes each shard once, when it arrives.
    """
    chunks: dict[int, tuple[Path, Sequence[Problem], dict[str, set[int]]]] = {}
    jobs = []
    for shard_idx, chunk, path in job.shards():
        if path.with_suffix(".done").exists():
            continue
        have = _have(path)
        chunks[shard_idx] = (path, chunk, have)
        if any(len(have[p.id]) < job.params.n for p in chunk):
            jobs.append((shard_idx, [(p.id, job.make_prompt(p)) for p in chunk]))
        else:
            _finish_shard(path, chunk, have, job.params)
    for shard_idx, completions in cluster.generate_shards(sampler, jobs, job.params):
        path, chunk, have = chunks[shard_idx]
        _write_shard(path, have, completions, job.fmt, job.tally, job.questions)
        _finish_shard(path, chunk, have, job.params)
    return job.summary(len(job.problems) * job.params.n)


def _sampler_of(sampler: Any) -> Sampler:
    return sampler() if callable(sampler) and not hasattr(sampler, "sample") else sampler


def _draw(
    sampler: Sampler, requests: list[tuple[str, Any]], params: SamplingParams, start: int
) -> Iterator[Completion]:
    """Indices ``start .. start+n-1`` of every request (``Sampler.sample``'s ``start``)."""
    try:
        takes = "start" in inspect.signature(sampler.sample).parameters
    except (TypeError, ValueError):
        takes = True
    if not takes:
        raise EktError(
            f"{type(sampler).__name__} cannot draw a range of sample indices (no `start` "
            "argument), which budget: adaptive needs; use budget: full"
        )
    return sampler.sample(requests, params, start=start)  # type: ignore[call-arg]


def _read_log(path: Path) -> dict[int, list[dict]]:
    """The decided rounds of every shard, in round order."""
    log: dict[int, list[dict]] = defaultdict(list)
    if path.exists():
        for where, obj in read_jsonl(path):
            entries = log[int(obj["shard"])]
            if int(obj["round"]) != len(entries):
                raise EktError(f"{path}:{where}: round {obj['round']} out of order")
            entries.append(obj)
    return log


class _ShardRounds:
    """One shard of an adaptive job: its rounds, drawn and judged in order (module docstring).

    ``next_job()`` is the next round that needs samples, as ``(requests, params, start)``,
    judging on the way any round whose samples are all written already (a resumed shard);
    None once the shard is decided (``.done`` written). ``absorb(completions)`` writes that
    round's samples, judges it and logs the decision. The local and the cluster paths drive
    the same object, so both write the same files."""

    def __init__(self, shard_idx: int, chunk: Sequence[Problem], path: Path, entries: list[dict],
                 ctx: _AdaptiveJob):  # fmt: skip
        self.idx, self.path, self.entries, self.ctx = shard_idx, path, entries, ctx
        self.active = list(chunk)
        for e in entries:  # replay the rounds decided before an interruption
            self.active = [p for p in self.active if p.id not in e["left"]]
        # the shard's records, read once (a resumed shard's earlier ones) and added to as
        # rounds are written: each round's batch for the judge comes from here
        self.records = {
            (c.problem_id, c.sample_idx): c
            for c in (
                from_dict(Completion, obj, f"{path}:{line}") for line, obj in read_jsonl(path)
            )
        } if path.exists() else {}  # fmt: skip
        self.have: dict[str, set[int]] = defaultdict(set)
        for pid, i in self.records:
            self.have[pid].add(i)

    def _round(self) -> Any:
        return self.ctx.plan[len(self.entries)]

    def next_job(self) -> RoundJob | None:
        ctx = self.ctx
        while self.active and len(self.entries) < len(ctx.plan):
            r = self._round()
            if any(i not in self.have[p.id] for p in self.active for i in r):
                # the round's whole active list, also on a resume: the same batches and samples
                requests = [(p.id, ctx.make_prompt(p)) for p in self.active]
                return requests, replace(ctx.params, n=len(r)), r.start
            self._judge()
        if self.active:
            raise EktError(f"{self.path}: questions still active after the last round")
        self.path.with_suffix(".done").write_text("")
        return None

    def absorb(self, completions: Iterable[Completion]) -> None:
        ctx = self.ctx
        _write_shard(self.path, self.have, completions, ctx.fmt, ctx.tally, ctx.questions,
                     self.records)  # fmt: skip
        self._judge()

    def _judge(self) -> None:
        ctx, k, r = self.ctx, len(self.entries), self._round()
        lacking = [p.id for p in self.active if any(i not in self.have[p.id] for i in r)]
        if lacking:
            raise EktError(
                f"sampler returned too few samples for {lacking[0]} in round {k} "
                f"(and {len(lacking) - 1} more questions)"
            )
        counts = ctx.judge([self.records[(p.id, i)] for p in self.active for i in r])
        left = {
            p.id: int(counts.get(p.id, 0))
            for p in self.active
            if ctx.budget.satisfied(int(counts.get(p.id, 0)), r.stop, ctx.params.n)
        }
        entry = {
            "shard": self.idx, "round": k, "start": r.start, "stop": r.stop,
            "active": len(self.active), "left": left,
        }  # fmt: skip
        with JsonlWriter(ctx.out / BUDGET_LOG, fsync=True) as w:
            w.write(entry)
        self.entries.append(entry)
        self.active = [p for p in self.active if p.id not in left]


@dataclass
class _AdaptiveJob:
    out: Path
    params: SamplingParams
    make_prompt: Callable[[Problem], Prompt]
    fmt: PromptFormat
    tally: _Tally
    budget: AdaptiveBudget
    judge: Judge
    plan: list[Any]
    questions: Mapping[str, str]


def _generate_adaptive(
    job: _Job, sampler: Any, cluster: ShardCluster | None, budget: AdaptiveBudget, judge: Judge
) -> GenerateSummary:
    """The shards left to do, round by round (module docstring). Locally one shard after
    another; on a cluster every shard's next round is in flight at once, each drawn by
    whichever replica is free (the replicas live for the whole stage), and judged here."""
    log = _read_log(job.out / BUDGET_LOG)
    ctx = _AdaptiveJob(job.out, job.params, job.make_prompt, job.fmt, job.tally, budget, judge,
                       rounds(job.params.n, budget.round_size), job.questions)  # fmt: skip
    shards = [
        _ShardRounds(shard_idx, chunk, path, log[shard_idx], ctx)
        for shard_idx, chunk, path in job.shards()
        if not path.with_suffix(".done").exists()
    ]
    if cluster is not None:
        _rounds_on_cluster(shards, sampler, cluster)
    else:
        live: Sampler | None = None
        for shard in shards:
            while (round_job := shard.next_job()) is not None:
                live = live or _sampler_of(sampler)
                shard.absorb(_draw(live, *round_job))
    s = job.summary(0)
    b = budget_usage(job.out, len(job.problems), job.params.n)
    s.samples, s.full_samples = b["samples"], b["samples_full_budget"]
    s.left_early, s.gave_up = b["questions_left_early"], b["questions_gave_up"]
    return s


def _rounds_on_cluster(shards: list[_ShardRounds], sampler: Any, cluster: ShardCluster) -> None:
    """Every shard's next round in flight at once; each, when back, gives its next."""
    by_idx = {s.idx: s for s in shards}

    def then(idx: int, completions: list[Completion]) -> Any:
        by_idx[idx].absorb(completions)
        return by_idx[idx].next_job()

    first_jobs = [(s.idx, job) for s in shards if (job := s.next_job()) is not None]
    cluster.generate_rounds(sampler, first_jobs, then)


def budget_usage(out_dir: str | Path, problems: int, n: int) -> dict[str, int]:
    """An adaptive job's samples from its round log (what the files say, not one invocation):
    drawn, what a full budget draws, questions that left before ``n`` samples and those of
    them without a correct program."""
    drawn = early = gave_up = 0
    for entries in _read_log(Path(out_dir) / BUDGET_LOG).values():
        for e in entries:
            drawn += int(e["active"]) * (int(e["stop"]) - int(e["start"]))
            if int(e["stop"]) < n:
                early += len(e["left"])
                gave_up += sum(1 for c in e["left"].values() if not c)
    return {
        "samples": drawn,
        "samples_full_budget": problems * n,
        "questions_left_early": early,
        "questions_gave_up": gave_up,
    }


def usage(out_dir: str | Path, price: tuple[float, float] | None = None) -> dict[str, Any]:
    """Token usage, cost and extraction failures over every sample of a generate folder
    (not only those this invocation wrote): what results.json reports."""
    samples = tokens = prompt_tokens = failed = 0
    for p in shard_paths(out_dir):
        for _, obj in read_jsonl(p):
            samples += 1
            tokens += int(obj.get("n_tokens") or 0)
            prompt_tokens += int(obj.get("prompt_tokens") or 0)
            failed += bool(obj.get("extract_error")) or not obj.get("program", "x")
    return {
        "samples": samples,
        "completion_tokens": tokens,
        "prompt_tokens": prompt_tokens,
        "extract_failed": failed,
        "cost_usd": cost_of(prompt_tokens, tokens, price),
    }


def read_completions(out_dir: str | Path) -> list[Completion]:
    return [
        from_dict(Completion, obj, f"{p}:{i}")
        for p in shard_paths(out_dir)
        for i, obj in read_jsonl(p)
    ]
