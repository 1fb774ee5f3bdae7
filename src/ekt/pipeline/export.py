"""``ekt export``: a run's training pairs for other trainers, and pushes to the HF hub.

Every layout is exactly what the student was trained on, in the prompt format it was trained
in (``PromptFormat.training_pair``, the function ekt's trainer builds its examples from): the
format recorded by the run (the student's ``train_summary.json``, else the run config's
``student_prompt_format``), or ``--prompt-format`` to override it.

Formats (each line of the JSONL formats is one kept question->program pair):

``prompt-completion``
    ``{"prompt": ..., "completion": ...}``: for a completion format (the default
    ``function``) the student's zero-shot prompt, ending in ``def solution():`` and a newline,
    and the function body; for a chat format TRL's conversational prompt-completion (the
    prompt messages, system message included, and the assistant turn). TRL's ``SFTTrainer``
    reads either and puts the loss on the completion.
``messages``
    ``{"messages": [...]}``: the same as one conversation. A chat format's system message and
    user turn, then its assistant turn; a completion format's prompt as the user turn and the
    function body (not the header again) as the assistant turn, so the texts joined are the
    trained text.
``hf``
    an HF ``datasets`` folder (``Dataset.save_to_disk``) with the ids, questions, programs and
    both layouts above as columns; ``datasets.load_from_disk`` reads it.

Every row also keeps ``problem_id`` and ``source`` (teacher, supervised, ...), so an exported
pair can be traced back to the run's records. Each export carries a dataset card
(``README.md`` in an ``hf`` folder, ``<out>.card.md`` beside a JSONL file): the teacher, its
sampling settings, the task and its data hashes, the pairs file's hash, the prompt format and
the counts. ``push_to_hub`` uploads the ``hf`` dataset or a student checkpoint folder with
``huggingface_hub``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ekt import __version__
from ekt.data.prompt_format import PromptFormat, load_format
from ekt.errors import EktError
from ekt.layout import RunLayout
from ekt.records import TrainPair, read_records, write_text_atomic

FORMATS = ("messages", "prompt-completion", "hf")


@dataclass
class ExportSummary:
    method: str
    format: str
    rows: int
    out: Path
    prompt_format: str = "function"
    card: Path | None = None

    def line(self) -> str:
        card = f"; dataset card {self.card}" if self.card else ""
        return (f"export: {self.rows} {self.method} pairs -> {self.out} ({self.format}, "
                f"prompt format {self.prompt_format}){card}")  # fmt: skip


def pairs_path(run_dir: Path, method: str) -> Path:
    from ekt.methods.registry import REGISTRY  # its methods import torch: only when needed

    pairs = {n: m.pairs for n, m in REGISTRY.items() if m.pairs is not None}
    if method not in pairs:
        raise EktError(f"--method must be one of {', '.join(pairs)}, got {method!r}")
    layout = RunLayout(run_dir)
    own = layout.budget(method) / "train_pairs.jsonl"  # what it trained on under a budget
    path = own if own.is_file() else pairs[method](layout)
    if not path.is_file():
        raise EktError(f"{path}: not found; has the {method} method of this run been run?")
    return path


def rows_of(pairs: list[TrainPair], prompt_format: str | PromptFormat | None = None) -> list[dict]:
    """One row per pair in every layout, as the student is trained on it in ``prompt_format``
    (the student's prompt and the reply it learns, and the same as a conversation)."""
    fmt = load_format(prompt_format)
    rows = []
    for p in pairs:
        prompt, reply = fmt.training_pair(p.question, p.program)
        header = fmt.header
        program = p.program if p.program.startswith(header) or fmt.is_chat else header + p.program
        completion: Any = [{"role": "assistant", "content": reply}] if fmt.is_chat else reply
        rows.append(
            {
                "problem_id": p.problem_id,
                "source": p.source,
                "question": p.question,
                "program": program,
                "prompt": prompt,
                "completion": completion,
                "messages": fmt.conversation(p.question, p.program),
            }
        )
    return rows


def trained_format(run_dir: Path, method: str) -> str:
    """The prompt format the method's student was trained in: its ``train_summary.json``,
    else the run config's ``student_prompt_format``, else the default."""
    folder = RunLayout(run_dir).student(method)
    rounds = sorted(folder.glob("round-*/model/train_summary.json"))  # expert iteration's
    for summary in (folder / "train_summary.json", *rounds[-1:]):
        try:
            label = json.loads(summary.read_text()).get("prompt_format")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(label, str) and label:
            return label
    config = _config(run_dir)
    label = config.get("student_prompt_format")
    return label if isinstance(label, str) and label else "function"


def _config(run_dir: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(RunLayout(run_dir).config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def dataset_card(run_dir: Path, method: str, fmt: PromptFormat, pairs_file: Path,
                 rows: list[dict], export_format: str) -> str:  # fmt: skip
    """The export's provenance as a dataset card (YAML front matter, then Markdown)."""
    config, manifest = _config(run_dir), _json(RunLayout(run_dir).manifest)
    data = manifest.get("data") or {}
    sources: dict[str, int] = {}
    for r in rows:
        sources[r["source"]] = sources.get(r["source"], 0) + 1
    facts = {
        "method": method,
        "teacher": config.get("teacher") or (manifest.get("models") or {}).get("teacher"),
        "student": config.get("student") or (manifest.get("models") or {}).get("student"),
        "teacher_sampling": config.get("teacher_sampling"),
        "keep": config.get("keep"),
        "task": config.get("task"),
        "train_split": config.get("train_split"),
        "data_source": data.get("source"),
        "data_sha256": data.get("sha256"),
        "pairs_file": str(pairs_file),
        "pairs_sha256": hashlib.sha256(pairs_file.read_bytes()).hexdigest(),
        "prompt_format": fmt.label,
        "export_format": export_format,
        "pairs": len(rows),
        "questions": len({r["problem_id"] for r in rows}),
        "sources": sources,
        "ekt": manifest.get("ekt") or __version__,
    }
    import yaml

    front = yaml.safe_dump({"ekt": facts}, sort_keys=False, allow_unicode=True)
    sampling = facts["teacher_sampling"] or {}
    how = ", ".join(f"{k} {sampling[k]}" for k in ("n", "temperature", "top_p", "max_new_tokens",
                                                    "seed") if k in sampling)  # fmt: skip
    lines = [
        "---", front.rstrip(), "---", "",
        f"# {config.get('name') or run_dir.name}: {method} training pairs", "",
        f"Question -> Python program pairs kept by ekt ({method}): programs the teacher "
        f"`{facts['teacher']}` wrote, run in ekt's sandbox and kept when they returned the "
        "gold answer.", "",
        f"- teacher: `{facts['teacher']}`; sampling: {how or 'unknown'}",
        f"- task: `{facts['task']}` ({facts['data_source']}), split {facts['train_split']}",
        f"- data sha256: {json.dumps(facts['data_sha256'])}",
        f"- pairs: {facts['pairs']} for {facts['questions']} questions "
        f"({', '.join(f'{k} {v}' for k, v in sources.items())}); keep: {facts['keep']}",
        f"- prompt format: `{fmt.label}` (the layout the student was trained in; "
        f"{'chat messages' if fmt.is_chat else 'a completion: prompt, then the function body'})",
        f"- pairs file: {pairs_file} (sha256 {facts['pairs_sha256']})",
        f"- made by ekt {facts['ekt']}",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def export(
    run_dir: str | Path,
    fmt: str,
    out: str | Path,
    method: str = "ekt",
    prompt_format: str | None = None,
) -> ExportSummary:
    """Write one method's pairs of ``run_dir`` to ``out`` in ``fmt`` (see the module docstring),
    in ``prompt_format`` (None: the one the run recorded), with its dataset card."""
    run_dir, out = Path(run_dir), Path(out)
    if fmt not in FORMATS:
        raise EktError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not run_dir.is_dir():
        raise EktError(f"run folder {run_dir} not found")
    path = pairs_path(run_dir, method)
    pairs = read_records(path, TrainPair)
    if not pairs:
        raise EktError(f"{path}: no pairs to export (the filter kept none)")
    layout = load_format(prompt_format or trained_format(run_dir, method))
    rows = rows_of(pairs, layout)
    card_text = dataset_card(run_dir, method, layout, path, rows, fmt)
    if fmt == "hf":
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(out))
        card = out / "README.md"
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
        card = out.with_name(out.name + ".card.md")
    write_text_atomic(card, card_text)
    return ExportSummary(method, fmt, len(rows), out, layout.label, card)


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
