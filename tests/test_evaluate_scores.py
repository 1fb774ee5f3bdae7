import pytest

from ekt.errors import EktError
from ekt.evaluation.evaluate import EvalConfig, majority_answer, per_problem, scores_from_rows
from ekt.records import Problem


def test_majority_answer():
    assert majority_answer([3.0, 2.0, 3.0000000001, None]) == 3.0
    assert majority_answer([1.0, 2.0]) == 1.0  # tie: first seen
    assert majority_answer([None, None]) is None


def test_per_problem_and_scores_known_values():
    probs = [Problem("t/0", "q", 5, "test"), Problem("t/1", "q", 7, "test")]

    def ex(pid, i, value, correct, status="ok"):
        return {
            "problem_id": pid,
            "sample_idx": i,
            "value": value,
            "type": "int",
            "status": status,
            "correct": correct,
        }

    sampled = [
        ex("t/0", 0, 5, True),
        ex("t/0", 1, 4, False),
        ex("t/0", 2, 5, True),
        ex("t/0", 3, 1, False),
        ex("t/1", 0, 1, False),
        ex("t/1", 1, None, False, "error"),
        ex("t/1", 2, 2, False),
        ex("t/1", 3, 2, False),
    ]
    greedy = [ex("t/0", 0, 5, True), ex("t/1", 0, 3, False)]
    rows = per_problem(probs, sampled, greedy)
    assert [(r["n"], r["c"], r["majority_correct"]) for r in rows] == [(4, 2, True), (4, 0, False)]
    s = scores_from_rows(rows, [1, 2, 4])
    assert s["pass@1"] == pytest.approx((2 / 4 + 0) / 2)
    assert s["pass@2"] == pytest.approx((1 - 1 / 6) / 2)  # 1 - C(2,2)/C(4,2)
    assert s["pass@4"] == pytest.approx(0.5)
    assert s["greedy_pass@1"] == 0.5 and s["maj@4"] == 0.5 and s["problems"] == 2


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"n": 4, "k": [1, 8]}, "--k 8 exceeds --n 4"),
        ({"n": 0}, "--n must be >= 1"),
        ({"temperature": -1.0}, "--temperature"),
        ({"k": [0]}, "--k values"),
    ],
)
def test_eval_config_refuses_bad_values(kwargs, msg):
    with pytest.raises(EktError, match=msg):
        EvalConfig(**kwargs).validate()
