"""Tasks: where problems come from and how a returned value is graded.

A task is a small object with ``load(split) -> list[Problem]`` and
``grade(value, problem) -> bool``. GSM8K reads the original jsonl files from a
directory (``--data-dir`` or ``EKT_DATA_DIR``) and falls back to the HF dataset
``openai/gsm8k`` through ``datasets`` when neither is given.

Problem ids are ``gsm8k/<file split>/<0-based line index>`` and never change
with the dev hold-out or with exemplar exclusion: a dev problem keeps its
``gsm8k/train/<i>`` id, so every record can be traced back to a line of the
original file.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ekt.data.grading import grade_value
from ekt.errors import EktError
from ekt.records import Execution, Problem, iter_lines

SPLITS = ("train", "dev", "test")
HF_DATASET = "openai/gsm8k"

_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)$")
_GROUPED = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d*)?$")  # 1,234,567.5
FIELDS = ("question", "answer")  # what a GSM8K line holds, no more and no less


def parse_gold(answer_text: str) -> int | float:
    """The number after the last ``####`` of a GSM8K answer.

    Thousands separators are removed; negatives and decimals are kept; integral
    values come back as ``int``. Anything else raises ValueError.
    """
    if "####" not in answer_text:
        raise ValueError("no '####' marker in the answer")
    raw = answer_text.rsplit("####", 1)[1].strip()
    text = raw.replace("$", "").strip()
    if "," in text:
        if not _GROUPED.match(text.rstrip(".")):
            raise ValueError(f"gold answer {raw!r} is not a number (misplaced ',')")
        text = text.replace(",", "")
    if text.endswith("."):
        text = text[:-1]
    if not _NUMBER.match(text):
        raise ValueError(f"gold answer {raw!r} is not a number")
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


class Task(Protocol):
    name: str

    def load(self, split: str) -> list[Problem]: ...

    def grade(self, execution: Execution, problem: Problem) -> bool: ...


@dataclass
class GSM8K:
    """GSM8K from a directory of ``train.jsonl``/``test.jsonl`` or from the HF hub.

    ``dev_size`` training questions (chosen by ``dev_seed``) are held out as the
    ``dev`` split and removed from ``train``; the published setup held out 500.
    Questions used as few-shot exemplars are removed from every split.
    """

    data_dir: str | None = None
    dev_size: int = 0
    dev_seed: int = 0
    name: str = "gsm8k"
    # prompt formats (names or YAML paths) whose exemplar questions are also excluded
    # (the default format's always are)
    exemplar_formats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.data_dir is None:
            self.data_dir = os.environ.get("EKT_DATA_DIR") or None
        if self.dev_size < 0:
            raise EktError(f"--dev-size must be >= 0, got {self.dev_size}")

    # -- loading ---------------------------------------------------------
    def load(self, split: str) -> list[Problem]:
        if split not in SPLITS:
            raise EktError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        file_split = "test" if split == "test" else "train"
        problems = self.load_file(file_split)
        if split != "test":
            dev_ids = self._dev_ids(problems)
            if split == "dev" and not dev_ids:
                raise EktError(
                    "split 'dev' is empty: set --dev-size (the published setup held out 500)"
                )
            keep = (
                (lambda p: p.id in dev_ids) if split == "dev" else (lambda p: p.id not in dev_ids)
            )
            problems = [
                Problem(p.id, p.question, p.answer, split, p.solution) for p in problems if keep(p)
            ]
        from ekt.data.prompts import is_exemplar

        return [p for p in problems if not is_exemplar(p, self.exemplar_formats)]

    def load_file(self, file_split: str) -> list[Problem]:
        """Every problem of one original file (``train`` or ``test``), no exclusions."""
        rows = self._read_rows(file_split)
        problems = []
        for where, i, row in rows:
            for key in FIELDS:
                if key not in row:
                    raise EktError(f"{where}: missing field {key!r}")
                if not isinstance(row[key], str):
                    raise EktError(f"{where}: field {key!r} must be a string")
                if not row[key].strip():
                    raise EktError(f"{where}: field {key!r} is empty")
            extra = sorted(k for k in row if k not in FIELDS)
            if extra:
                raise EktError(
                    f"{where}: unknown field(s) {', '.join(map(repr, extra))}; "
                    "a GSM8K line holds exactly 'question' and 'answer'"
                )
            try:
                gold = parse_gold(row["answer"])
            except ValueError as e:
                raise EktError(f"{where}: unparsable gold answer: {e}") from None
            problems.append(
                Problem(
                    f"{self.name}/{file_split}/{i}",
                    row["question"],
                    gold,
                    file_split,
                    row["answer"],
                )
            )
        return problems

    def by_id(self, ids: set[str] | None = None) -> dict[str, Problem]:
        """Problems of both files keyed by id (for verification of any shard)."""
        out: dict[str, Problem] = {}
        splits = {i.split("/")[1] for i in ids} if ids else {"train", "test"}
        for s in sorted(splits):
            if s not in ("train", "test"):
                continue
            out.update((p.id, p) for p in self.load_file(s))
        return out

    def _dev_ids(self, problems: list[Problem]) -> set[str]:
        if not self.dev_size:
            return set()
        if self.dev_size >= len(problems):
            raise EktError(
                f"--dev-size {self.dev_size} leaves no training questions ({len(problems)} in all)"
            )
        rng = random.Random(self.dev_seed)
        return {p.id for p in rng.sample(problems, self.dev_size)}

    def _read_rows(self, file_split: str) -> list[tuple[str, int, dict[str, Any]]]:
        if self.data_dir:
            return _read_dir(Path(self.data_dir), file_split)
        return _read_hub(file_split)

    # -- grading -----------------------------------------------------------
    def grade(self, execution: Execution, problem: Problem) -> bool:
        return execution.status == "ok" and grade_value(
            execution.value, execution.type, problem.answer
        )


def _read_dir(data_dir: Path, file_split: str) -> list[tuple[str, int, dict[str, Any]]]:
    """(``file:line``, 0-based line index, object) per non-blank line of ``<split>.jsonl``."""
    if not data_dir.is_dir():
        what = "is not a folder" if data_dir.exists() else "does not exist"
        raise EktError(f"data directory {data_dir} {what} (from --data-dir or EKT_DATA_DIR)")
    path = data_dir / f"{file_split}.jsonl"
    if not path.is_file():
        raise EktError(f"{path}: not found; a GSM8K directory holds train.jsonl and test.jsonl")
    rows = []
    for n, raw, _ in iter_lines(path):
        where = f"{path}:{n}"
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte order mark
        if not raw.strip():
            continue  # a blank line (e.g. at the end) holds no problem; ids keep line numbers
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise EktError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise EktError(f"{where}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise EktError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        rows.append((where, n - 1, obj))
    if not rows:
        raise EktError(f"{path}: file is empty (no problems)")
    return rows


def _read_hub(file_split: str) -> list[tuple[str, int, dict[str, Any]]]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise EktError("no --data-dir/EKT_DATA_DIR given and `datasets` is not installed") from None
    try:
        ds = datasets.load_dataset(HF_DATASET, "main", split=file_split)
    except Exception as e:  # network errors, missing dataset...
        raise EktError(
            f"could not load {HF_DATASET} from the hub ({type(e).__name__}); "
            "pass --data-dir DIR or set EKT_DATA_DIR to a folder with train.jsonl/test.jsonl"
        ) from None
    return [(f"{HF_DATASET}[{file_split}][{i}]", i, dict(row)) for i, row in enumerate(ds)]


def get_task(
    name: str,
    data_dir: str | None = None,
    dev_size: int = 0,
    dev_seed: int = 0,
    exemplar_formats: tuple[str, ...] = (),
) -> GSM8K:
    if name != "gsm8k":
        raise EktError(f"unknown task {name!r}; available: gsm8k")
    return GSM8K(data_dir=data_dir, dev_size=dev_size, dev_seed=dev_seed,
                 exemplar_formats=tuple(exemplar_formats))  # fmt: skip
