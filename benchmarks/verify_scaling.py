"""Verification on Ray (``ekt.pipeline.distributed.RaySandbox``) against the plain local pool.

Corpus: the one of ``benchmarks/sandbox_throughput.py`` (GSM8K reference programs from
the calculator annotations, a wrong variant of each, a raising variant of every third).

Measured on this machine, at the strictest isolation it offers, same timeout:

* ``local_pool``: ``ekt.sandbox.pool.Sandbox(workers=W)`` (W = cores), what ``ekt verify``
  uses without ``--ray``;
* ``ray_1_worker``: one verifier actor with one sandbox worker, on a local Ray cluster
  (``ray.init(num_cpus=cores)``);
* ``ray_2_workers``: two verifier actors with one sandbox worker each.

Two rates per configuration, medians over ``--repeat`` rounds:

* ``end_to_end``: programs / seconds from the call to the last result, pool (or
  actors and their sandboxes) start-up included, as a short ``ekt verify`` sees it;
* ``marginal``: the steady-state rate, start-up excluded, which is what a long run
  (the published scale: 700,000 teacher programs) sees. Each round runs the whole
  corpus and its first quarter; marginal = (N_all - N_quarter) / (T_all - T_quarter),
  so every fixed cost (start-up, the last shard's tail) cancels.

Every configuration's outcomes are checked against the local pool's (status, value, type).
The last line is machine-readable::

    ray_2_workers_per_s=<marginal rate> vs_local_pool=<ray_2 / local, marginal rates>x

Usage: ``EKT_DATA_DIR=../shared/data/gsm8k python benchmarks/verify_scaling.py``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sandbox_throughput import build_corpus, strictest  # noqa: E402


def _timed(run: Callable[[list[str]], Iterator], programs: list[str]) -> tuple[float, list]:
    """(seconds, outcomes) of one pass over ``programs``, start-up included."""
    t0 = time.perf_counter()
    out = [(ex.status, ex.value, ex.type) for ex in run(programs)]
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("EKT_DATA_DIR"))
    ap.add_argument("--n-oracle", type=int, default=1000, help="oracle programs in the corpus")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per program")
    ap.add_argument("--shard-size", type=int, default=128, help="programs per Ray shard")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    args = ap.parse_args(argv)

    import ray

    from ekt.pipeline.distributed import RayCluster, RaySandbox
    from ekt.sandbox.pool import Sandbox, SandboxConfig

    corpus = build_corpus(args.data_dir, args.n_oracle)
    programs = [r["program"] for r in corpus]
    quarter = programs[: len(programs) // 4]
    cores = os.cpu_count() or 1
    isolation = strictest()
    cfg = SandboxConfig(timeout=args.timeout, isolation=isolation)
    print(f"corpus: {len(programs)} programs; machine: {cores} cores; isolation {isolation}; "
          f"ray {ray.__version__}; shard size {args.shard_size}")

    def local(progs: list[str]) -> Iterator:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            box = Sandbox(SandboxConfig(workers=cores, timeout=args.timeout,
                                        isolation=isolation))
        with box:
            yield from box.run(progs)

    def on_ray(actors: int) -> Callable[[list[str]], Iterator]:
        cluster = RayCluster(verifiers=actors, cpus_per_verifier=1,
                             verify_shard_size=args.shard_size)
        return lambda progs: RaySandbox(cluster, cfg).run(progs)

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        configs = {
            "local_pool": local,
            "ray_1_worker": on_ray(1),
            "ray_2_workers": on_ray(2),
        }
        rates: dict[str, list[tuple[float, float]]] = {k: [] for k in configs}
        reference = None
        for r in range(args.repeat):
            for name, run in configs.items():
                t_all, out = _timed(run, programs)
                t_quarter, _ = _timed(run, quarter)
                if reference is None:
                    reference = out
                differ = sum(a != b for a, b in zip(out, reference)) + abs(
                    len(out) - len(reference)
                )
                e2e = len(programs) / t_all
                steady = (len(programs) - len(quarter)) / max(t_all - t_quarter, 1e-9)
                rates[name].append((e2e, steady))
                print(f"round {r + 1}: {name}: all {t_all:.2f}s, quarter {t_quarter:.2f}s; "
                      f"end_to_end {e2e:.0f}/s, marginal {steady:.0f}/s; "
                      f"outcomes differing from the local pool: {differ}")
    finally:
        ray.shutdown()

    med = {
        k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
        for k, v in rates.items()
    }
    for k, (e2e, steady) in med.items():
        print(f"{k}: end_to_end {e2e:.0f}/s, marginal {steady:.0f}/s (median of {args.repeat})")
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    r2, loc = med["ray_2_workers"][1], med["local_pool"][1]
    print(f"ray_2_workers_per_s={r2:.0f} vs_local_pool={r2 / loc:.2f}x")


if __name__ == "__main__":
    main()
