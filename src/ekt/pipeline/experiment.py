"""``run_experiment``: a config with one teacher and one student is a ``Runner``; one with
``teachers:``/``students:`` lists is a matrix (``ekt.pipeline.matrix``). Living here, above
both, it keeps ``run`` from importing ``matrix`` (which builds on ``run``)."""

from __future__ import annotations

import time
from pathlib import Path

from ekt.generation.backends import make_sampler
from ekt.layout import RunLayout
from ekt.locks import output_lock
from ekt.pipeline.config import RunConfig
from ekt.pipeline.matrix import run_matrix
from ekt.pipeline.run import Runner, SamplerFactory
from ekt.report.tables import matrix_markdown, results_markdown


def run_experiment(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    force: bool = False,
    sampler_factory: SamplerFactory = make_sampler,
) -> dict:
    """Run every stage of ``cfg`` in ``out_dir`` (default ``runs/<name>``); the results.

    The run folder's one-writer lock (``ekt.locks``) is held throughout: a second ``ekt
    run`` on the same folder stops at once, naming this one's pid."""
    with output_lock(RunLayout.of(cfg.name, out_dir).dir):
        return _run_experiment(cfg, out_dir, force, sampler_factory)


def _run_experiment(
    cfg: RunConfig, out_dir: str | Path | None, force: bool, sampler_factory: SamplerFactory
) -> dict:
    t0 = time.time()
    where = RunLayout.of(cfg.name, out_dir).dir
    if cfg.is_matrix:
        results = run_matrix(cfg, out_dir, force, sampler_factory)
        print()
        print(matrix_markdown(results))
        print(f"run {cfg.name}: {time.time() - t0:.0f}s; results in {where}/results.md")
        return results
    results = Runner(cfg, out_dir, force, sampler_factory).run()
    print()
    print(results_markdown(results))
    print(f"run {cfg.name}: {time.time() - t0:.0f}s; results in {where}/results.md")
    if cfg.note:
        print(cfg.note)
    return results
