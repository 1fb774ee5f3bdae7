"""The ``ekt`` commands and their one-line help: ``ekt --help`` prints it from here without
importing the CLI (``ekt.cli`` builds each command's parser from its options)."""

from __future__ import annotations

COMMAND_HELP = {
    "generate": "sample programs for each question into resumable shards",
    "verify": "run programs in the sandbox and grade them",
    "filter": "keep correct, unique, uncontaminated programs as train pairs",
    "train": "fine-tune a student on train_pairs.jsonl",
    "evaluate": "greedy pass@1, pass@k and majority vote on held-out questions",
    "run": "a whole experiment from a YAML config (any key: --a.b VALUE)",
    "demo": "`ekt run configs/demo.yaml`: a small real run on this machine",
    "report": "report.html (intervals, curves, drill-down) from run folders",
    "models": "list embedded presets, or convert one to a cached HF folder",
    "tasks": "list the built-in tasks; with TASK (a task file or name), check it and show one "
    "teacher and one student prompt (loads no model)",
    "export": "a run's training pairs for other trainers (TRL, datasets, hub)",
}


def usage() -> str:
    """The page of ``ekt --help``."""
    lines = ["usage: ekt [--version] [--debug] COMMAND [options]  (ekt COMMAND --help)", "",
             "Explicit knowledge transfer: teacher programs -> sandbox -> student.", "",
             "commands:"]  # fmt: skip
    lines += [f"  {name:<10}{text}" for name, text in COMMAND_HELP.items()]
    return "\n".join(lines) + "\n"
