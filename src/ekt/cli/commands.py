"""What each ``ekt`` subcommand does (``COMMANDS``): every command imports its own work (the
stages, models, data) when it runs, so building any parser (``ekt COMMAND --help``) loads no
torch, transformers, datasets, ray or trl and none of the stages' modules."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ekt.cli.options import (
    DemoOptions,
    EvaluateOptions,
    ExportOptions,
    FilterOptions,
    GenerateOptions,
    ModelsOptions,
    ReportOptions,
    RunOptions,
    TasksOptions,
    VerifyOptions,
)
from ekt.errors import EktError
from ekt.generation.backends import BackendConfig
from ekt.pipeline.distributed import RayCluster
from ekt.pipeline.flags import TaskConfig


def _cluster(ray: RayCluster | None, backend: BackendConfig | None, workers: int | None):
    """The Ray cluster the flags ask for (vLLM replicas get their GPUs), validated, or None."""
    if ray is None:
        return None
    from ekt.pipeline.distributed import import_ray

    import_ray()  # a missing Ray is a one-line error before any work
    if ray.gpus_per_replica < 0 and backend is not None and backend.name == "vllm":
        gpus = backend.tensor_parallel_size * backend.data_parallel_size
        ray = dataclasses.replace(ray, gpus_per_replica=gpus)
    if not ray.cpus_per_verifier and workers:
        ray = dataclasses.replace(ray, cpus_per_verifier=workers)
    ray.validate()
    return ray


def _limited(problems: list, limit: int | None) -> list:
    return problems[:limit] if limit else problems


# Commands whose --out is a stage's output: one process at a time writes it (ekt.locks).
_WRITERS = ("generate", "verify", "filter", "train", "evaluate")


def _one_writer(command: str, options: Any) -> contextlib.AbstractContextManager:
    from ekt.locks import output_lock

    out = getattr(options, "out", None)
    return output_lock(out) if out and command in _WRITERS else contextlib.nullcontext()


def cmd_generate(o: GenerateOptions, _: Any) -> None:
    from ekt.data.prompt_format import load_format
    from ekt.generation.backends import make_sampler
    from ekt.generation.budget import adaptive_budget
    from ekt.generation.generate import GenerateSettings, format_stops, generate
    from ekt.models import model_fingerprint
    from ekt.verification.verify import RoundJudge

    backend = o.sampling.backend
    backend.validate()
    task = o.load_task((o.sampling.prompt_format,))
    fmt = load_format(task.prompt_format(o.sampling.prompt_format))
    _check_format_and_api(fmt, backend)
    problems = _limited(task.load(o.split), o.limit)
    if backend.name == "openai":  # the weights are the server's: name them by where they live
        fingerprint = f"openai:{backend.base_url}:{backend.served_model or o.model}"
    else:
        fingerprint = model_fingerprint(o.model)
    settings = {"model": o.model, "model_fingerprint": fingerprint, "task": o.task,
                "split": o.split, "dev_size": o.dev_size,
                **_where_task(task, o.data_dir)}  # fmt: skip
    budget = adaptive_budget(o.sampling, o.keep)
    cluster = _cluster(o.ray, backend, o.sandbox.workers if budget else None)
    with contextlib.ExitStack() as stack:
        judge = None
        if budget is not None:  # each round verified before the next is drawn
            executions = Path(o.executions or Path(o.out) / "executions.jsonl")
            if o.force:  # the grades of the samples --force discards
                executions.unlink(missing_ok=True)
            judge = stack.enter_context(
                RoundJudge(o.out, executions, task, o.sandbox, cluster=cluster,
                           prompt_format=o.sampling.prompt_format)  # fmt: skip
            )
        summary = generate(
            make_sampler(o.model, o.device, o.sampling.batch_size, backend),
            problems,
            o.out,
            format_stops(o.sampling.sampling_params(), fmt),
            GenerateSettings(
                prompt=o.prompt,
                shard_size=o.shard_size,
                settings=settings,
                force=o.force,
                prompt_format=fmt,
                price=backend.price,
                budget=budget,
            ),
            cluster=cluster,
            judge=judge,
        )
    print(summary.line())
    if budget is not None:
        print(f"graded rounds: {executions} (ekt filter --executions {executions})")


def _where_task(task: Any, data_dir: str | None) -> dict[str, str | None]:
    """Where later stages find the task without --task (``ekt.data.discover``)."""
    return {"task_file": str(Path(task.spec.path).resolve()) if task.spec.path else None,
            "data_dir": str(Path(data_dir).resolve()) if data_dir else None}  # fmt: skip


def _check_format_and_api(fmt: Any, backend: BackendConfig) -> None:
    """A chat format needs the chat API; a completion format on the chat API gets a note."""
    if backend.name != "openai":
        return
    if fmt.is_chat and backend.api != "chat":
        raise EktError(
            f"--prompt-format {fmt.name} gives chat messages; the openai backend sends them "
            "only with --api chat"
        )
    if not fmt.is_chat and backend.api == "chat":
        print(
            f"note: --api chat with the completion format {fmt.name!r} sends each few-shot "
            "prompt as one user message; chat models answer better with --prompt-format chat",
            file=sys.stderr,
        )


def _task_from_records(o: Any, ids: Any, near: list[Any], what: str) -> None:
    """``--task`` (and ``--data-dir``) from the records' problem ids when not given."""
    if o.task is not None:
        return
    from ekt.data.discover import find_task

    ids = [i for i in ids if isinstance(i, str)]
    if not ids:  # no records: the stage itself says what is wrong with its input
        o.task = "gsm8k"
        return
    found = find_task(ids, near, what)
    o.task = found.task
    if o.data_dir is None and found.data_dir:
        o.data_dir = found.data_dir


def cmd_verify(o: VerifyOptions, _: Any) -> None:
    from ekt.verification.verify import iter_inputs, verify

    o.sandbox.validate()
    if next(iter_inputs(o.programs, o.prompt_format), None) is None:
        raise EktError(f"{o.programs}: no programs to verify (empty input)")
    if o.task is None:
        ids = (obj["problem_id"] for _, _, obj in iter_inputs(o.programs, o.prompt_format))
        _task_from_records(o, ids, [o.programs, o.out], f"--programs {o.programs}")
    cluster = _cluster(o.ray, None, o.sandbox.workers)
    summary = verify(o.programs, o.out, o.load_task((o.prompt_format,)), o.split, o.sandbox,
                     cluster=cluster, prompt_format=o.prompt_format)  # fmt: skip
    print(summary.line())


def cmd_filter(o: FilterOptions, _: Any) -> None:
    from ekt.records import read_jsonl
    from ekt.verification.filtering import filter_stage

    if o.task is None:
        ids = (obj.get("problem_id") for path in o.executions for _, obj in read_jsonl(path))
        _task_from_records(o, ids, list(o.executions), f"--executions {' '.join(o.executions)}")
    summary = filter_stage(o.executions, o.out, o.load_task(), keep=o.keep,
                           decontaminate=o.decontaminate or None, require_records=True)  # fmt: skip
    print(summary.line())


def cmd_train(o: Any, _: Any) -> None:
    from ekt.training.kd import Distiller
    from ekt.training.train import train_student

    try:
        if o.method == "kd":
            if not o.teacher:
                raise EktError("--method kd needs --teacher")
            o.kd.validate()
            distill = Distiller(o.teacher, o.kd, o.device)
            result = train_student(o.student, o.pairs, o.out, o.train, device=o.device,
                                   distill=distill)  # fmt: skip
        else:
            result = train_student(o.student, o.pairs, o.out, o.train, device=o.device,
                                   prompt_format=o.prompt_format)  # fmt: skip
        if result is None:
            print(f"train: no training pairs in {o.pairs}; nothing to train")
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """Under ``accelerate launch``: wait for every rank, then tear the process group down.
    Left to interpreter exit, gloo's threads can abort a rank after its work is done."""
    import sys as _sys

    if "torch" not in _sys.modules:  # nothing was trained in this process
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def _evaluated_ids(o: EvaluateOptions) -> list[str]:
    """Problem ids an evaluation can take its task from: --out's earlier samples, else the
    training pairs of the student --model names (its train_summary.json)."""
    from ekt.records import read_jsonl

    samples = sorted(Path(o.out).glob("*/samples/*.jsonl")) if o.out else []
    for path in samples:
        for _, obj in read_jsonl(path):
            return [obj.get("problem_id", "")]
    try:
        summary = json.loads((Path(o.model) / "train_summary.json").read_text())
        for _, obj in read_jsonl(summary["pairs_file"]):
            return [obj.get("problem_id", "")]
    except (OSError, ValueError, KeyError, TypeError, EktError):
        pass
    return []


def cmd_evaluate(o: EvaluateOptions, _: Any) -> None:
    from ekt.evaluation.evaluate import evaluate, score_line
    from ekt.generation.backends import make_sampler

    cfg = o.eval
    cfg.validate()
    o.sandbox.validate()
    if o.task is None:
        ids = _evaluated_ids(o)
        if ids:
            _task_from_records(o, ids, [o.out, o.model], f"the records of {o.out or o.model}")
        else:  # nothing recorded yet: the default task
            o.task = "gsm8k"
    task = o.load_task((o.prompt_format,))
    scores = evaluate(
        make_sampler(o.model, o.device, cfg.batch_size, cfg.backend),
        _limited(task.load(cfg.split), cfg.limit),
        o.out,
        cfg,
        task,
        prompt=o.prompt,
        sandbox=o.sandbox,
        settings={"model": o.model, **_where_task(task, o.data_dir)},
        prompt_format=task.prompt_format(o.prompt_format)
        if o.prompt == "teacher"
        else o.prompt_format,
        cluster=_cluster(o.ray, cfg.backend, o.sandbox.workers),
    )
    print(score_line(o.model, scores))


def cmd_run(o: RunOptions, args: Any, overrides: list[str] = ()) -> None:  # type: ignore[assignment]
    if o.json and not o.dry_run:
        raise EktError("--json prints the plan: use it with --dry-run")
    from ekt.cli.flags import suggest_flags
    from ekt.pipeline.config import RunConfig, load_config
    from ekt.pipeline.experiment import run_experiment
    from ekt.pipeline.flags import leaf_keys
    from ekt.pipeline.plan import plan_experiment, render

    cfg = load_config(args.config, list(overrides),
                      lambda message: suggest_flags(message, leaf_keys(RunConfig)))  # fmt: skip
    if o.show:
        from ekt.pipeline.config import dump_config

        print(dump_config(cfg), end="")
        return
    if cfg.ray is not None:
        cfg = dataclasses.replace(
            cfg, ray=_cluster(cfg.ray, cfg.teacher_sampling.backend, cfg.sandbox.workers)
        )
    if o.dry_run:
        plan = plan_experiment(cfg, o.out)
        print(plan.to_json() if o.json else render(plan, f"ekt run {args.config} --dry-run"))
        return
    run_experiment(cfg, o.out, force=o.force)


def demo_config_path() -> Path:
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        p = base / "configs" / "demo.yaml"
        if p.is_file():
            return p
    raise EktError("configs/demo.yaml not found; run from the ekt repository")


DEMO_BANNER = """\
ekt demo: a SMALL REAL run of explicit knowledge transfer on this machine ({path}).
  Task {task}: procedural program-aided problems at the embedded models' scale (chosen by
  scripts/calibrate_procedural.py on training questions). Teacher {teacher}, few-shot, writes
  programs for {train} training questions; the sandbox keeps those that return the answer;
  student {student} is fine-tuned on them (ekt) and, on the same budget, by live distillation
  (kd), on every teacher sample (seq-kd) and on its own verified programs (expert-iteration).
  Every model is scored on {test} held-out questions; results.md ends with the paper's claims
  (EKT vs KD, EKT vs expert iteration, best student vs teacher) checked on those records.
  The GSM8K version, where these models solve almost nothing: ekt run configs/demo_gsm8k.yaml
  Full scale: `ekt run configs/paper.yaml` on GPUs.
"""


def cmd_demo(o: DemoOptions, _: Any) -> None:
    from ekt.pipeline.config import load_config
    from ekt.pipeline.experiment import run_experiment

    path = demo_config_path()
    cfg = load_config(path)
    print(DEMO_BANNER.format(path=path, task=cfg.task, teacher=cfg.teacher, student=cfg.student,
                             train=cfg.train_limit or "all", test=cfg.eval.limit or "all"))
    run_experiment(cfg, o.out)


def cmd_report(o: ReportOptions, args: Any) -> None:
    from ekt.report.build import add_statistics, build_report
    from ekt.report.claims import run_claims
    from ekt.report.load import analyse, load_run
    from ekt.report.tables import claims_lines

    for key in ("questions", "samples", "resamples"):
        if getattr(o, key) < 1:
            raise EktError(f"--{key} must be >= 1, got {getattr(o, key)}")
    if o.update_results:
        for d in args.runs:
            add_statistics(d, reference=o.reference, resamples=o.resamples, seed=o.seed)
            print(f"report: intervals written to {d}/results.json and results.md")
    path = build_report(args.runs, o.out, reference=o.reference, resamples=o.resamples,
                        seed=o.seed, max_questions=o.questions, max_samples=o.samples)  # fmt: skip
    if len(args.runs) > 1:  # the claims of the runs side by side, from their records
        sections = [(Path(d).name, run_claims(analyse(load_run(d), o.reference, o.resamples,
                                                      o.seed, curves=False)))
                    for d in args.runs]  # fmt: skip
        print("\n".join(claims_lines(sections)).strip())
    print(f"report: {path}")


def cmd_models(o: ModelsOptions, args: Any) -> None:
    from ekt.models import PRESETS, resolve_model

    if args.spec:
        print(resolve_model(args.spec))
        return
    for name, info in PRESETS.items():
        print(f"{name}\t{info}")


def cmd_tasks(o: TasksOptions, args: Any) -> None:
    if not args.task:
        from ekt.data.tasks import task_table

        print(task_table())
        return
    print(check_task(args.task, o.data_dir, o.prompt_format))


def check_task(spec: str, data_dir: str | None, prompt_format: str) -> str:
    """`ekt tasks TASK`: every split loaded (each row's question and gold answer checked),
    then the teacher's and the student's prompt for the first training question."""
    from ekt.data.prompt_format import load_format

    task = TaskConfig(task=spec, data_dir=data_dir).load_task((prompt_format,))
    lines = [f"task {task.name}: source {task.source}; answer format {task.answer_format}"]
    first = None
    for split in task.spec.splits:
        problems = task.load_file(split)
        lines.append(f"  {split}: {len(problems)} problems (ids {problems[0].id} .. "
                     f"{problems[-1].id})" if problems else f"  {split}: no problems")  # fmt: skip
        if first is None and problems and split == "train":
            first = problems[0]
    if first is None:
        return "\n".join([*lines, "  (no training split: no prompt to show)"])
    teacher = load_format(task.prompt_format(prompt_format))
    student = load_format(prompt_format)

    def show(prompt: Any) -> str:
        if isinstance(prompt, str):
            return prompt
        return "\n".join(f"[{m['role']}]\n{m['content']}" for m in prompt)

    rule = "-" * 72
    lines += [f"teacher prompt ({teacher.label}) for {first.id}, gold answer {first.answer!r}:",
              rule, show(teacher.teacher(first)).rstrip("\n"), rule,
              f"student prompt ({student.label}) for {first.id}:", rule,
              show(student.student(first)).rstrip("\n"), rule]  # fmt: skip
    return "\n".join(lines)


def cmd_export(o: ExportOptions, args: Any) -> None:
    from ekt.pipeline.export import export, push_to_hub, student_folder

    if o.checkpoint:
        if not o.push_to_hub:
            raise EktError("--checkpoint pushes a student: give --push-to-hub REPO")
        folder = student_folder(Path(args.run_dir), o.method)
        print(f"export: pushed {folder} -> {push_to_hub(folder, o.push_to_hub, 'model')}")
        return
    if o.push_to_hub and o.format != "hf":
        raise EktError("--push-to-hub uploads a dataset: use it with --format hf")
    if not o.out and not o.push_to_hub:
        raise EktError("--out PATH is required (or --format hf with --push-to-hub REPO)")
    out = o.out or tempfile.mkdtemp(prefix="ekt-export-")
    print(export(args.run_dir, o.format, out, o.method, o.prompt_format).line())
    if o.push_to_hub:
        print(f"export: pushed {out} -> {push_to_hub(out, o.push_to_hub, 'dataset')}")


COMMANDS: dict[str, Callable[..., None]] = {
    "generate": cmd_generate,
    "verify": cmd_verify,
    "filter": cmd_filter,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "run": cmd_run,
    "demo": cmd_demo,
    "report": cmd_report,
    "models": cmd_models,
    "tasks": cmd_tasks,
    "export": cmd_export,
}
