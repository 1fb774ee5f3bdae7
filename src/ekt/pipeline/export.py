"""``ekt export``: a run's training pairs for other trainers, and pushes to the HF hub.

Formats (each line of the JSONL formats is one kept question->program pair):

``prompt-completion``
    ``{"prompt": ..., "completion": ...}``: exactly what ekt trains a student on (the
    student's zero-shot prompt, ending in ``def solution():`` and a newline, and the
    function body); TRL's ``SFTTrainer`` reads it and puts the loss on the completion.
``messages``
    ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``: the same prompt as
    the user turn and the whole program as the assistant turn (TRL's conversational format,
    rendered with the student tokenizer's chat template).
``hf``
    an HF ``datasets`` folder (``Dataset.save_to_disk``) with the ids, questions, programs and
    both layouts above as columns; ``datasets.load_from_disk`` reads it.

Every row also keeps ``problem_id`` and ``source`` (teacher, supervised, ...), so an exported
pair can be traced back to the run's records. ``push_to_hub`` uploads the ``hf`` dataset or a
student checkpoint folder with ``huggingface_hub``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ekt.data.prompts import PROGRAM_HEADER, student_prompt
from ekt.errors import EktError
from ekt.layout import RunLayout
from ekt.records import TrainPair, read_records, write_text_atomic

FORMATS = ("messages", "prompt-completion", "hf")
METHODS = ("ekt", "kd", "seq-kd", "supervised", "expert-iteration")


@dataclass
class ExportSummary:
    method: str
    format: str
    rows: int
    out: Path

    def line(self) -> str:
        return f"export: {self.rows} {self.method} pairs -> {self.out} ({self.format})"


def pairs_path(run_dir: Path, method: str) -> Path:
    if method not in METHODS:
        raise EktError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    path = RunLayout(run_dir).method_pairs(method)
    if not path.is_file():
        raise EktError(f"{path}: not found; has the {method} method of this run been run?")
    return path


def rows_of(pairs: list[TrainPair]) -> list[dict]:
    """One row per pair in every layout (the student's prompt, its completion, the messages)."""
    rows = []
    for p in pairs:
        prompt = student_prompt(p.question)
        body = p.program[len(PROGRAM_HEADER) :] if p.program.startswith(PROGRAM_HEADER) else None
        program = p.program if body is not None else PROGRAM_HEADER + p.program
        rows.append(
            {
                "problem_id": p.problem_id,
                "source": p.source,
                "question": p.question,
                "program": program,
                "prompt": prompt,
                "completion": body if body is not None else p.program,
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": program},
                ],
            }
        )
    return rows


def export(run_dir: str | Path, fmt: str, out: str | Path, method: str = "ekt") -> ExportSummary:
    """Write one method's pairs of ``run_dir`` to ``out`` in ``fmt`` (see the module docstring)."""
    run_dir, out = Path(run_dir), Path(out)
    if fmt not in FORMATS:
        raise EktError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not run_dir.is_dir():
        raise EktError(f"run folder {run_dir} not found")
    pairs = read_records(pairs_path(run_dir, method), TrainPair)
    if not pairs:
        raise EktError(f"{pairs_path(run_dir, method)}: no pairs to export (the filter kept none)")
    rows = rows_of(pairs)
    if fmt == "hf":
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(out))
    else:
        keys = ("messages",) if fmt == "messages" else ("prompt", "completion")
        lines = [
            json.dumps(
                {**{k: r[k] for k in keys}, "problem_id": r["problem_id"], "source": r["source"]},
                ensure_ascii=False,
            )
            for r in rows
        ]
        write_text_atomic(out, "\n".join(lines) + "\n")
    return ExportSummary(method, fmt, len(rows), out)


def student_folder(run_dir: Path, method: str) -> Path:
    """The trained student's HF checkpoint folder of one method (the last round's for EI)."""
    base = RunLayout(run_dir).student(method)
    if (base / "config.json").is_file():
        return base
    rounds = sorted(base.glob("round-*/model"), key=lambda p: int(p.parent.name.split("-")[1]))
    if rounds and (rounds[-1] / "config.json").is_file():
        return rounds[-1]
    raise EktError(f"{base}: no trained student checkpoint (config.json) found")


def push_to_hub(path: str | Path, repo: str, kind: str = "dataset", private: bool = True) -> str:
    """Upload a saved dataset folder (``kind="dataset"``) or a checkpoint folder (``"model"``)."""
    from huggingface_hub import HfApi

    path = Path(path)
    try:
        api = HfApi()
        api.create_repo(repo, repo_type=kind, private=private, exist_ok=True)
        if kind == "dataset":
            import datasets

            datasets.load_from_disk(str(path)).push_to_hub(repo, private=private)
        else:
            api.upload_folder(folder_path=str(path), repo_id=repo, repo_type=kind)
    except Exception as e:  # offline, no token, no permission, network errors
        raise EktError(
            f"could not push {path} to the hub as {kind} {repo!r} ({type(e).__name__}: {e}); "
            "log in with `huggingface-cli login` or set HF_TOKEN, and unset HF_HUB_OFFLINE"
        ) from None
    return f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo}"
