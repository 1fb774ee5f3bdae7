"""Which task records belong to, when ``--task`` is not given: from their problem ids.

Problem ids are ``<task>/<split>/<id>``, so records name their task. A built-in task is
found by that name. A task file is found from what the stages that made the records wrote
beside them: ``generate.json`` (``task_file``, ``data_dir``, written by ``ekt generate``)
and a run folder's ``config.yaml`` (``task``, ``data_dir``), looked for in the records'
folder, its subfolders and the folders above it. A task neither finds is one line naming
the ``--task`` to pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ekt.errors import EktError

SIDE_FILES = ("generate.json", "config.yaml")


@dataclass(frozen=True)
class FoundTask:
    task: str  # a registry name or a task file's path
    data_dir: str | None = None
    where: str = ""  # the file that named it ("" for a built-in name)


def task_name(ids: Iterable[str], what: str) -> str:
    """The one task name ``ids`` share; EktError when they name none or several."""
    names = sorted({str(i).split("/", 1)[0] for i in ids if "/" in str(i)})
    if not names:
        raise EktError(f"{what}: no problem ids of the form <task>/<split>/<id>; pass --task")
    if len(names) > 1:
        raise EktError(f"{what}: records of several tasks ({', '.join(names)}); pass --task")
    return names[0]


def _side_files(paths: Iterable[str | Path]) -> list[Path]:
    """``generate.json`` / ``config.yaml`` near the given files or folders, nearest first."""
    seen: dict[Path, None] = {}
    for p in paths:
        p = Path(p).resolve()
        start = p if p.is_dir() else p.parent
        folders = [start, *start.parents][:4]
        for folder in folders:
            for name in SIDE_FILES:
                seen.setdefault(folder / name)
            if folder == start and folder.is_dir():  # a generate output beside the file
                for sub in sorted(folder.iterdir())[:200]:
                    if sub.is_dir():
                        seen.setdefault(sub / "generate.json")
    return [f for f in seen if f.is_file()]


def _named(side: Path) -> tuple[str | None, str | None]:
    """(task, data_dir) a side file records, or (None, None)."""
    try:
        text = side.read_text(encoding="utf-8")
        data = json.loads(text) if side.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError, UnicodeDecodeError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    task = data.get("task_file") or data.get("task")
    data_dir = data.get("data_dir")
    return (task if isinstance(task, str) else None,
            data_dir if isinstance(data_dir, str) else None)  # fmt: skip


def find_task(ids: Iterable[str], near: Iterable[str | Path], what: str) -> FoundTask:
    """The task of records whose problem ids are ``ids``, read from ``what`` (for messages);
    ``near``: their files, where the stages that made them left their settings."""
    from ekt.data.tasks import registry, resolve_spec

    name = task_name(ids, what)
    for side in _side_files(near):
        task, data_dir = _named(side)
        if not task:
            continue
        for candidate in (task, str(side.parent / task)):
            try:
                spec = resolve_spec(candidate)
            except EktError:
                continue
            if spec.name == name:
                return FoundTask(candidate, data_dir, str(side))
    if name in registry():
        return FoundTask(name)
    raise EktError(
        f"{what}: the problem ids name task {name!r}, which is not built in (`ekt tasks`) and "
        f"no generate.json or config.yaml beside the records names its file: pass --task FILE "
        f"(the task file with name: {name})"
    )


__all__ = ["FoundTask", "find_task", "task_name"]
