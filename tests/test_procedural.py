"""Procedural tasks (source: reasoning-gym): seeded problems, stable ids, no train/test
overlap, grading tables per built-in generator, and a checker held by its limits."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ekt.data import procedural
from ekt.data.procedural import answer_text, gold_of, split_seed
from ekt.data.prompt_format import load_format
from ekt.data.tasks import get_task, read_spec
from ekt.errors import EktError
from ekt.records import Execution

pytest.importorskip("reasoning_gym")

BUILTIN = ("leg_counting", "letter_counting", "basic_arithmetic", "time_intervals",
           "gsm_symbolic", "procedural_mix")  # fmt: skip


def ok(value, type_name=None) -> Execution:
    return Execution("ok", value, type_name or type(value).__name__)


def digest(problems) -> str:
    text = json.dumps([[p.id, p.question, p.answer] for p in problems])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- problems ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_task_loads_with_stable_ids_and_no_overlap(name):
    task = get_task(name)
    train, test = task.load("train"), task.load("test")
    assert train and test and task.answer_format == "procedural"
    assert all(p.id == f"{name}/train/{p.id.rsplit('/', 1)[1]}" for p in train)
    assert [p.id for p in test] == [f"{name}/test/{i}" for i in range(len(test))]
    assert not {p.question for p in train} & {p.question for p in test}
    size = task.spec.size["train"]
    assert len(train) + task.procedural.overlaps["train"] == size
    assert task.source.startswith("reasoning-gym:")


def test_overlaps_are_counted_and_dropped_from_train():
    task = get_task("leg_counting")  # 1-3 kinds of animals: a small space that repeats
    task.load("train")
    dropped = task.procedural.overlaps["train"]
    assert dropped > 0
    test_questions = {p.question for p in task.load("test")}
    raw = task.procedural.items("train")
    assert sum(q.strip() in test_questions for q, _ in raw) == dropped


def test_same_seed_same_problems_in_other_processes_and_hash_seeds():
    """Problems do not depend on the process (Python's hash seed) that loads them."""
    code = (
        "import json,sys; from ekt.data.tasks import get_task\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    t = get_task(n); ps = t.load('train')[:50] + t.load('test')[:50]\n"
        "    out[n] = [[p.id, p.question, p.answer] for p in ps]\n"
        "print(json.dumps(out))\n"
    )
    runs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        res = subprocess.run([sys.executable, "-c", code, *BUILTIN], env=env,
                             capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
        runs.append(res.stdout)
    assert runs[0] == runs[1]
    here = {n: [[p.id, p.question, p.answer] for p in get_task(n).load("train")[:50]]
            for n in BUILTIN}  # fmt: skip
    there = json.loads(runs[0])
    assert all(there[n][:50] == here[n] for n in BUILTIN)


def test_the_first_problems_are_pinned():
    """The same seed gives these exact problems on any machine (reasoning-gym 0.1.x)."""
    train = get_task("basic_arithmetic").load("train")
    assert train[0].id == "basic_arithmetic/train/0"
    assert (train[0].question, train[0].answer) == ("Calculate 5 - 3.", 2)
    legs = get_task("leg_counting").load("test")[0]
    assert legs.question.endswith("if you have 1 leech, 4 wasps?") and legs.answer == 24


def test_splits_have_far_apart_seeds():
    assert split_seed(1, "train") == 1
    assert split_seed(1, "test") - 1 >= 10**8
    assert split_seed(1, "test") != split_seed(1, "dev")


def test_mixed_task_draws_several_generators_deterministically():
    task = get_task("procedural_mix")
    test = task.load("test")
    kinds = {
        "legs" if "legs" in p.question else "letter" if "letter" in p.question
        else "time" if ":" in p.question else "calc" for p in test
    }  # fmt: skip
    assert kinds == {"legs", "letter", "time", "calc"}
    assert digest(test) == digest(get_task("procedural_mix").load("test"))


# -- task files ------------------------------------------------------------------------------


def _task_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "t.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: a\nsource: reasoning-gym\nseed: 1\nsize: {train: 5}\n", "names 'generator'"),
        ("name: a\nsource: hub\ngenerator: x\n", "must be 'reasoning-gym'"),
        ("name: a\nsource: reasoning-gym\ngenerator: leg_counting\nsize: {train: 0}\n", "size"),
        ("name: a\nsource: reasoning-gym\ngenerator: leg_counting\nseed: -1\nsize: {test: 2}\n",
         "seed"),
        ("name: a\nsource: reasoning-gym\ngenerator: leg_counting\nsize: {test: 2}\n"
         "config: {seed: 3}\n", "'seed' and 'size' are the task's keys"),
        ("name: a\nsource: reasoning-gym\ngenerator: leg_counting\nsize: {test: 2}\n"
         "data: x.jsonl\n", "does not apply"),
        ("name: a\ngenerator: leg_counting\ndata: x\nquestion: q\nanswer: a\n",
         "need 'source: reasoning-gym'"),
        ("name: a\nsource: reasoning-gym\ngenerators: [{name: leg_counting, weight: 0}]\n"
         "size: {test: 2}\n", "weight"),
    ],
)
def test_bad_procedural_task_files_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(EktError, match=message):
        read_spec(_task_file(tmp_path, text))


def test_unknown_generator_and_bad_config_name_the_file(tmp_path):
    p = _task_file(tmp_path, "name: a\nsource: reasoning-gym\ngenerator: no_such_thing\n"
                             "size: {test: 2}\n")  # fmt: skip
    with pytest.raises(EktError, match=r"t.yaml: generator 'no_such_thing'"):
        get_task(str(p)).load("test")
    p = _task_file(tmp_path, "name: a\nsource: reasoning-gym\ngenerator: leg_counting\n"
                             "config: {legs: 3}\nsize: {test: 2}\n")  # fmt: skip
    with pytest.raises(EktError, match=r"generator 'leg_counting': TypeError"):
        get_task(str(p)).load("test")


def test_task_exemplars_replace_the_formats_in_the_teacher_prompt():
    task = get_task("letter_counting")
    spec = task.prompt_format("function")
    fmt = load_format(spec)
    assert fmt.exemplar_file.endswith("letter_counting.jsonl")
    prompt = fmt.teacher("How many times does the letter \"a\" appear in the text: \"a cat\"?")
    assert "the river was wide and slow" in prompt and "Julie" not in prompt
    assert fmt.student("q") == load_format("function").student("q")  # the student: zero-shot
    chat = load_format(task.prompt_format("chat")).teacher("q")
    assert "text.lower().count(letter)" in chat[2]["content"]
    assert task.prompt_format(spec) == spec  # a spec naming exemplars keeps them
    with pytest.raises(EktError, match="does not define simple_math_problem"):
        load_format(task.prompt_format("tinygsm"))


# -- grading tables --------------------------------------------------------------------------


def _first(name: str, split: str = "test"):
    task = get_task(name)
    return task, task.load(split)[0]


def _numeric_table(gold: int) -> list[tuple[Execution, bool]]:
    return [
        (ok(gold), True),
        (ok(float(gold)), True),
        (ok(gold + 1), False),
        (ok(gold - 1), False),
        (ok(float(gold) + 0.5), False),
        (ok(-gold if gold else 1), False),
        (ok(str(gold)), False),  # ekt's one numeric rule: a string is not a number
        (ok(True, "bool"), False),
        (ok(None, "NoneType"), False),
        (ok([gold], "list"), False),
        (Execution("error", None, "ValueError"), False),
    ]


@pytest.mark.parametrize("name", ["leg_counting", "letter_counting", "basic_arithmetic",
                                  "gsm_symbolic"])  # fmt: skip
def test_numeric_generators_grade_by_the_exact_rule(name):
    task, p = _first(name)
    assert isinstance(p.answer, int)
    for ex, want in _numeric_table(p.answer):
        assert task.grade(ex, p) is want, (name, ex)


def test_time_intervals_table():
    task = get_task("time_intervals")
    p = next(q for q in task.load("test") if q.answer.count(":") == 1)  # HH:MM
    h, m = map(int, p.answer.split(":"))
    near = f"{h:02d}:{(m + 1) % 60:02d}"
    table = [
        (ok(p.answer), True),
        (ok(f"  {p.answer}\n"), True),
        (ok(near), False),
        (ok(h * 60 + m), False),
        (ok(float(h * 60 + m)), False),
        (ok("about " + p.answer + " hours"), False),
        (ok([h, m], "list"), False),
        (ok(None, "NoneType"), False),
        (ok(True, "bool"), False),
        (ok(""), False),
        (ok("x" * 100_000), False),
    ]
    for ex, want in table:
        assert task.grade(ex, p) is want, ex
    q = next(q for q in task.load("test") if q.answer.count(":") == 2)  # HH:MM:SS
    hh, mm, ss = map(int, q.answer.split(":"))
    assert task.grade(ok(q.answer), q) is True
    assert task.grade(ok(f"{hh:02d}:{mm:02d}:{(ss + 1) % 60:02d}"), q) is False
    assert task.grade(ok(f"{hh:02d}:{mm:02d}"), q) is False


def test_mixed_task_grades_each_problem_by_its_own_generator():
    task = get_task("procedural_mix")
    problems = task.load("test")[:40]
    for p in problems:
        right = ok(p.answer)
        assert task.grade(right, p) is True, p.id
        wrong = ok(p.answer + 1) if isinstance(p.answer, int) else ok(p.answer + "0")
        assert task.grade(wrong, p) is False, p.id


@pytest.mark.parametrize(
    "value, type_name, text",
    [
        ("06:09", "str", "06:09"),
        (" a b ", "str", "a b"),
        (12, "int", "12"),
        (12.0, "float", "12"),
        (2.5, "float", "2.5"),
        ([3, 4], "Fraction", "3/4"),
        ([1, 2, 3], "list", "1, 2, 3"),
        (["a", "b"], "tuple", "a, b"),
        ([[1, 2], [3]], "list", "1, 2, 3"),
        (True, "bool", None),
        (None, "NoneType", None),
        (float("nan"), "float", None),
        ([1, None], "list", None),
        ([1, True], "list", None),
        ("7", "int", None),  # a value whose JSON does not fit its type
    ],
)
def test_answer_text(value, type_name, text):
    assert answer_text(value, type_name) == text


def test_gold_of():
    assert [gold_of(x) for x in ("292", "-4", "2.5", "3.0", "06:09", "1, 2", "1e5")] == [
        292, -4, 2.5, 3, "06:09", "1, 2", "1e5"
    ]


# -- the checker's limits --------------------------------------------------------------------


@pytest.fixture
def poly(tmp_path):
    """A generator whose checker parses the answer with sympy's parse_expr (which evals)."""
    p = tmp_path / "poly.yaml"
    p.write_text("name: poly\nsource: reasoning-gym\ngenerator: polynomial_multiplication\n"
                 "seed: 3\nsize: {train: 4, test: 4}\n")  # fmt: skip
    task = get_task(str(p))
    return task, task.load("test")[0]


def test_the_generators_checker_gives_full_marks_only(poly):
    task, p = poly
    assert isinstance(p.answer, str)
    assert task.grade(ok(p.answer), p) is True
    assert task.grade(ok(p.answer + " + 1"), p) is False


@pytest.mark.parametrize(
    "hostile",
    [
        "9**9**9**9",  # sympy would compute this integer for ever
        "(" * 1500 + "x" + ")" * 1500,
        "[" * 400 + "]" * 400,
        "x" * 10**6,  # over MAX_ANSWER_CHARS: never sent
        "__import__('os').system('touch {marker}')",
        "open('{marker}', 'w').write('x')",
    ],
)
def test_hostile_answers_are_wrong_within_bounded_time(poly, tmp_path, hostile):
    task, p = poly
    marker = tmp_path / "pwned"
    text = hostile.replace("{marker}", str(marker))
    task.grade(ok(p.answer), p)  # the helper is up
    t0 = time.monotonic()
    assert task.grade(ok(text), p) is False
    assert time.monotonic() - t0 < procedural.CHECK_TIMEOUT_S + 60  # a restart may follow
    assert not marker.exists()
    assert task.grade(ok(p.answer), p) is True  # and grading goes on


def test_checker_runs_outside_the_ekt_process(poly):
    task, p = poly
    task.grade(ok(p.answer), p)
    helper = procedural.checker().proc
    assert helper is not None and helper.pid != os.getpid() and helper.poll() is None


def test_majority_vote_on_text_answers_uses_the_verdicts():
    from ekt.evaluation.evaluate import per_problem, text_vote
    from ekt.records import Problem

    def rec(i, value, correct, status="ok"):
        return {"problem_id": "t/test/0", "sample_idx": i, "status": status, "value": value,
                "type": "str", "correct": correct}  # fmt: skip

    recs = [rec(0, "01:00", False), rec(1, "00:35", True), rec(2, "00:35", True),
            rec(3, None, False, "error"), rec(4, "01:00", False)]  # fmt: skip
    assert text_vote(recs[:3]) == ("00:35", True)
    assert text_vote([recs[0], recs[1]]) == ("01:00", False)  # a tie: the first group
    assert text_vote([recs[3]]) == (None, False)
    row = per_problem([Problem("t/test/0", "q", "00:35", "test")], recs[:3], None)[0]
    assert (row["c"], row["majority_answer"], row["majority_correct"]) == (2, "00:35", True)


def test_decontamination_of_a_procedural_task_compares_whole_questions(tmp_path):
    """Every leg_counting question shares its template's first 18 words: a 13-word window
    would drop them all. Only a question equal to a test question is dropped."""
    from ekt.verification.filtering import filter_stage

    task = get_task("leg_counting")
    train = task.load("train")[:5]
    test_q = task.load("test")[0].question
    recs = [{"problem_id": p.id, "sample_idx": 0, "program": "def solution():\n    return 1\n",
             "status": "ok", "value": p.answer, "type": "int", "correct": True}
            for p in train]  # fmt: skip
    ex = tmp_path / "ex.jsonl"
    ex.write_text("".join(json.dumps(r) + "\n" for r in recs))
    summary = filter_stage(ex, tmp_path / "pairs.jsonl", task, against={"x": [test_q]})
    assert summary.pairs == 5 and summary.dropped_contaminated == 0
    summary = filter_stage(ex, tmp_path / "p2.jsonl", task, against={"x": [train[2].question]})
    assert summary.pairs == 4 and summary.dropped_contaminated == 1
    # symbols count: "5 - 3" and "5 * 3" share every word, but are other questions
    arith = get_task("basic_arithmetic")
    p = next(q for q in arith.load("train") if " - " in q.question)
    rec = {**recs[0], "problem_id": p.id, "value": p.answer}
    (tmp_path / "a.jsonl").write_text(json.dumps(rec) + "\n")
    other = p.question.replace(" - ", " * ", 1)
    summary = filter_stage(tmp_path / "a.jsonl", tmp_path / "p3.jsonl", arith,
                           against={"x": [other]})  # fmt: skip
    assert summary.pairs == 1 and summary.dropped_contaminated == 0


def test_a_data_task_file_can_select_exemplars_too(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        json.dumps({"q": "Ann has 2 cats and 3 dogs. How many pets?", "a": 5}) + "\n"
        + json.dumps({"q": "Bo has 4 pens and loses 1. How many pens?", "a": 3}) + "\n"
    )  # fmt: skip
    (tmp_path / "shots.jsonl").write_text(json.dumps({
        "question": "Bo has 4 pens and loses 1. How many pens?",
        "program": "def solution():\n    pens = 4 - 1\n    return pens\n",
    }) + "\n")  # fmt: skip
    spec = _task_file(tmp_path, "name: pets\ndata: '{split}.jsonl'\nquestion: q\nanswer: a\n"
                                "splits: {train: train}\nexemplars: shots.jsonl\n")  # fmt: skip
    task = get_task(str(spec))
    assert [p.id for p in task.load("train")] == ["pets/train/0"]  # the exemplar is left out
    prompt = load_format(task.prompt_format("function")).teacher("Q?")
    assert "pens = 4 - 1" in prompt and "Julie" not in prompt
    bad = _task_file(tmp_path, "name: pets\ndata: x.jsonl\nquestion: q\nanswer: a\n"
                               "exemplars: nowhere.jsonl\n")  # fmt: skip
    with pytest.raises(EktError, match="exemplars: no such file"):
        read_spec(bad)


def test_a_generated_task_takes_no_data_folder(tmp_path):
    with pytest.raises(EktError, match="reads no data folder"):
        get_task("leg_counting", str(tmp_path))


def test_a_carve_out_that_holds_is_said_once_per_process():
    """Procedural tasks deny programs the reasoning-gym package inside site-packages: the
    note that it was carved out comes with the first sandbox, not with every one."""
    import email
    import warnings

    from ekt.sandbox.config import detect_protections
    from ekt.sandbox.pool import Sandbox, SandboxConfig

    if not detect_protections().get("landlock"):
        pytest.skip("needs Landlock")
    denied = str(Path(email.__file__).resolve().parent)
    said = []
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Sandbox(SandboxConfig(workers=1, timeout=5, deny_read=[denied])):
                pass
        said.append(sum("granted entry by entry" in str(w.message) for w in caught))
    assert said == [1, 0]


def test_programs_cannot_read_a_generated_tasks_file_or_generator():
    """The task file (its seed) and reasoning-gym are denied; the file's folder is not, since a
    user's task file may sit beside the project's source and virtual environment."""
    from ekt.sandbox.config import detect_protections
    from ekt.sandbox.pool import Sandbox, SandboxConfig

    if not detect_protections().get("landlock"):
        pytest.skip("needs Landlock")
    task = get_task("leg_counting")
    paths = task.data_paths()
    assert paths[0] == task.spec.path and len(paths) == 2 and paths[1].endswith("reasoning_gym")
    sibling = str(Path(task.spec.path).parent / "gsm8k.yaml")
    cfg = SandboxConfig(workers=1, timeout=5, deny_read=paths)
    with Sandbox(cfg) as box:
        progs = [f"def solution():\n    return len(open({p!r}).read()) > 0\n"
                 for p in (task.spec.path, sibling)]  # fmt: skip
        progs.append("def solution():\n    import reasoning_gym\n    return 1\n")
        denied, sibling_ok, imported = list(box.run(progs))
    assert (denied.status, denied.type) == ("error", "PermissionError")
    assert (sibling_ok.status, sibling_ok.value) == ("ok", True)
    assert imported.status == "error"
