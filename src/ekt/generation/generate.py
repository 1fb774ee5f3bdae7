"""Stage: sample programs from a model into append-only, resumable JSONL shards.

Layout of ``out_dir``::

    generate.json            settings of the job (refuses to resume with other settings)
    samples/shard-00000.jsonl  one Completion per line, problems [0, S) of the job
    samples/shard-00000.done   completeness marker, written once the shard is whole

A rerun skips complete shards and samples a partial shard again, writing only
the sample indices that are missing. Samplers seed every sample from (seed,
problem id, sample index) and batch a shard's problems the same way every time,
so a resumed run writes the same records as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ekt.data.extract import extract
from ekt.data.prompt_format import DEFAULT_FORMAT, Prompt, PromptFormat, load_format
from ekt.errors import EktError
from ekt.generation.sampling import Sampler, SamplingParams
from ekt.records import (
    Completion,
    JsonlWriter,
    Problem,
    from_dict,
    read_jsonl,
    write_json_atomic,
)


class ShardCluster(Protocol):
    """Where shards are sampled off this process (``ekt.pipeline.distributed.RayCluster``)."""

    def generate_shards(
        self,
        sampler: Any,
        shards: Sequence[tuple[int, list[tuple[str, Any]]]],
        params: SamplingParams,
    ) -> Iterator[tuple[int, list[Completion]]]: ...

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


def check_settings(path: Path, settings: dict, force: bool = False) -> None:
    """Write ``settings`` to ``path``, or refuse when a previous job there used other settings."""
    if path.exists() and not force:
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if old is not None and old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise EktError(
                f"{path.parent} holds results made with other settings ({', '.join(changed)} "
                "changed); use another --out, or --force to start over"
            )
    write_json_atomic(path, settings)


def generate(
    sampler: Sampler | Callable[[], Sampler],
    problems: Sequence[Problem],
    out_dir: str | Path,
    params: SamplingParams,
    prompt: str = "teacher",
    shard_size: int = 100,
    settings: dict | None = None,
    force: bool = False,
    cluster: ShardCluster | None = None,
    prompt_format: str | PromptFormat | None = None,
    price: tuple[float, float] | None = None,
) -> GenerateSummary:
    """Sample ``params.n`` completions per problem into shards under ``out_dir``.

    ``sampler`` may be a factory, called only when there is work left, so a
    finished job never loads its model. With ``cluster`` (an
    ``ekt.pipeline.distributed.RayCluster``) the shards are sampled by model replicas on a
    Ray cluster, each built there from the factory; the files written are the same.
    ``prompt_format`` (a built-in name, a YAML path; default ``function``) lays the
    prompts out and says how replies become programs; ``price`` (USD per million prompt
    and completion tokens) puts the cost of the new samples in the summary.
    """
    make_prompt = prompt_maker(prompt, prompt_format)
    fmt = load_format(prompt_format)
    if shard_size < 1:
        raise EktError("--shard-size must be >= 1")
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    if force:
        for p in (out / "samples").iterdir():
            p.unlink()
    job = {
        "prompt": prompt,
        "sampling": asdict(params),
        "problems": len(problems),
        "first_problem": problems[0].id if problems else None,
        **(settings or {}),
    }
    if fmt.source != load_format(DEFAULT_FORMAT).source:  # older jobs (default) resume as they were
        job["prompt_format"] = fmt.label
    job["sampling"]["stop"] = list(params.stop)
    check_settings(out / "generate.json", job, force=force)

    t0 = time.time()
    tally = _Tally()
    if cluster is not None:
        _generate_ray(cluster, sampler, problems, out, params, make_prompt, shard_size, fmt, tally)
        total = len(problems) * params.n
        return tally.summary(len(problems), total, time.time() - t0, price)
    total = 0
    live: Sampler | None = None
    for shard_idx, start in enumerate(range(0, len(problems), shard_size)):
        chunk = problems[start : start + shard_size]
        path = out / "samples" / f"shard-{shard_idx:05d}.jsonl"
        done_marker = path.with_suffix(".done")
        if done_marker.exists():
            total += len(chunk) * params.n
            continue
        have = _have(path)
        # A partial shard is sampled again whole (writing only what is missing): the
        # sampler batches consecutive problems together, so the same problem list
        # gives bit-identical samples, and a resumed shard equals an uninterrupted one.
        todo = chunk if any(len(have[p.id]) < params.n for p in chunk) else []
        if todo:
            if live is None:
                live = (
                    sampler() if callable(sampler) and not hasattr(sampler, "sample") else sampler
                )
            requests = [(p.id, make_prompt(p)) for p in todo]
            _write_shard(path, have, live.sample(requests, params), fmt, tally)  # type: ignore[union-attr]
        _finish_shard(path, chunk, have, params)
        total += len(chunk) * params.n
    return tally.summary(len(problems), total, time.time() - t0, price)


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
) -> None:
    """Append the completions the shard lacks, each with its extracted program (or why not)."""
    with JsonlWriter(path) as writer:
        for c in completions:
            if c.sample_idx in have[c.problem_id]:
                continue  # written before the interruption
            got = extract(c.text, fmt.entry_point, fmt.header)
            c.program, c.extract_error = got.program, got.error
            writer.write(c)
            have[c.problem_id].add(c.sample_idx)
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


def _generate_ray(
    cluster: ShardCluster,
    sampler: Any,
    problems: Sequence[Problem],
    out: Path,
    params: SamplingParams,
    make_prompt: Callable[[Problem], Prompt],
    shard_size: int,
    fmt: PromptFormat,
    tally: _Tally,
) -> None:
    """The shards left to do, on a Ray cluster's generation replicas (``ekt.pipeline.distributed``).

    Every replica samples a shard's whole problem list, as the local path does, so
    the records are the same; the driver writes each shard once, when it arrives.
    """
    chunks: dict[int, tuple[Path, Sequence[Problem], dict[str, set[int]]]] = {}
    jobs = []
    for shard_idx, start in enumerate(range(0, len(problems), shard_size)):
        chunk = problems[start : start + shard_size]
        path = out / "samples" / f"shard-{shard_idx:05d}.jsonl"
        if path.with_suffix(".done").exists():
            continue
        have = _have(path)
        chunks[shard_idx] = (path, chunk, have)
        if any(len(have[p.id]) < params.n for p in chunk):
            jobs.append((shard_idx, [(p.id, make_prompt(p)) for p in chunk]))
        else:
            _finish_shard(path, chunk, have, params)
    for shard_idx, completions in cluster.generate_shards(sampler, jobs, params):
        path, chunk, have = chunks[shard_idx]
        _write_shard(path, have, completions, fmt, tally)
        _finish_shard(path, chunk, have, params)


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
