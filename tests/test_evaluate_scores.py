import pytest

from ekt.errors import EktError
from ekt.evaluation.evaluate import EvalConfig, per_problem, score_line
from ekt.evaluation.metrics import score_problems
from ekt.records import Problem


def test_per_problem_and_scores_known_values():
    probs = [Problem("t/0", "q", 5, "test"), Problem("t/1", "q", 7, "test")]

    def ex(pid, i, value, correct, status="ok", type_name="int"):
        return {
            "problem_id": pid,
            "sample_idx": i,
            "value": value,
            "type": type_name,
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
    s = score_problems(rows, [1, 2, 4])
    assert s["pass@1"] == pytest.approx((2 / 4 + 0) / 2)
    assert s["pass@2"] == pytest.approx((1 - 1 / 6) / 2)  # 1 - C(2,2)/C(4,2)
    assert s["pass@4"] == pytest.approx(0.5)
    assert s["greedy_pass@1"] == 0.5 and s["maj@4"] == 0.5 and s["problems"] == 2
    assert s["solved_any"] == 1
    assert rows[0]["question"] == "q" and rows[0]["majority_answer"] == 5.0
    s["seconds"] = 1.5
    assert score_line("m", s) == (
        "evaluate m: 2 questions, pass@1 25.0%, pass@2 41.7%, pass@4 50.0%, "
        "greedy_pass@1 50.0%, maj@4 50.0%; 1.5s"
    )


def test_majority_vote_is_graded_like_verification():
    """Float-noise variants of the gold outvote a near miss; a near miss never wins as gold."""
    probs = [Problem("t/0", "q", 0.3, "test"), Problem("t/1", "q", 192000000, "test")]
    rows = per_problem(
        probs,
        [
            {
                "problem_id": "t/0",
                "sample_idx": 0,
                "value": 0.1 + 0.2,
                "type": "float",
                "status": "ok",
                "correct": True,
            },
            {
                "problem_id": "t/0",
                "sample_idx": 1,
                "value": 0.31,
                "type": "float",
                "status": "ok",
                "correct": False,
            },
            {
                "problem_id": "t/0",
                "sample_idx": 2,
                "value": [3, 10],
                "type": "Fraction",
                "status": "ok",
                "correct": True,
            },
            {
                "problem_id": "t/1",
                "sample_idx": 0,
                "value": 192000001,
                "type": "int",
                "status": "ok",
                "correct": False,
            },
            {
                "problem_id": "t/1",
                "sample_idx": 1,
                "value": 192000001.0,
                "type": "float",
                "status": "ok",
                "correct": False,
            },
            {
                "problem_id": "t/1",
                "sample_idx": 2,
                "value": "192000000",
                "type": "str",
                "status": "ok",
                "correct": False,
            },
        ],
        None,
    )
    assert [r["majority_correct"] for r in rows] == [True, False]
    assert rows[1]["majority_answer"] == 192000001.0 and rows[0]["greedy_correct"] is None


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
