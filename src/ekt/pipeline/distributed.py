"""Scale-out on Ray: generation replicas and sandbox verifiers as actors, shards as the unit.

``--ray [ADDRESS]`` on ``ekt generate``, ``verify``, ``evaluate`` and ``run`` turns
this on (``pip install 'ekt[ray]'``). Nothing about the run folder changes: the
driver (the ``ekt`` process) still writes every file, in the same format and in
the same order as the single-process path; Ray only moves the work.

* **Generation.** Each :class:`_Generator` actor holds one model replica (any
  backend: transformers, vLLM, an OpenAI-compatible client) built on its node from
  the sampler *factory*, so weights are loaded where they are used and never
  shipped. The driver hands out whole generate shards (``--shard-size`` problems):
  an actor samples the shard's problem list exactly as the local path would (same
  request list, so bit-identical records: every sample is seeded from (seed,
  problem id, sample index)), returns the completions, and the driver appends the
  missing ones to ``samples/shard-NNNNN.jsonl`` and writes its ``.done`` marker.
* **Verification.** Each :class:`_Verifier` actor runs its own warm
  :class:`~ekt.sandbox.pool.Sandbox` (one sandbox worker per CPU it reserved) on its
  node. Programs go out in shards of ``verify_shard_size``; executions come back,
  and the driver grades them (gold answers never leave the driver) and appends
  them to the output in input order, exactly as ``ekt verify`` does locally.
* **Faults.** An actor that dies (its process killed, its node lost, out of
  memory) is replaced and its unfinished shards are handed out again; shards
  already written are never redone, and nothing is written twice: a generate
  shard is written once, when its completions arrive, and executions are written
  in input order only. A shard whose actors die ``max_attempts`` times is an
  error. A driver that dies loses only the shards it had not written; rerunning
  the command resumes as usual.

Pass a ``RayCluster`` as ``cluster=`` to ``generate``/``verify`` (and to ``evaluate``,
``expert_iteration`` or a ``Runner``, which hand it on); ``--ray`` and a run config's
``ray:`` block do that. There is no global cluster: what is not given one runs here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ekt.errors import EktError
from ekt.generation.config import SamplingParams
from ekt.records import Completion, Execution
from ekt.sandbox.pool import Sandbox, SandboxConfig


@dataclass
class RayCluster:
    """Where and how wide: the ``--ray`` flags, and a run config's ``ray:`` block."""

    # None: RAY_ADDRESS, else a cluster already running on this machine, else start a local
    # one; "auto": a running cluster (error if none); "ray://host:10001" or "host:6379".
    address: str | None = None
    replicas: int = 0  # generation actors; 0 = one per GPU slot, or one per node without GPUs
    gpus_per_replica: float = -1  # -1 = 1 when the cluster has GPUs, else 0
    cpus_per_replica: float = 1
    verifiers: int = 0  # sandbox actors; 0 = one per node, each with that node's CPUs
    cpus_per_verifier: int = 0  # sandbox workers (and CPUs) per verifier; 0 = see verifiers
    verify_shard_size: int = 128  # programs per verification shard
    max_attempts: int = 3  # a shard whose actor died this many times is an error
    depth: int = 2  # shards queued per actor (the next waits there, no round trip)

    def validate(self) -> None:
        for key in ("replicas", "verifiers", "cpus_per_verifier"):
            if getattr(self, key) < 0:
                raise EktError(f"ray.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("verify_shard_size", "max_attempts", "depth"):
            if getattr(self, key) < 1:
                raise EktError(f"ray.{key} must be >= 1, got {getattr(self, key)}")

    def generate_shards(
        self,
        sampler: Any,
        shards: Sequence[tuple[int, list[tuple[str, str]]]],
        params: SamplingParams,
        start: int | None = None,
    ) -> Iterator[tuple[int, list[Completion]]]:
        """Shards sampled by model replicas (``ekt.generation.generate.ShardCluster``); with
        ``start``, sample indices ``start .. start+n-1`` (an adaptive budget's round)."""
        return generate_shards(self, sampler, shards, params, start)

    def generate_rounds(self, sampler: Any, jobs: Sequence[tuple[int, Any]], then: Any) -> None:
        """An adaptive budget's rounds (``ekt.generation.generate.ShardCluster``): every
        shard's next round in flight at once on replicas that live for the whole stage."""
        generate_rounds(self, sampler, jobs, then)

    def sandbox(self, config: SandboxConfig) -> RaySandbox:
        """Verifier actors (``ekt.verification.verify.SandboxCluster``)."""
        return RaySandbox(self, config)

    def connect(self) -> Any:
        """The ``ray`` module, connected to this cluster (once per process)."""
        ray = import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": self.address, "log_to_driver": False}
            if self.address is None and not os.environ.get("RAY_ADDRESS"):
                kwargs["include_dashboard"] = False
            ray.init(**kwargs)
        return ray


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EktError(
            "--ray needs Ray on this machine and every node: pip install 'ekt[ray]'"
        ) from None
    return ray


# -- the actors ----------------------------------------------------------------------------


class _Generator:
    """One model replica: built lazily from the sampler factory, on the actor's node."""

    def __init__(self, sampler: Any):
        self._factory = sampler
        self._sampler: Any = None

    def pid(self) -> int:
        return os.getpid()

    def sample(
        self, requests: list[tuple[str, str]], params: SamplingParams, start: int | None = None
    ) -> list[Completion]:
        if self._sampler is None:
            f = self._factory
            self._sampler = f() if callable(f) and not hasattr(f, "sample") else f
        if start is None:  # the full budget: the call every sampler takes
            return list(self._sampler.sample(requests, params))
        return list(self._sampler.sample(requests, params, start=start))


class _Verifier:
    """A warm sandbox pool on the actor's node; returns one Execution per program."""

    def __init__(self, config: SandboxConfig):
        self._box = Sandbox(config)

    def pid(self) -> int:
        return os.getpid()

    def run(self, programs: list[str]) -> list[Execution]:
        return list(self._box.run(programs))

    def protections(self) -> dict[str, bool]:
        return self._box.protections()


def _alive_nodes(ray: Any) -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _on_node(node_id: str | None) -> dict:
    if node_id is None:
        return {}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # soft: a replacement for an actor whose node was lost may start anywhere
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=True)}


# -- the scheduler -------------------------------------------------------------------------


@dataclass(frozen=True)
class Actors:
    """The actors ``pool_map`` runs jobs on: how one starts (``spawn(slot)``), how many
    (``count``), and how a job is sent to one (``call(actor, job)``, a Ray object ref)."""

    spawn: Callable[[int], Any]
    count: int
    call: Callable[[Any, Any], Any]


def pool_map(
    ray: Any,
    pool: Actors,
    jobs: Sequence[Any],
    *,
    max_attempts: int,
    depth: int,
    what: str,
    then: Callable[[Any, Any], Sequence[Any]] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Run ``call(actor, job)`` for every job on the actors; yield (index, result).

    ``depth`` jobs wait on each actor (the next goes without a round trip); ``what`` names
    a job in messages. Results come as they finish. An actor that dies is replaced
    (``spawn(slot)``) and the jobs it held go out again, lowest index first, each at most
    ``max_attempts`` times; an exception raised by the job's own code is re-raised here
    unchanged. ``then(job, result)``, called as each result arrives, gives follow-up jobs,
    which go out on the same actors (indices after the jobs given so far).
    """
    if not jobs:
        return
    jobs = list(jobs)
    spawn, call = pool.spawn, pool.call
    n_actors = max(1, min(pool.count, len(jobs)))
    actors = {slot: spawn(slot) for slot in range(n_actors)}
    gen = dict.fromkeys(actors, 0)  # bumped when the slot's actor is replaced
    load = dict.fromkeys(actors, 0)  # jobs in flight on the slot's current actor
    pending = list(range(len(jobs)))  # a heap: lowest index out first
    inflight: dict[Any, tuple[int, int, int]] = {}  # ref -> (slot, generation, job)
    attempts = [0] * len(jobs)
    try:
        while pending or inflight:
            for slot in actors:
                while pending and load[slot] < depth:
                    j = heapq.heappop(pending)
                    inflight[call(actors[slot], jobs[j])] = (slot, gen[slot], j)
                    load[slot] += 1
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                slot, g, j = inflight.pop(ref)
                if g == gen[slot]:
                    load[slot] -= 1
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the job's own code raised
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, Exception) else e) from None
                except ray.exceptions.RayError as e:  # the actor (or its node) is gone
                    attempts[j] += 1
                    if attempts[j] >= max_attempts:
                        raise EktError(
                            f"ray: {what} {j} failed {attempts[j]} times, its actor lost each "
                            f"time (last: {type(e).__name__}: {str(e).strip()[:300]})"
                        ) from None
                    heapq.heappush(pending, j)
                    if g == gen[slot]:  # replace the dead actor once, not per lost job
                        print(
                            f"ray: lost the actor running {what} {j} ({type(e).__name__}); "
                            "starting a new one, its unfinished shards go out again",
                            file=sys.stderr,
                        )
                        with contextlib.suppress(Exception):
                            ray.kill(actors[slot], no_restart=True)
                        gen[slot] += 1
                        load[slot] = 0
                        actors[slot] = spawn(slot)
                    continue
                if then is not None:
                    for more in then(jobs[j], result):
                        jobs.append(more)
                        attempts.append(0)
                        heapq.heappush(pending, len(jobs) - 1)
                yield j, result
    finally:
        for a in actors.values():
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)


# -- generation ----------------------------------------------------------------------------


def generate_shards(
    cluster: RayCluster,
    sampler: Any,
    shards: Sequence[tuple[int, list[tuple[str, str]]]],
    params: SamplingParams,
    start: int | None = None,
) -> Iterator[tuple[int, list[Completion]]]:
    """(shard index, completions) for every (shard index, requests), as each shard finishes;
    ``start``: sample indices ``start .. start+n-1`` of each request (``Sampler.sample``)."""
    ray = cluster.connect()
    spawn, replicas = _generation_replicas(ray, cluster, sampler)

    def call(actor: Any, shard: tuple[int, list[tuple[str, str]]]) -> Any:
        return actor.sample.remote(shard[1], params, start)

    actors = Actors(spawn, replicas, call)
    for j, completions in pool_map(
        ray, actors, shards, max_attempts=cluster.max_attempts, depth=1, what="generate shard"
    ):
        yield shards[j][0], completions


def _generation_replicas(ray: Any, cluster: RayCluster, sampler: Any) -> tuple[Any, int]:
    """(spawn(slot) -> a new model replica actor, how many replicas) for ``cluster``."""
    total = ray.cluster_resources()
    gpus = cluster.gpus_per_replica
    if gpus < 0:
        gpus = 1 if total.get("GPU", 0) >= 1 else 0
    replicas = cluster.replicas
    if replicas == 0:
        replicas = int(total.get("GPU", 0) // gpus) if gpus else len(_alive_nodes(ray))
    actor_cls = ray.remote(_Generator)

    def spawn(slot: int) -> Any:
        return actor_cls.options(num_cpus=cluster.cpus_per_replica, num_gpus=gpus).remote(sampler)

    return spawn, max(1, replicas)


def generate_rounds(
    cluster: RayCluster, sampler: Any, jobs: Sequence[tuple[int, Any]], then: Any
) -> None:
    """``(shard, (requests, params, start))`` jobs and the follow-ups ``then(shard,
    completions)`` gives, on one set of replicas (``generate_shards``'s), until none is left."""
    ray = cluster.connect()
    spawn, replicas = _generation_replicas(ray, cluster, sampler)

    def call(actor: Any, job: tuple[int, Any]) -> Any:
        requests, params, start = job[1]
        return actor.sample.remote(requests, params, start)

    def follow(job: tuple[int, Any], completions: list[Completion]) -> list[tuple[int, Any]]:
        nxt = then(job[0], completions)
        return [] if nxt is None else [(job[0], nxt)]

    actors = Actors(spawn, replicas, call)
    for _ in pool_map(
        ray, actors, jobs, max_attempts=cluster.max_attempts, depth=1, what="generate round",
        then=follow,
    ):  # fmt: skip
        pass


# -- verification --------------------------------------------------------------------------


class RaySandbox:
    """``Sandbox``'s interface (context manager, ``run``) over verifier actors on a cluster."""

    def __init__(self, cluster: RayCluster, config: SandboxConfig | None = None):
        self.cluster = cluster
        self.config = config or SandboxConfig()
        self.config.validate()

    def __enter__(self) -> RaySandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        pass  # the actors live only while ``run`` is being consumed

    def close(self) -> None:
        pass

    def _placement(self, ray: Any) -> list[tuple[str | None, int]]:
        """(node id or None, CPUs) for every verifier actor."""
        c = self.cluster
        if c.verifiers:
            cpus = c.cpus_per_verifier or self.config.workers or 1
            return [(None, cpus)] * c.verifiers
        out = []
        for node in _alive_nodes(ray):
            cpus = c.cpus_per_verifier or int(node.get("Resources", {}).get("CPU", 0))
            if cpus >= 1:
                out.append((node["NodeID"], cpus))
        if not out:
            raise EktError("ray: the cluster has no node with a CPU for the sandbox")
        return out

    def run(self, programs: Iterable[str]) -> Iterator[Execution]:
        """One Execution per program, in input order."""
        ray = self.cluster.connect()
        progs = list(programs)
        size = self.cluster.verify_shard_size
        shards = [progs[i : i + size] for i in range(0, len(progs), size)]
        places = self._placement(ray)
        actor_cls = ray.remote(_Verifier)

        def spawn(slot: int) -> Any:
            node, cpus = places[slot]
            cfg = dataclasses.replace(self.config, workers=cpus)
            return actor_cls.options(num_cpus=cpus, **_on_node(node)).remote(cfg)

        def call(actor: Any, shard: list[str]) -> Any:
            return actor.run.remote(shard)

        done: dict[int, list[Execution]] = {}
        next_out = 0
        c = self.cluster
        for j, execs in pool_map(
            ray, Actors(spawn, len(places), call), shards, max_attempts=c.max_attempts,
            depth=c.depth, what="verify shard",
        ):  # fmt: skip
            done[j] = execs
            while next_out in done:  # input order: the output file is the local path's
                yield from done.pop(next_out)
                next_out += 1


__all__ = [
    "Actors",
    "RayCluster",
    "RaySandbox",
    "generate_shards",
    "import_ray",
    "pool_map",
]
