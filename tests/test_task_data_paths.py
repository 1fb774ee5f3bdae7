"""What the sandbox denies programs for a task file's local data: the split files, not folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ekt.data.tasks import get_task


def _task(folder: Path, data: str) -> Path:
    for split in ("train", "test"):
        path = folder / data.replace("{split}", split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"q": f"What is 3 + 4 ({split})?", "a": 7}) + "\n")
    spec = folder / "mine.yaml"
    spec.write_text(f"name: mine\ndata: '{data}'\nquestion: q\nanswer: a\n")
    return spec


@pytest.mark.parametrize("data", ["{split}.jsonl", "data/{split}.jsonl", "data/hw_{split}.jsonl"])
def test_a_task_files_data_paths_are_its_split_files(tmp_path, data):
    """Not the folder above them (``data/{split}.jsonl`` used to deny the task file's own
    folder, where a project keeps its source and virtual environment)."""
    task = get_task(str(_task(tmp_path, data)))
    want = sorted(str((tmp_path / data.replace("{split}", s)).resolve()) for s in ("test", "train"))
    assert task.data_paths() == want

