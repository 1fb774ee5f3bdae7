"""Stage: measure a model on held-out questions: greedy pass@1, sampled pass@k, majority vote.

Layout of ``out_dir``::

    greedy/samples/*.jsonl   greedy/executions.jsonl      one greedy program per question
    sampled/samples/*.jsonl  sampled/executions.jsonl     n sampled programs per question
    problems.jsonl            per question: question, gold, n, c, greedy_correct, majority answer
                              and majority_correct
    scores.json               every figure plus the settings that produced it

Every figure in ``scores.json`` is recomputed from ``problems.jsonl``, which is
recomputed from the execution records, so each number traces back to files.
Generation and verification resume like their stages do: a changed gold answer is graded
again by verification, a changed question stops the stage with the problems named
(``ekt.data.provenance``); ``scores.json`` records the content hash of the problems scored.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ekt.data.grading import answer_float, grade_value, majority_vote
from ekt.data.prompt_format import load_format
from ekt.data.provenance import data_sha
from ekt.data.tasks import Task
from ekt.errors import EktError
from ekt.evaluation.config import EvalConfig  # noqa: F401 (public here too)
from ekt.evaluation.metrics import score_problems
from ekt.generation.config import SamplingParams
from ekt.generation.generate import GenerateSettings, format_stops, generate
from ekt.generation.sampler import Sampler
from ekt.layout import EvalLayout
from ekt.records import Problem, read_jsonl, write_json_atomic, write_jsonl_atomic
from ekt.sandbox.pool import SandboxConfig
from ekt.verification.verify import verify


def per_problem(
    problems: Sequence[Problem], sampled: list[dict], greedy: list[dict] | None
) -> list[dict]:
    """Pure: per-question n, c, greedy and majority outcome from execution records.

    ``c`` and ``greedy_correct`` are the verdicts verification wrote; the majority
    answer is voted and graded by ``ekt.data.grading``, the rule verification used.
    The question text is kept so that the report needs no dataset.
    """
    by_pid: dict[str, list[dict]] = defaultdict(list)
    for r in sampled:
        by_pid[r["problem_id"]].append(r)
    greedy_ok = {r["problem_id"]: bool(r["correct"]) for r in greedy or []}
    rows = []
    for p in problems:
        recs = sorted(by_pid.get(p.id, []), key=lambda r: r["sample_idx"])
        answers = [
            (r.get("value"), str(r.get("type", ""))) if r.get("status") == "ok" else None
            for r in recs
        ]
        if isinstance(p.answer, str):  # a text answer (a procedural task): vote on the value
            maj_answer, maj_correct = text_vote(recs)
        else:
            maj = majority_vote(answers, p.answer)
            maj_answer, maj_correct = (
                answer_float(maj),
                maj is not None and grade_value(*maj, p.answer),
            )
        rows.append(
            {
                "problem_id": p.id,
                "question": p.question,
                "gold": p.answer,
                "n": len(recs),
                "c": sum(bool(r["correct"]) for r in recs),
                "greedy_correct": greedy_ok.get(p.id) if greedy is not None else None,
                "majority_answer": maj_answer,
                "majority_correct": maj_correct,
            }
        )
    return rows


def text_vote(records: Sequence[dict]) -> tuple[Any, bool]:
    """Majority vote for a question whose gold answer is text: samples that returned the same
    value (and type) are one vote; the largest group wins, a tie goes to the group seen first.
    Its verdict is the one verification gave that value (the task's own grader). Pure."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        if r.get("status") == "ok" and r.get("value") is not None:
            key = json.dumps([r.get("value"), r.get("type")], sort_keys=True)
            groups.setdefault(key, []).append(r)
    if not groups:
        return None, False
    winner = max(groups.values(), key=len)  # max keeps the first of equal sizes
    return winner[0]["value"], bool(winner[0].get("correct"))


def check_complete(problems: Sequence[Problem], records: list[dict], n: int, where: Path) -> None:
    """Every problem has exactly samples 0..n-1, once each, before anything is scored."""
    seen: dict[str, set[int]] = defaultdict(set)
    wanted = {p.id for p in problems}
    for r in records:
        pid, idx = r.get("problem_id"), r.get("sample_idx")
        if pid not in wanted:
            continue
        if idx in seen[pid]:
            raise EktError(
                f"{where}: {pid} sample {idx} is recorded twice (corrupt file: delete it and "
                "rerun to verify again)"
            )
        seen[pid].add(idx)
    for p in problems:
        if seen[p.id] != set(range(n)):
            have = len(seen[p.id])
            raise EktError(
                f"{where}: {p.id} has {have} of its {n} samples verified; rerun to complete it"
            )


def evaluate(
    sampler: Sampler | Callable[[], Sampler],
    problems: Sequence[Problem],
    out_dir: str | Path,
    config: EvalConfig,
    task: Task,
    prompt: str = "student",
    sandbox: SandboxConfig | None = None,
    settings: dict | None = None,
    progress: bool = True,
    prompt_format: str | None = None,
    cluster: Any = None,
) -> dict:
    """Score the model of ``sampler`` on ``problems`` into ``out_dir`` (see the module doc);
    ``cluster`` (``ekt.pipeline.distributed.RayCluster``) samples and verifies on Ray.

    ``prompt_format`` (default ``function``) lays out the prompts, gives the stop strings
    and says how replies become programs (``ekt.data.prompt_format``).
    """
    fmt = load_format(prompt_format)
    sp = format_stops(config.sampling_params(), fmt)  # the format's stops, unless set by hand
    stop = sp.stop
    config.validate()
    out = EvalLayout(Path(out_dir))
    t0 = time.time()
    live: list[Sampler] = []

    def lazy() -> Sampler:  # load the model once, only if some generation is left to do
        if not live:
            live.append(
                sampler() if callable(sampler) and not hasattr(sampler, "sample") else sampler
            )
        return live[0]

    extra = {"task": task.name, **(settings or {})}

    def run_and_verify(out: EvalLayout, kind: str, params: SamplingParams) -> None:
        generate(
            lazy,
            problems,
            out.samples(kind),
            params,
            GenerateSettings(prompt=prompt, settings=extra, prompt_format=fmt),
            cluster=cluster,
        )  # fmt: skip
        verify(
            out.samples(kind), out.executions(kind), task, None, sandbox, progress,
            cluster=cluster, prompt_format=fmt,
        )  # fmt: skip

    greedy_recs = None
    if config.greedy:
        gp = SamplingParams(
            n=1, temperature=0.0, max_new_tokens=config.max_new_tokens, stop=stop, seed=0
        )
        run_and_verify(out, "greedy", gp)
        greedy_recs = [o for _, o in read_jsonl(out.executions("greedy"))]
    run_and_verify(out, "sampled", sp)
    sampled_recs = [o for _, o in read_jsonl(out.executions("sampled"))]

    if greedy_recs is not None:
        check_complete(problems, greedy_recs, 1, out.executions("greedy"))
    check_complete(problems, sampled_recs, config.n, out.executions("sampled"))
    rows = per_problem(problems, sampled_recs, greedy_recs)
    write_jsonl_atomic(out.problems, rows)
    scores = score_problems(rows, config.k)
    # sampled replies from which no program could be extracted (not wrong answers)
    scores["no_program"] = sum(r.get("status") == "no_program" for r in sampled_recs)
    eval_settings = {**asdict(config), "stop": list(config.stop)}  # as JSON reads it back
    scores["settings"] = {"eval": eval_settings, "prompt": prompt, **extra,
                          "data_sha256": data_sha(problems)}  # what was graded against  # fmt: skip
    scores["seconds"] = round(time.time() - t0, 1)
    write_json_atomic(out.scores, scores)
    return scores


def score_line(label: str, scores: dict) -> str:
    """The one-line summary ``ekt evaluate`` and ``ekt run`` print for an evaluated model."""
    figures = ", ".join(
        f"{k} {v:.1%}" for k, v in scores.items() if isinstance(v, float) and "@" in k
    )
    line = f"evaluate {label}: {scores['problems']} questions, {figures}; {scores['seconds']}s"
    missing = scores.get("no_program", 0)
    total = scores["problems"] * (scores.get("settings", {}).get("eval", {}).get("n") or 0)
    if missing:
        line += f"; {missing} sampled replies without a program"
        if total and 2 * missing > total:
            line += " — most: is the prompt format right for this model?"
    return line
