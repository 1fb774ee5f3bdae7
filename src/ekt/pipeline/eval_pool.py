"""Several models evaluated at once on CPU, each in a process of its own (``eval.parallel``).

On a few cores torch's threads gain little on the small models ekt trains: on 2 cores one
evaluation of the demo's student at 2 threads was only 1.25x faster than at 1 thread (64
questions). Side by side at 1 thread each, a pair of the demo's 200-question evaluations took
0.73-1.0x the time of the two one after the other at 2 threads (four pairs, two runs): a
gain on some pairs, none on others. Each process evaluates one model with ``evaluate`` as the
run would in its own process, so the records are the same; its progress lines are labelled
(``ekt.progress.LABEL``) so that side-by-side reports stay readable.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor


def _evaluate(threads: int, label: str, sampler: tuple, kwargs: dict) -> dict:
    """One model's evaluation in a pool process: ``threads`` torch threads, labelled progress."""
    import torch

    from ekt.evaluation.evaluate import evaluate
    from ekt.generation.backends import make_sampler
    from ekt.progress import LABEL

    torch.set_num_threads(threads)
    os.environ[LABEL] = label
    return evaluate(make_sampler(*sampler), **kwargs)


def evaluate_side_by_side(
    jobs: Sequence[tuple[str, tuple, dict]], workers: int, threads: int
) -> Iterator[dict]:
    """The scores of each job ``(label, make_sampler arguments, evaluate keywords)``, in job
    order, ``workers`` at a time with ``threads`` torch threads each. The first failure stops
    the jobs not started yet and is raised once the running ones end."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch state
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        futures = [pool.submit(_evaluate, threads, *job) for job in jobs]
        for future in futures:
            yield future.result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def cpu_workers(requested: int, jobs: int, device: str | None, local: bool) -> int:
    """How many evaluations run at once: ``requested`` (``eval.parallel``), at most one per job,
    and 1 unless the models run locally (``local``) on the CPU."""
    if requested <= 1 or jobs <= 1 or not local:
        return 1
    if device is None:
        import torch

        if torch.cuda.is_available():
            return 1
    elif not device.startswith("cpu"):
        return 1
    return min(requested, jobs)


__all__ = ["cpu_workers", "evaluate_side_by_side"]
