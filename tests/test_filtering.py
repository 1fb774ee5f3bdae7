import pytest

from ekt.errors import EktError
from ekt.records import Problem
from ekt.verification.filtering import normalise_program, select_pairs

PROBLEMS = {
    "gsm8k/train/1": Problem("gsm8k/train/1", "Q one", 1, "train"),
    "gsm8k/train/2": Problem("gsm8k/train/2", "Q two", 2, "train"),
    "gsm8k/train/10": Problem("gsm8k/train/10", "Leaked  test question", 3, "train"),
}
A = "def solution():\n    return 1\n"
A_COMMENTED = "def solution():\n    # one\n    return   1\n"
B = "def solution():\n    x = 1\n    return x\n"


def rec(pid, idx, program, correct):
    return {"problem_id": pid, "sample_idx": idx, "program": program, "correct": correct}


RECORDS = [
    rec("gsm8k/train/2", 0, "def solution():\n    return 2\n", True),
    rec("gsm8k/train/1", 3, B, True),
    rec("gsm8k/train/1", 1, A, True),
    rec("gsm8k/train/1", 0, "def solution():\n    return 5\n", False),
    rec("gsm8k/train/1", 2, A_COMMENTED, True),
    rec("gsm8k/train/10", 0, A, True),
]


def test_first_correct_per_problem():
    pairs = select_pairs(RECORDS, PROBLEMS, "first")
    assert [(p.problem_id, p.program) for p in pairs] == [
        ("gsm8k/train/1", A),
        ("gsm8k/train/2", "def solution():\n    return 2\n"),
        ("gsm8k/train/10", A),
    ]


def test_all_unique_dedups_normalised_programs():
    pairs = select_pairs(RECORDS, PROBLEMS, "all")
    assert [(p.problem_id, p.program) for p in pairs if p.problem_id == "gsm8k/train/1"] == [
        ("gsm8k/train/1", A),
        ("gsm8k/train/1", B),
    ]
    assert normalise_program(A) == normalise_program(A_COMMENTED)


def test_decontamination_and_errors():
    pairs = select_pairs(RECORDS, PROBLEMS, "first", frozenset({"leaked test question"}))
    assert "gsm8k/train/10" not in {p.problem_id for p in pairs}
    assert select_pairs([r for r in RECORDS if not r["correct"]], PROBLEMS) == []
    with pytest.raises(EktError, match="--keep"):
        select_pairs(RECORDS, PROBLEMS, "best")
