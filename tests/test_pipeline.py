"""End to end through the CLI on a tiny random model: generate -> verify -> filter -> evaluate."""

import json

import pytest

from ekt.cli import main
from ekt.records import read_jsonl


def _lines(path):
    return [obj for _, obj in read_jsonl(path)]


@pytest.mark.slow
def test_generate_verify_filter_end_to_end(tmp_path, tiny_model_dir, data_dir, capsys):
    gen = tmp_path / "gen"
    args = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--task",
        "gsm8k",
        "--data-dir",
        str(data_dir),
        "--split",
        "train",
        "--limit",
        "3",
        "--n",
        "2",
        "--temperature",
        "0.8",
        "--max-new-tokens",
        "24",
        "--seed",
        "3",
        "--shard-size",
        "2",
        "--out",
        str(gen),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "generate: 3 problems, 6 samples (6 new)" in out
    samples = [o for p in sorted((gen / "samples").glob("*.jsonl")) for o in _lines(p)]
    assert sorted((o["problem_id"], o["sample_idx"]) for o in samples) == [
        (f"gsm8k/train/{i}", s) for i in (0, 1, 2) for s in (0, 1)
    ]
    # a program, or (a reply with no statement in it) none and the reason
    assert all(
        o["program"].startswith("def solution():\n") != bool(o["extract_error"]) for o in samples
    )
    assert len(list((gen / "samples").glob("*.done"))) == 2

    # A rerun finds everything done and loads no model.
    assert main(args) == 0
    assert "(0 new)" in capsys.readouterr().out

    ver = tmp_path / "verified.jsonl"
    assert (
        main(
            [
                "verify",
                "--task",
                "gsm8k",
                "--data-dir",
                str(data_dir),
                "--split",
                "train",
                "--programs",
                str(gen),
                "--out",
                str(ver),
                "--workers",
                "2",
                "--timeout",
                "2",
            ]
        )
        == 0
    )
    assert "verify: 6 programs" in capsys.readouterr().out
    recs = _lines(ver)
    assert len(recs) == 6
    for r in recs:
        assert r["status"] in {"ok", "error", "timeout", "killed", "no_program"}
        assert r["correct"] is False  # a random model does not solve GSM8K
        assert {"problem_id", "sample_idx", "text", "program", "value"} <= set(r)

    # Hand-written programs (one correct, one wrong, one crashing) through the same path.
    progs = tmp_path / "progs.jsonl"
    progs.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {
                    "problem_id": "gsm8k/train/1",
                    "sample_idx": 0,
                    "program": "def solution():\n    return 12 / 60 * 50\n",
                },
                {
                    "problem_id": "gsm8k/train/1",
                    "sample_idx": 1,
                    "program": "def solution():\n    return 11\n",
                },
                {
                    "problem_id": "gsm8k/train/0",
                    "sample_idx": 0,
                    "program": "def solution():\n    1/0\n",
                },
            ]
        )
        + "\n"
    )
    ver2 = tmp_path / "v2.jsonl"
    assert (
        main(
            [
                "verify",
                "--task",
                "gsm8k",
                "--data-dir",
                str(data_dir),
                "--programs",
                str(progs),
                "--out",
                str(ver2),
            ]
        )
        == 0
    )
    r2 = _lines(ver2)
    assert [r["correct"] for r in r2] == [True, False, False]
    assert r2[2]["status"] == "error" and r2[2]["type"] == "ZeroDivisionError"
    capsys.readouterr()

    pairs = tmp_path / "train_pairs.jsonl"
    assert (
        main(
            [
                "filter",
                "--task",
                "gsm8k",
                "--data-dir",
                str(data_dir),
                "--executions",
                str(ver),
                str(ver2),
                "--out",
                str(pairs),
            ]
        )
        == 0
    )
    assert "1 problems solved -> 1 pairs kept" in capsys.readouterr().out
    (pair,) = _lines(pairs)
    assert pair["problem_id"] == "gsm8k/train/1" and "Weng earns" in pair["question"]


@pytest.mark.slow
def test_resume_writes_only_missing_samples(tmp_path, tiny_model_dir, data_dir, capsys):
    """A shard cut short (killed writer) is completed with the same records a clean run gives."""
    base = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(data_dir),
        "--limit",
        "2",
        "--n",
        "3",
        "--max-new-tokens",
        "16",
        "--seed",
        "7",
    ]
    clean, cut = tmp_path / "clean", tmp_path / "cut"
    assert main(base + ["--out", str(clean)]) == 0
    assert main(base + ["--out", str(cut)]) == 0
    shard = cut / "samples" / "shard-00000.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:2]) + lines[2][:15])  # two whole records and a torn one
    (cut / "samples" / "shard-00000.done").unlink()
    capsys.readouterr()
    assert main(base + ["--out", str(cut)]) == 0
    assert "(4 new)" in capsys.readouterr().out

    def key(o):
        return (o["problem_id"], o["sample_idx"])

    a = sorted(_lines(clean / "samples" / "shard-00000.jsonl"), key=key)
    b = sorted(_lines(shard), key=key)
    assert a == b and len(a) == 6


def test_changed_settings_are_refused(tmp_path, tiny_model_dir, data_dir, capsys):
    base = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(data_dir),
        "--limit",
        "1",
        "--n",
        "1",
        "--max-new-tokens",
        "4",
        "--out",
        str(tmp_path / "g"),
    ]
    assert main(base) == 0
    assert main(base[:-2] + ["--temperature", "0.9", "--out", str(tmp_path / "g")]) == 2
    assert "other settings (sampling changed)" in capsys.readouterr().err


def test_user_errors_exit_2_with_one_line(tmp_path, data_dir, capsys):
    cases = [
        (
            [
                "generate",
                "--model",
                "no-such-preset",
                "--data-dir",
                str(data_dir),
                "--limit",
                "1",
                "--out",
                str(tmp_path / "x"),
            ],
            "no-such-preset",
        ),
        (
            [
                "verify",
                "--data-dir",
                str(data_dir),
                "--programs",
                str(tmp_path / "missing.jsonl"),
                "--out",
                str(tmp_path / "o.jsonl"),
            ],
            "no such file",
        ),
        (
            [
                "generate",
                "--model",
                "x",
                "--data-dir",
                str(tmp_path / "nodata"),
                "--out",
                str(tmp_path / "y"),
            ],
            "does not exist",
        ),
    ]
    for argv, needle in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1
