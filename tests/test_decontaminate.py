"""Decontamination by n-gram overlap, with planted overlaps, and through the filter stage."""

from __future__ import annotations

import json

from ekt.data.tasks import get_task
from ekt.verification.decontaminate import Decontaminator, words
from ekt.verification.filtering import filter_stage

EVAL = [
    "A farmer has 17 sheep and buys 5 more every month for a whole year. How many sheep "
    "does the farmer have at the end of the year?",
    "What is 6 times 7?",
]


def test_planted_thirteen_word_run_is_found_and_twelve_is_not():
    index = Decontaminator({"evalset": EVAL})
    run13 = " ".join(words(EVAL[0])[3:16])  # 13 consecutive words of the first question
    run12 = " ".join(words(EVAL[0])[3:15])
    assert index(f"Prefix words here. {run13} and then something else entirely.")
    assert not index(f"Prefix words here. {run12} and then something else entirely.")


def test_case_punctuation_and_spacing_do_not_hide_an_overlap():
    index = Decontaminator({"evalset": EVAL})
    disguised = EVAL[0].upper().replace(" ", "  \n").replace("?", " ?!")
    assert index.hits(disguised) == {"evalset"}


def test_short_questions_match_whole():
    index = Decontaminator({"evalset": EVAL})
    assert index("what is 6 TIMES 7") and not index("What is 6 times 8?")


def test_ngram_size_is_configurable_and_sets_are_named():
    index = Decontaminator({"a": ["one two three four five"], "b": ["six seven eight"]}, n=3)
    assert index.hits("zero one two three nine six seven eight") == {"a", "b"}
    assert not index("one two nine three four")


def test_filter_stage_counts_overlaps_per_evaluation_set(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    train = [
        {
            "question": "Tom has 3 apples and buys 4 more. How many apples does Tom have now?",
            "answer": "#### 7",
        },
        # shares a 13-word run with the planted evaluation question below
        {
            "question": "Jo noted that a farmer has 17 sheep and buys 5 more every month for a "
            "whole year, then asked: how many?",
            "answer": "#### 77",
        },
        {"question": "What is 6 times 7?", "answer": "#### 42"},
    ]
    test = [
        {"question": "Ann reads 12 pages a day. How many pages in 5 days?", "answer": "#### 60"}
    ]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    task = get_task("gsm8k", data_dir=str(data))
    execs = tmp_path / "executions.jsonl"
    rows = [
        {
            "problem_id": f"gsm8k/train/{i}",
            "sample_idx": 0,
            "program": f"def solution():\n    return {a}\n",
            "correct": True,
        }
        for i, a in enumerate((7, 77, 42))
    ]
    execs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = filter_stage(execs, tmp_path / "pairs.jsonl", task, against={"svamp/test": EVAL})
    assert summary.pairs == 1 and summary.dropped_contaminated == 2
    assert summary.contaminated == {"gsm8k/test": 0, "svamp/test": 2}
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [p["problem_id"] for p in pairs] == ["gsm8k/train/0"]
    assert "svamp/test 2" in summary.line()
