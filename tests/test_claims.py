"""The paper's claims (ekt.report.claims) on hand-made per-question records with known
differences, and their sections in results.json, results.md and report.html."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_report import make_run

from ekt.evaluation.stats import Interval
from ekt.report.build import add_statistics, build_report
from ekt.report.claims import (
    BEST_STUDENT,
    CLAIMS,
    CONTRADICTED,
    NOT_COMPARABLE,
    NOT_DISTINGUISHABLE,
    NOT_RUN,
    SUPPORTED,
    TEACHER,
    Claim,
    best_student,
    check_claim,
    check_claims,
    verdict_of,
)
from ekt.report.tables import claim_verdict, claims_lines

N = 10
QUESTIONS = 200
BETTER = 150  # questions on which the "better" model has 8 of 10 correct against 2 of 10


@dataclass(frozen=True)
class Model:
    label: str
    method: str
    problems: list[dict]


def rows(
    c_on_better: int,
    c_rest: int = 5,
    n: int = N,
    questions: int = QUESTIONS,
    greedy: bool | None = True,
    first: int = 0,
) -> list[dict]:
    """Per-question records: ``c_on_better`` of n correct on the first BETTER questions,
    ``c_rest`` on the others; greedy right where more than half the samples are."""
    out = []
    for q in range(first, first + questions):
        c = c_on_better if q < BETTER else c_rest
        out.append(
            {
                "problem_id": f"gsm8k/test/{q}",
                "question": f"Question {q}?",
                "gold": 18,
                "n": n,
                "c": c,
                "greedy_correct": None if greedy is None else 2 * c > n,
                "majority_answer": 18.0 if 2 * c > n else 7.0,
                "majority_correct": 2 * c > n,
            }
        )
    return out


def model(method: str, problems: list[dict]) -> Model:
    label = "teacher" if method == "few-shot" else f"student-{method}"
    return Model(label, method, problems)


BASE_CLAIMS = [c for c in CLAIMS if not c.optional]  # what a run without grpo/on-policy has
EKT_VS_KD = CLAIMS[0]
EKT_VS_EI = CLAIMS[1]
BEST_VS_TEACHER = CLAIMS[2]


def test_the_declared_claims():
    assert [(c.name, c.left, c.right) for c in CLAIMS] == [
        ("ekt_vs_kd", "ekt", "kd"),
        ("ekt_vs_expert_iteration", "ekt", "expert-iteration"),
        ("best_student_vs_teacher", BEST_STUDENT, TEACHER),
        ("ekt_vs_base", "ekt", "none"),
        ("ekt_vs_grpo", "ekt", "grpo"),
        ("ekt_vs_on_policy", "ekt", "on-policy"),
    ]
    assert len({c.name for c in CLAIMS}) == len(CLAIMS)


def test_better_on_150_of_200_questions_is_supported():
    models = [model("ekt", rows(8)), model("kd", rows(2))]
    r = check_claim(EKT_VS_KD, models, ks=[1, 5, 10])
    assert r.verdict == SUPPORTED and r.metric == "pass@1" and r.questions == QUESTIONS
    assert list(r.differences) == ["pass@1", "pass@5", "pass@10", "greedy_pass@1"]
    p1 = r.differences["pass@1"]
    assert p1.estimate == pytest.approx(BETTER * (0.8 - 0.2) / QUESTIONS)  # 0.45
    assert 0 < p1.low < p1.estimate < p1.high
    assert r.differences["greedy_pass@1"].estimate == pytest.approx(BETTER / QUESTIONS)
    # pass@10 from 10 samples: both solve every question with at least one correct sample
    assert r.differences["pass@10"] == Interval(0.0, 0.0, 0.0, QUESTIONS)
    assert (r.left_label, r.right_label) == ("student-ekt", "student-kd")
    # deterministic: the same seed gives the same interval
    assert check_claim(EKT_VS_KD, models, ks=[1, 5, 10]) == r


def test_identical_records_are_not_distinguishable():
    r = check_claim(EKT_VS_KD, [model("ekt", rows(8)), model("kd", rows(8))], ks=[1, 10])
    assert r.verdict == NOT_DISTINGUISHABLE
    assert r.differences["pass@1"] == Interval(0.0, 0.0, 0.0, QUESTIONS)


def test_worse_is_contradicted():
    r = check_claim(EKT_VS_KD, [model("ekt", rows(2)), model("kd", rows(8))], ks=[1])
    assert r.verdict == CONTRADICTED
    assert r.differences["pass@1"].high < 0
    assert r.differences["pass@1"].estimate == pytest.approx(-0.45)


def test_a_small_difference_on_few_questions_is_not_distinguishable():
    # one question better out of 20: the interval reaches 0
    few = [model("ekt", rows(8, questions=20, first=BETTER - 1)),
           model("kd", rows(2, questions=20, first=BETTER - 1))]  # fmt: skip
    r = check_claim(EKT_VS_KD, few, ks=[1])
    assert r.differences["pass@1"].estimate > 0 and r.verdict == NOT_DISTINGUISHABLE


def test_verdict_boundaries():
    assert verdict_of(Interval(0.1, 0.0, 0.2, 10)) == NOT_DISTINGUISHABLE  # touches 0
    assert verdict_of(Interval(0.1, 1e-9, 0.2, 10)) == SUPPORTED
    assert verdict_of({"low": -0.2, "high": -1e-9}) == CONTRADICTED
    assert verdict_of({"low": -0.2, "high": 0.0}) == NOT_DISTINGUISHABLE


def test_a_missing_method_is_not_run_with_no_numbers():
    r = check_claim(EKT_VS_KD, [model("ekt", rows(8))], ks=[1])
    assert r.verdict == NOT_RUN and r.differences == {} and r.metric is None
    assert r.reason == "kd: not in this run" and r.left_label == "student-ekt"
    r = check_claim(EKT_VS_KD, [model("ekt", rows(8))], ks=[1], skipped={"kd": "no pairs"})
    assert r.reason == "kd: skipped: no pairs"
    r = check_claim(BEST_VS_TEACHER, [model("none", rows(1)), model("ekt", rows(8))], ks=[1])
    assert r.verdict == NOT_RUN and r.reason == "teacher: not evaluated in this run"
    r = check_claim(BEST_VS_TEACHER, [model("few-shot", rows(9)), model("none", rows(1))], ks=[1])
    assert r.verdict == NOT_RUN and r.reason == "no trained student was evaluated"


def test_only_shared_questions_are_paired_and_ks_above_n_are_dropped():
    ekt = model("ekt", rows(8))  # questions 0..199, n = 10
    kd = model("kd", rows(2, 2, n=4, questions=100, first=100))  # 100..199: n = 4, c = 2
    r = check_claim(EKT_VS_KD, [ekt, kd], ks=[1, 4, 10])
    assert r.questions == 100 and list(r.differences) == ["pass@1", "pass@4", "greedy_pass@1"]
    # shared: 100..149 (0.8 vs 0.5) and 150..199 (0.5 vs 0.5)
    assert r.differences["pass@1"].estimate == pytest.approx(50 * 0.3 / 100)
    apart = model("kd", rows(2, first=QUESTIONS))
    r = check_claim(EKT_VS_KD, [ekt, apart], ks=[1])
    assert r.verdict == NOT_COMPARABLE and r.differences == {} and "no question" in r.reason


def test_greedy_is_the_primary_metric_without_samples():
    ekt = model("ekt", rows(0, 0, n=0))
    kd = model("kd", rows(0, 0, n=0))
    for p in ekt.problems[:BETTER]:
        p["greedy_correct"] = True
    r = check_claim(EKT_VS_KD, [ekt, kd], ks=[1, 10])
    assert r.metric == "greedy_pass@1" and list(r.differences) == ["greedy_pass@1"]
    assert r.verdict == SUPPORTED
    assert claim_verdict(r.as_dict()) == "supported at this scale (on greedy_pass@1)"
    # samples but no greedy outcome on one side: pass@k only
    r = check_claim(EKT_VS_KD, [model("ekt", rows(8)), model("kd", rows(2, greedy=None))], [1])
    assert list(r.differences) == ["pass@1"] and r.metric == "pass@1"


def test_best_student_is_the_trained_student_with_the_highest_pass_at_1():
    models = [
        model("few-shot", rows(10, 10)),  # the teacher is no student
        model("none", rows(9, 9)),  # nor is the untrained base student
        model("ekt", rows(8)),
        model("supervised", rows(9)),
        model("kd", rows(2)),
    ]
    best = best_student(models)
    assert best is not None and (best.label, best.method) == ("student-supervised", "supervised")
    assert best.metric == "pass@1" and best.estimate == pytest.approx((150 * 0.9 + 50 * 0.5) / 200)
    found, results = check_claims(models, ks=[1, 10])
    assert found == best and [r.claim for r in results] == BASE_CLAIMS
    vs_teacher = results[2]
    assert (vs_teacher.left_label, vs_teacher.right_label) == ("student-supervised", "teacher")
    assert vs_teacher.verdict == CONTRADICTED
    assert results[1].verdict == NOT_RUN  # no expert iteration in these models
    # a tie goes to the model listed first
    tie = [model("kd", rows(8)), model("ekt", rows(8))]
    assert best_student(tie).label == "student-kd"
    # a student better than its teacher
    up = [model("few-shot", rows(2)), model("ekt", rows(8))]
    assert check_claims(up, [1])[1][2].verdict == SUPPORTED


def test_more_claims_are_data():
    grpo = Claim("grpo_vs_ekt", "grpo", "ekt", "GRPO gives the student more than EKT", "GRPO")
    models = [model("ekt", rows(2)), model("grpo", rows(8))]
    best, results = check_claims(models, [1], claims=[grpo, EKT_VS_KD])
    assert [r.verdict for r in results] == [SUPPORTED, NOT_RUN]
    assert best is not None and best.method == "grpo"
    d = results[0].as_dict()
    assert (d["left_name"], d["right_name"]) == ("GRPO", "ekt")


# -- the sections of results.json, results.md and report.html -------------------------


def _write(run: Path, label: str, problems: list[dict]) -> None:
    e = run / "eval" / label
    e.mkdir(parents=True, exist_ok=True)
    (e / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))


def claims_run(root: Path, name: str = "claims-run") -> Path:
    """test_report's run folder, its per-question records replaced by known ones: EKT beats KD
    on 150 of 200 questions, expert iteration equals EKT, supervised is the best student and
    below the teacher."""
    d = make_run(root, name, questions=QUESTIONS, n=N, rounds=False)
    _write(d, "teacher", rows(10, 10))
    _write(d, "student-base", rows(1, 1))
    _write(d, "student-ekt", rows(8))
    _write(d, "student-kd", rows(2))
    _write(d, "student-supervised", rows(9))
    _write(d, "student-expert-iteration", rows(8))  # not in results.json: found from eval/
    return d


def test_results_json_and_md_carry_the_claims(tmp_path):
    d = claims_run(tmp_path)
    res = add_statistics(d)
    assert res == json.loads((d / "results.json").read_text())
    claims = res["claims"]
    assert list(claims["rows"]) == [c.name for c in BASE_CLAIMS]
    assert claims["resamples"] == 2000 and claims["seed"] == 0 and claims["level"] == 0.95
    assert claims["best_student"] == {
        "label": "student-supervised",
        "method": "supervised",
        "metric": "pass@1",
        "estimate": pytest.approx(0.8),
    }
    kd, ei, bt = (claims["rows"][c.name] for c in CLAIMS[:3])
    assert kd["verdict"] == SUPPORTED and ei["verdict"] == NOT_DISTINGUISHABLE
    assert bt["verdict"] == CONTRADICTED and bt["left_label"] == "student-supervised"
    assert set(kd["differences"]) == {"pass@1", "pass@10", "greedy_pass@1"}
    assert kd["differences"]["pass@1"]["estimate"] == pytest.approx(0.45)
    assert kd["questions"] == QUESTIONS and kd["metric"] == "pass@1"
    md = (d / "results.md").read_text()
    assert "Claims (computed from the per-question records)" in md and "at this scale" in md
    assert (
        "| EKT gives the student more than knowledge distillation | EKT − KD | "
        "supported at this scale | 200 | +45.0 [" in md
    )
    assert (
        "| EKT gives the student more than expert iteration | EKT − expert iteration | "
        "not distinguishable at this scale | 200 | +0.0 [+0.0, +0.0] |" in md
    )
    teacher = "| best student (supervised) − teacher | contradicted at this scale | 200 | -20.0 ["
    assert teacher in md
    assert "Best student: supervised (student-supervised)" in md and "(80.0%)" in md
    # the same records give the same section
    assert add_statistics(d)["claims"] == claims


def test_a_method_the_run_lacks_is_not_run(tmp_path):
    d = claims_run(tmp_path)
    shutil.rmtree(d / "eval" / "student-kd")  # kd stays in results.json, without records
    shutil.rmtree(d / "eval" / "student-expert-iteration")
    res = add_statistics(d)
    kd, ei = res["claims"]["rows"]["ekt_vs_kd"], res["claims"]["rows"]["ekt_vs_expert_iteration"]
    assert kd["verdict"] == NOT_RUN and kd["differences"] == {}
    assert kd["reason"] == "kd: skipped: no evaluation records"
    assert ei["verdict"] == NOT_RUN and ei["reason"] == "expert-iteration: not in this run"
    md = (d / "results.md").read_text()
    assert "| EKT − KD | not run (kd: skipped: no evaluation records) | — | — | — | — |" in md


def test_report_html_shows_the_claims_of_each_run_side_by_side(tmp_path):
    a = claims_run(tmp_path, "run-a")
    b = claims_run(tmp_path, "run-b")
    shutil.rmtree(b / "eval" / "student-kd")
    page = build_report([a, b], out=tmp_path / "report.html").read_text()
    assert '<section id="claims">' in page and '<a href="#claims">' in page
    section = page[page.index('<section id="claims">') :]
    section = section[: section.index("</section>")]
    assert section.count('<tbody class="claims-run">') == 2
    assert f'<td rowspan="{len(BASE_CLAIMS)}"><b>run-a</b></td>' in section
    assert f'<td rowspan="{len(BASE_CLAIMS)}"><b>run-b</b></td>' in section
    # ekt vs kd in run-a only (run-b has no kd), ekt vs its base in both
    assert section.count('class="claim v-supported"') == 3
    assert section.count('class="claim v-not-run"') == 1
    assert section.count('class="claim v-not-distinguishable"') == 2
    assert section.count('class="claim v-contradicted"') == 2
    assert section.count("supported at this scale") == 3 and "at this scale" in section
    assert "not run (kd: skipped: no evaluation records)" in section
    assert section.count("best student (supervised) − teacher") == 2
    assert "run-b: Best student: supervised (student-supervised)" in section
    assert '<span class="sig">+45.0</span>' in section


def test_claims_markdown_puts_several_runs_in_row_groups(tmp_path):
    a, b = claims_run(tmp_path, "run-a"), claims_run(tmp_path, "run-b")
    (b / "eval" / "student-ekt" / "problems.jsonl").unlink()
    sections = [(d.name, add_statistics(d)["claims"]) for d in (a, b)]
    lines = claims_lines(sections)
    head = next(x for x in lines if x.startswith("| run |"))
    assert head.split(" | ")[1:5] == ["claim", "difference", "verdict", "questions"]
    body = [x for x in lines if x.startswith("| run-")]
    n = len(BASE_CLAIMS)
    assert [x.split(" | ")[0] for x in body] == ["| run-a"] * n + ["| run-b"] * n
    assert "not run (ekt: skipped: no evaluation records)" in body[n]
    assert lines[-1].startswith("run-b: Best student: supervised")
    assert claims_lines([]) == []


def test_ekt_report_prints_the_claims_of_several_runs_side_by_side(tmp_path, capsys):
    from ekt.cli import main

    a, b = claims_run(tmp_path, "run-a"), claims_run(tmp_path, "run-b")
    shutil.rmtree(b / "eval" / "student-kd")
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    rows = [x for x in out.splitlines() if x.startswith("| run-")]
    assert len(rows) == 2 * len(BASE_CLAIMS)
    kd_a = next(x for x in rows if x.startswith("| run-a") and "EKT − KD" in x)
    kd_b = next(x for x in rows if x.startswith("| run-b") and "EKT − KD" in x)
    assert "supported at this scale" in kd_a and "+45.0" in kd_a
    assert "not run (kd: skipped: no evaluation records)" in kd_b


def test_new_methods_are_paired_against_ekt_where_the_run_has_them():
    models = [model("ekt", rows(8)), model("grpo", rows(2)), model("on-policy", rows(8))]
    _, results = check_claims(models, ks=[1])
    got = {r.claim.name: r for r in results}
    assert got["ekt_vs_grpo"].verdict == SUPPORTED and got["ekt_vs_grpo"].questions == QUESTIONS
    assert got["ekt_vs_on_policy"].differences["pass@1"].estimate == 0
    _, without = check_claims(models[:1], ks=[1])
    assert "ekt_vs_grpo" not in {r.claim.name for r in without}
