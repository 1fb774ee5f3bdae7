"""The ``ekt`` command: one subcommand per stage, plus ``run`` and ``demo`` for whole experiments.

Errors a user can fix (bad input, bad options) print one line and exit 2; add
``--debug`` for the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from ekt.errors import EktError, user_message
from ekt.generation.backends import add_backend_args


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (subcommand parsers inherit this)."""

    commands: dict[str, argparse.ArgumentParser]  # the subcommand parsers, on the top one

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {value}")
        return value

    return parse


def _add_task_args(p: argparse.ArgumentParser, split_default: str | None = "train") -> None:
    p.add_argument("--task", default="gsm8k", help="task name (default: gsm8k)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with train.jsonl/test.jsonl (default: $EKT_DATA_DIR, else the HF dataset)",
    )
    p.add_argument("--split", default=split_default, help="train | dev | test")
    p.add_argument(
        "--dev-size",
        type=int,
        default=0,
        help="training questions held out as the dev split (published: 500; default 0)",
    )
    p.add_argument("--dev-seed", type=int, default=0, help="seed choosing the dev questions")


def _add_sampling_args(p: argparse.ArgumentParser, n: int, temperature: float) -> None:
    p.add_argument("--n", type=_positive_int("--n"), default=n, help="samples per question")
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=_positive_int("--max-new-tokens"), default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=16)
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if present)")


def _add_sandbox_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers", type=_positive_int("--workers"), default=None, help="default: one per core"
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per program (wall clock)")
    p.add_argument("--memory-mb", type=_positive_int("--memory-mb"), default=1024)
    p.add_argument(
        "--isolation",
        choices=["strict", "standard", "none"],
        default="standard",
        help="strict refuses to run without a syscall filter; none is for benchmarking only",
    )


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]``: shards on a Ray cluster (ekt.pipeline.distributed), resumable."""
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run generation and verification on a Ray cluster (pip install 'ekt[ray]'); "
        "no ADDRESS: $RAY_ADDRESS, a cluster running here, else a local one",
    )
    p.add_argument(
        "--ray-replicas", type=int, default=0,
        help="model replicas (0: one per GPU, or one per node without GPUs)",
    )  # fmt: skip
    p.add_argument(
        "--ray-gpus-per-replica", type=float, default=-1,
        help="GPUs per replica (-1: 1 on a GPU cluster, vLLM: tensor x data parallel size)",
    )  # fmt: skip
    p.add_argument(
        "--ray-verifiers", type=int, default=0,
        help="sandbox actors (0: one per node, with one sandbox worker per CPU)",
    )  # fmt: skip


def _ray_cluster(args: argparse.Namespace):
    """The RayCluster the --ray flags ask for, or None."""
    if getattr(args, "ray", None) is None:
        return None
    from ekt.pipeline.distributed import RayCluster, import_ray

    import_ray()  # a missing Ray is a one-line error before any work
    gpus = args.ray_gpus_per_replica
    if gpus < 0 and getattr(args, "backend_name", None) == "vllm":
        gpus = args.backend_tensor_parallel_size * args.backend_data_parallel_size
    cluster = RayCluster(
        address=args.ray or None,
        replicas=args.ray_replicas,
        gpus_per_replica=gpus,
        verifiers=args.ray_verifiers,
        cpus_per_verifier=getattr(args, "workers", None) or 0,
    )
    cluster.validate()
    return cluster


def build_parser() -> argparse.ArgumentParser:
    from ekt import __version__

    parser = _Parser(
        prog="ekt",
        description="Explicit knowledge transfer: teacher programs -> sandbox -> student.",
    )
    parser.add_argument("--version", action="version", version=f"ekt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices

    g = sub.add_parser("generate", help="sample programs for each question into resumable shards")
    g.add_argument("--model", required=True, help="HF hub id, local HF dir, .gguf file or preset")
    _add_task_args(g)
    g.add_argument("--limit", type=_positive_int("--limit"), default=None, help="first N questions")
    _add_sampling_args(g, n=4, temperature=0.6)
    g.add_argument("--prompt", choices=["teacher", "student"], default="teacher")
    g.add_argument(
        "--prompt-format",
        default="function",
        help="prompt layout: function (default), chat, tinygsm, or a YAML file "
        "(see ekt/data/formats/)",
    )
    g.add_argument("--shard-size", type=_positive_int("--shard-size"), default=100)
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--force", action="store_true", help="discard earlier samples in --out")
    add_backend_args(g)
    _add_ray_args(g)

    v = sub.add_parser("verify", help="run programs in the sandbox and grade them")
    _add_task_args(v, split_default=None)
    v.add_argument("--programs", required=True, help="JSONL file, shard folder or generate --out")
    v.add_argument("--out", required=True, help="output JSONL (appended; reruns skip done lines)")
    v.add_argument(
        "--prompt-format",
        default="function",
        help="prompt layout: function (default), chat, tinygsm, or a YAML file "
        "(see ekt/data/formats/)",
    )
    _add_sandbox_args(v)
    _add_ray_args(v)

    f = sub.add_parser(
        "filter", help="keep correct, unique, uncontaminated programs as train pairs"
    )
    _add_task_args(f, split_default=None)
    f.add_argument("--executions", required=True, nargs="+", help="`ekt verify` output file(s)")
    f.add_argument("--out", default="train_pairs.jsonl")
    f.add_argument(
        "--keep",
        choices=["first", "all"],
        default="first",
        help="first correct program per question (published) or all unique ones",
    )
    f.add_argument(
        "--decontaminate",
        default="test",
        help="drop questions that also appear in this split's file ('' to disable)",
    )

    t = sub.add_parser("train", help="fine-tune a student on train_pairs.jsonl")
    t.add_argument("--student", "--model", dest="student", required=True, help="model spec")
    t.add_argument("--pairs", required=True, help="train_pairs.jsonl from `ekt filter`")
    t.add_argument("--out", required=True, help="output folder (an HF checkpoint)")
    t.add_argument(
        "--method",
        choices=["sft", "kd"],
        default="sft",
        help="sft: fine-tune on the pairs; kd: also distil --teacher's distribution",
    )
    t.add_argument("--teacher", default=None, help="model spec of the live teacher (--method kd)")
    t.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if present)")
    t.add_argument(
        "--prompt-format",
        default="function",
        help="prompt layout: function (default), chat, tinygsm, or a YAML file "
        "(see ekt/data/formats/)",
    )
    _add_dataclass_args(t, "TrainConfig")
    _add_dataclass_args(t, "KDConfig", module="training.kd", prefix="kd")

    e = sub.add_parser(
        "evaluate", help="greedy pass@1, pass@k and majority vote on held-out questions"
    )
    e.add_argument("--model", required=True)
    _add_task_args(e, split_default="test")
    e.add_argument("--limit", type=_positive_int("--limit"), default=None)
    e.add_argument(
        "--prompt",
        choices=["teacher", "student"],
        default="student",
        help="teacher: few-shot prompt; student: bare question (default)",
    )
    e.add_argument(
        "--prompt-format",
        default="function",
        help="prompt layout: function (default), chat, tinygsm, or a YAML file "
        "(see ekt/data/formats/)",
    )
    e.add_argument("--n", type=_positive_int("--n"), default=10, help="samples per question")
    e.add_argument("--k", default="1,10", help="comma-separated k values for pass@k (each <= n)")
    e.add_argument("--temperature", type=float, default=0.6)
    e.add_argument("--top-p", type=float, default=1.0)
    e.add_argument("--max-new-tokens", type=_positive_int("--max-new-tokens"), default=256)
    e.add_argument("--seed", type=int, default=1234)
    e.add_argument("--no-greedy", action="store_true", help="skip the greedy pass@1 run")
    e.add_argument("--batch-size", type=_positive_int("--batch-size"), default=16)
    e.add_argument("--device", default=None)
    e.add_argument("--out", required=True)
    _add_sandbox_args(e)
    add_backend_args(e)
    _add_ray_args(e)

    r = sub.add_parser("run", help="a whole experiment from a YAML config")
    r.add_argument("config", help="YAML file (see configs/)")
    r.add_argument("--out", default=None, help="run folder (default: runs/<name>)")
    r.add_argument("--force", action="store_true", help="redo stages whose settings changed")
    _add_ray_args(r)

    d = sub.add_parser("demo", help="`ekt run configs/demo.yaml`: a small real run on this machine")
    d.add_argument("--out", default=None)

    rp = sub.add_parser(
        "report", help="report.html (intervals, curves, drill-down) from one or more run folders"
    )
    rp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, shown side by side")
    rp.add_argument(
        "--out",
        default=None,
        help="HTML file (default: RUN_DIR/report.html for one run, ./report.html for several)",
    )
    rp.add_argument("--reference", default="ekt", help="method paired differences are taken vs")
    rp.add_argument(
        "--questions",
        type=_positive_int("--questions"),
        default=200,
        help="questions whose programs are embedded in the drill-down",
    )
    rp.add_argument(
        "--samples",
        type=_positive_int("--samples"),
        default=4,
        help="sampled programs shown per model and question",
    )
    rp.add_argument(
        "--resamples", type=_positive_int("--resamples"), default=2000, help="bootstrap resamples"
    )
    rp.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    rp.add_argument(
        "--update-results",
        action="store_true",
        help="also rewrite each run's results.json/results.md with intervals",
    )

    sub.add_parser("tasks", help="list the built-in tasks (name, source, splits, answer format)")

    x = sub.add_parser("export", help="a run's training pairs for other trainers (TRL, datasets)")
    x.add_argument("run_dir", help="the run folder")
    x.add_argument("--format", required=True, choices=["messages", "prompt-completion", "hf"])
    x.add_argument("--out", help="the JSONL file or dataset folder to write")
    x.add_argument("--method", default="ekt", help="whose pairs: ekt, supervised, seq-kd, ...")
    x.add_argument("--push-to-hub", metavar="REPO", help="also upload the dataset to the HF hub")
    x.add_argument(
        "--checkpoint", action="store_true", help="push the method's trained student instead"
    )

    m = sub.add_parser("models", help="list embedded presets, or convert one to a cached HF folder")
    m.add_argument("spec", nargs="?", help="model spec to resolve (converts a preset/.gguf once)")

    return parser


def _add_dataclass_args(
    p: argparse.ArgumentParser, name: str, module: str = "training.train", prefix: str = ""
) -> None:
    """One flag per field of a config dataclass (``--learning-rate``...), same names as YAML.

    With ``prefix`` "kd", ``KDConfig.alpha`` is ``--kd-alpha`` (YAML ``kd: {alpha: ...}``).
    """
    import dataclasses
    import importlib

    cls = getattr(importlib.import_module(f"ekt.{module}"), name)
    for f in dataclasses.fields(cls):
        dest = f"{prefix}_{f.name}" if prefix else f.name
        flag = "--" + dest.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            p.add_argument(flag, dest=dest, default=default, action=argparse.BooleanOptionalAction)
        else:
            kind = type(default) if default is not None else str
            p.add_argument(flag, dest=dest, type=kind, default=default, help=f"default: {default}")


def _task(args: argparse.Namespace):
    from ekt.data.tasks import get_task

    formats = (args.prompt_format,) if getattr(args, "prompt_format", None) else ()
    return get_task(args.task, args.data_dir, args.dev_size, args.dev_seed, formats)


def cmd_generate(args: argparse.Namespace) -> None:
    from ekt.data.prompt_format import load_format
    from ekt.generation.backends import backend_from_args, make_sampler
    from ekt.generation.generate import generate
    from ekt.generation.sampling import SamplingParams
    from ekt.models import model_fingerprint

    fmt = load_format(args.prompt_format)
    params = SamplingParams(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        stop=fmt.stop,
    )
    problems = _task(args).load(args.split)
    if args.limit:
        problems = problems[: args.limit]

    backend = backend_from_args(args)
    _check_format_and_api(fmt, backend)
    if backend.name == "openai":  # the weights are the server's: name them by where they live
        fingerprint = f"openai:{backend.base_url}:{backend.served_model or args.model}"
    else:
        fingerprint = model_fingerprint(args.model)
    settings = {
        "model": args.model,
        "model_fingerprint": fingerprint,
        "task": args.task,
        "split": args.split,
        "dev_size": args.dev_size,
    }
    summary = generate(
        make_sampler(args.model, args.device, args.batch_size, backend),
        problems,
        args.out,
        params,
        prompt=args.prompt,
        shard_size=args.shard_size,
        settings=settings,
        force=args.force,
        prompt_format=fmt,
        price=backend.price,
    )
    print(summary.line())


def _check_format_and_api(fmt, backend) -> None:
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


def _sandbox_config(args: argparse.Namespace):
    from ekt.sandbox.pool import SandboxConfig

    return SandboxConfig(
        workers=args.workers,
        timeout=args.timeout,
        memory_mb=args.memory_mb,
        isolation=args.isolation,
    )


def cmd_verify(args: argparse.Namespace) -> None:
    from ekt.verification.verify import verify

    if args.timeout <= 0:
        raise EktError(f"--timeout must be > 0, got {args.timeout}")
    from ekt.verification.verify import iter_inputs

    if next(iter_inputs(args.programs, args.prompt_format), None) is None:
        raise EktError(f"{args.programs}: no programs to verify (empty input)")
    summary = verify(
        args.programs,
        args.out,
        _task(args),
        args.split,
        _sandbox_config(args),
        prompt_format=args.prompt_format,
    )
    print(summary.line())


def cmd_filter(args: argparse.Namespace) -> None:
    from ekt.verification.filtering import filter_stage

    summary = filter_stage(
        args.executions,
        args.out,
        _task(args),
        keep=args.keep,
        decontaminate=args.decontaminate or None,
        require_records=True,
    )
    print(summary.line())


def cmd_train(args: argparse.Namespace) -> None:
    import dataclasses

    from ekt.training.train import TrainConfig

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    try:
        _train(args, cfg)
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """Under ``accelerate launch``: wait for every rank, then tear the process group down.
    Left to interpreter exit, gloo's threads can abort a rank after its work is done."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def _train(args: argparse.Namespace, cfg) -> None:
    import dataclasses

    from ekt.training.train import train_student

    if args.method == "kd":
        from ekt.training.kd import KDConfig, train_kd

        if not args.teacher:
            raise EktError("--method kd needs --teacher")
        kd = KDConfig(
            **{f.name: getattr(args, f"kd_{f.name}") for f in dataclasses.fields(KDConfig)}
        )
        kd.validate()
        result = train_kd(
            args.student, args.teacher, args.pairs, args.out, cfg, kd, True, args.device
        )
    else:
        result = train_student(
            args.student, args.pairs, args.out, cfg, device=args.device,
            prompt_format=args.prompt_format,
        )  # fmt: skip
    if result is None:
        print(f"train: no training pairs in {args.pairs}; nothing to train")


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EktError(f"--k must be comma-separated integers, got {text!r}") from None
    return ks


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ekt.evaluation.evaluate import EvalConfig, evaluate, score_line
    from ekt.generation.backends import backend_from_args
    from ekt.pipeline.run import _sampler_factory

    cfg = EvalConfig(
        split=args.split,
        limit=args.limit,
        n=args.n,
        k=_parse_ks(args.k),
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        greedy=not args.no_greedy,
        batch_size=args.batch_size,
        backend=backend_from_args(args),
    )
    cfg.validate()
    task = _task(args)
    problems = task.load(args.split)
    if args.limit:
        problems = problems[: args.limit]
    scores = evaluate(
        _sampler_factory(args.model, args.device, args.batch_size, cfg.backend),
        problems,
        args.out,
        cfg,
        task,
        prompt=args.prompt,
        sandbox=_sandbox_config(args),
        settings={"model": args.model},
        prompt_format=args.prompt_format,
    )
    print(score_line(args.model, scores))


def cmd_run(args: argparse.Namespace) -> None:
    from ekt.pipeline.config import load_config
    from ekt.pipeline.distributed import use_cluster
    from ekt.pipeline.run import run_experiment

    cfg = load_config(args.config)
    # the config's ray: block, unless --ray on the command line chose already
    with use_cluster(cfg.ray if getattr(args, "ray", None) is None else None):
        run_experiment(cfg, args.out, force=args.force)


def demo_config_path():
    from pathlib import Path

    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        p = base / "configs" / "demo.yaml"
        if p.is_file():
            return p
    raise EktError("configs/demo.yaml not found; run from the ekt repository")


DEMO_BANNER = """\
ekt demo: a SMALL REAL run of explicit knowledge transfer on this machine ({path}).
  teacher gemma3-270m (few-shot) writes programs for a few dozen GSM8K training questions,
  the sandbox keeps those that return the gold answer, student smollm2-135m is fine-tuned
  on them (and, as the supervised upper bound, on reference programs from GSM8K's
  calculator annotations), and every model is scored by pass@k on held-out test questions.
  Models this small are weak at math: expect a teacher yield of a few percent and students
  near zero. The figures show the machinery working, not what the method reaches.
  Full scale: `ekt run configs/paper.yaml` on GPUs (GPT-J-6B teacher, 100 samples per
  question at temperature 0.6, GPT-Neo-125M/1.3B students, all 1,319 test questions;
  published: EKT pass@100 12.4% vs distillation 3.7%).
"""


def cmd_demo(args: argparse.Namespace) -> None:
    from ekt.pipeline.config import load_config
    from ekt.pipeline.run import run_experiment

    path = demo_config_path()
    print(DEMO_BANNER.format(path=path))
    run_experiment(load_config(path), args.out)


def cmd_report(args: argparse.Namespace) -> None:
    from ekt.report.build import add_statistics, build_report

    if args.update_results:
        for d in args.runs:
            add_statistics(d, reference=args.reference, resamples=args.resamples, seed=args.seed)
            print(f"report: intervals written to {d}/results.json and results.md")
    path = build_report(
        args.runs,
        args.out,
        reference=args.reference,
        resamples=args.resamples,
        seed=args.seed,
        max_questions=args.questions,
        max_samples=args.samples,
    )
    print(f"report: {path}")


def cmd_models(args: argparse.Namespace) -> None:
    from ekt.models import PRESETS, resolve_model

    if args.spec:
        print(resolve_model(args.spec))
        return
    for name, info in PRESETS.items():
        print(f"{name}\t{info}")


def cmd_export(args: argparse.Namespace) -> None:
    import tempfile
    from pathlib import Path

    from ekt.pipeline.export import export, push_to_hub, student_folder

    if args.checkpoint:
        if not args.push_to_hub:
            raise EktError("--checkpoint pushes a student: give --push-to-hub REPO")
        folder = student_folder(Path(args.run_dir), args.method)
        print(f"export: pushed {folder} -> {push_to_hub(folder, args.push_to_hub, 'model')}")
        return
    if not args.out and not (args.push_to_hub and args.format == "hf"):
        raise EktError("--out PATH is required (or --format hf with --push-to-hub REPO)")
    if args.push_to_hub and args.format != "hf":
        raise EktError("--push-to-hub uploads a dataset: use it with --format hf")
    out = args.out or tempfile.mkdtemp(prefix="ekt-export-")
    summary = export(args.run_dir, args.format, out, args.method)
    print(summary.line())
    if args.push_to_hub:
        print(f"export: pushed {out} -> {push_to_hub(out, args.push_to_hub, 'dataset')}")


def cmd_tasks(args: argparse.Namespace) -> None:
    from ekt.data.tasks import task_table

    print(task_table())


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "tasks": cmd_tasks,
    "export": cmd_export,
    "generate": cmd_generate,
    "verify": cmd_verify,
    "filter": cmd_filter,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "run": cmd_run,
    "demo": cmd_demo,
    "report": cmd_report,
    "models": cmd_models,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand, which names itself and its --help
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from ekt.pipeline.distributed import use_cluster

        with use_cluster(_ray_cluster(args)):
            COMMANDS[args.command](args)
    except Exception as e:  # EktError, or the file system refusing (full, read-only...)
        message = None if args.debug else user_message(e, getattr(args, "out", None) or ".")
        if message is None:
            raise
        print(f"ekt {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ekt {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
