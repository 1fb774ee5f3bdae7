"""The task registry and task files: every built-in task read from fixture files in its schema.

The fixtures under tests/fixtures/tasks/ were written for these tests in each dataset's real
layout (field names, answer formats, split names); no dataset rows are copied.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ekt.data.tasks import get_task, parse_number, read_spec, registry
from ekt.errors import EktError
from ekt.records import Execution

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"


def _ok(value, type_name=None) -> Execution:
    return Execution("ok", value, type_name or type(value).__name__)


def test_registry_lists_the_transfer_benchmarks():
    reg = registry()
    assert {"gsm8k", "svamp", "asdiv", "mawps", "gsm-hard", "math", "math-500"} <= set(reg)
    assert reg["gsm8k"].data == "openai/gsm8k" and reg["gsm8k"].answer_format == "gsm8k"
    assert reg["svamp"].question == "{{ Body | trim }} {{ Question | trim }}"
    assert reg["gsm-hard"].splits == {"test": "train"} and reg["gsm-hard"].derived_from == (
        "gsm8k",
    )
    assert reg["math"].answer_format == "math"


# (task, split, number of problems, first id, first question start, first gold)
CASES = [
    ("gsm8k", "train", 3, "gsm8k/train/0", "A baker fills", 22),
    ("gsm8k", "test", 2, "gsm8k/test/0", "Omar buys", 10),
    ("svamp", "test", 3, "svamp/test/chal-951", "A shelf has 35 books.", 21),
    ("asdiv", "test", 3, "asdiv/test/0", "Nina picked 23 apples", 42),
    ("mawps", "test", 2, "mawps/test/mawps-t-1", "Sara has 31", 7),
    ("gsm-hard", "test", 2, "gsm-hard/test/0", "A farm has 4312789", 25876734),
    ("math", "test", 3, "math/test/0", "What is the value", "\\frac{1}{2}"),
    ("math-500", "test", 2, "math-500/test/test/geometry/9001.json", "What is the area", "9\\pi"),
]


@pytest.mark.parametrize("name,split,count,first_id,start,gold", CASES)
def test_each_task_loads_from_local_files(name, split, count, first_id, start, gold):
    task = get_task(name, data_dir=str(FIXTURES / name))
    problems = task.load(split)
    assert len(problems) == count
    p = problems[0]
    assert p.id == first_id and p.question.startswith(start) and p.split == split
    assert p.answer == gold and type(p.answer) is type(gold)
    assert task.by_id({p.id})[p.id].question == p.question


def test_svamp_question_is_body_plus_question():
    p = get_task("svamp", data_dir=str(FIXTURES / "svamp")).load("test")[0]
    assert p.question == (
        "A shelf has 35 books. 14 of them are comics and the rest are novels . "
        "How many novels are on the shelf?"
    )


def test_asdiv_units_and_separators_are_read():
    golds = [p.answer for p in get_task("asdiv", data_dir=str(FIXTURES / "asdiv")).load("test")]
    assert golds == [42, 5.25, 48]


def test_numeric_tasks_grade_exactly():
    task = get_task("gsm-hard", data_dir=str(FIXTURES / "gsm-hard"))
    p = task.load("test")[0]
    assert task.grade(_ok(25876734), p) and task.grade(_ok(25876734.0), p)
    assert not task.grade(_ok(25876735), p) and not task.grade(_ok("25876734"), p)
    assert not task.grade(Execution("error", None, "ValueError"), p)


def test_math_task_grades_symbolically():
    task = get_task("math", data_dir=str(FIXTURES / "math"))
    half, root, count = task.load("test")
    assert root.answer == "4\\sqrt{3}"
    assert task.grade(_ok([1, 2], "Fraction"), half) and task.grade(_ok(0.5), half)
    assert task.grade(_ok("\\frac{2}{4}"), half) and not task.grade(_ok(0.25), half)
    assert task.grade(_ok("\\sqrt{48}"), root) and task.grade(_ok("4*sqrt(3)"), root)
    assert not task.grade(_ok("4\\sqrt{2}"), root)
    assert task.grade(_ok(4), count) and not task.grade(_ok(5), count)


def test_unknown_split_and_task_are_clear_errors():
    with pytest.raises(EktError, match="unknown split 'validation' for task svamp"):
        get_task("svamp", data_dir=str(FIXTURES / "svamp")).load("validation")
    with pytest.raises(EktError, match="unknown task 'gsm9k'.*gsm8k"):
        get_task("gsm9k")


def _task_file(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "mine.yaml"
    p.write_text(body)
    return p


def test_custom_task_file_with_template_ids_and_extra_fields(tmp_path):
    (tmp_path / "data").mkdir()
    rows = [
        {
            "uid": "a1",
            "setup": "Ann has 5 pens.",
            "ask": "She buys 3 more. How many?",
            "gold": "8",
            "note": "extra fields are ignored",
        },
        {
            "uid": "a2",
            "setup": "A box holds 1,000 nails.",
            "ask": "How many in 2 boxes?",
            "gold": "2,000",
        },
    ]
    (tmp_path / "data" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = _task_file(
        tmp_path,
        "name: pens\n"
        "data: data/{split}.jsonl\n"
        'question: "{{ setup }} {{ ask }}"\n'
        "answer: gold\n"
        "answer_format: number\n"
        "id: uid\n"
        "splits: {test: eval}\n",
    )
    task = get_task(str(spec))
    problems = task.load("test")
    assert [p.id for p in problems] == ["pens/test/a1", "pens/test/a2"]
    assert problems[0].question == "Ann has 5 pens. She buys 3 more. How many?"
    assert [p.answer for p in problems] == [8, 2000]
    assert read_spec(spec).path == str(spec)


def test_custom_task_reads_csv_and_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "test.csv").write_text('q,a\n"What is 6 times 7?",42\n"Half of 9?",4.5\n')
    spec = _task_file(
        tmp_path, "name: csvt\ndata: test.csv\nquestion: q\nanswer: a\nsplits: {test: test}\n"
    )
    assert [p.answer for p in get_task(str(spec)).load("test")] == [42, 4.5]
    pq.write_table(pa.table({"q": ["What is 2+2?"], "a": [4.0]}), tmp_path / "test.parquet")
    spec.write_text(
        "name: pqt\ndata: '{split}.parquet'\nquestion: q\nanswer: a\nsplits: {test: test}\n"
    )
    [p] = get_task(str(spec)).load("test")
    assert p.id == "pqt/test/0" and p.answer == 4


BAD_FILES = [
    ("name: x\ndata: d.jsonl\nquestion: q\n", r"mine\.yaml: missing key 'answer'"),
    (
        "name: x\ndata: d.jsonl\nquestion: q\nanswer: a\nanswer_fmt: number\n",
        r"mine\.yaml: unknown key\(s\) 'answer_fmt'",
    ),
    (
        "name: x\ndata: d.jsonl\nquestion: q\nanswer: a\nanswer_format: words\n",
        r"mine\.yaml: answer_format 'words' is not one of number, gsm8k, math",
    ),
    (
        "name: x\ndata: d.jsonl\nquestion: '{{ q '\nanswer: a\n",
        r"mine\.yaml: key 'question': bad Jinja template",
    ),
    ("name: [x\n", r"mine\.yaml:\d+: not valid YAML"),
]


@pytest.mark.parametrize("body,message", BAD_FILES)
def test_bad_task_files_name_file_and_key(tmp_path, body, message):
    with pytest.raises(EktError, match=message):
        get_task(str(_task_file(tmp_path, body)))


BAD_ROWS = [
    ({"q": "What?"}, r"test\.jsonl:2: missing field 'a'"),
    (
        {"q": "What?", "a": "many"},
        r"test\.jsonl:2: unparsable gold answer: .*'many'.* \(field 'a'\)",
    ),
    ({"q": 5, "a": "1"}, r"test\.jsonl:2: field 'q' must be a string"),
    ({"a": "1"}, r"test\.jsonl:2: missing field 'q'"),
]


@pytest.mark.parametrize("row,message", BAD_ROWS)
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    good = {"q": "What is 1+1?", "a": "2"}
    (tmp_path / "test.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    spec = _task_file(tmp_path, "name: x\ndata: '{split}.jsonl'\nquestion: q\nanswer: a\n")
    with pytest.raises(EktError, match=message):
        get_task(str(spec)).load("test")


def test_template_naming_a_missing_field(tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps({"Body": "b", "a": 1}) + "\n")
    spec = _task_file(
        tmp_path,
        "name: x\ndata: '{split}.jsonl'\nquestion: '{{ Body }} {{ Question }}'\nanswer: a\n",
    )
    with pytest.raises(
        EktError, match=r"test\.jsonl:1: question template: 'Question' is undefined"
    ):
        get_task(str(spec)).load("test")


def test_repeated_ids_are_refused(tmp_path):
    rows = [{"k": "1", "q": "a?", "a": 1}, {"k": "1", "q": "b?", "a": 2}]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = _task_file(tmp_path, "name: x\ndata: '{split}.jsonl'\nquestion: q\nanswer: a\nid: k\n")
    with pytest.raises(EktError, match=r"test\.jsonl:2: field 'k': id '1' repeats"):
        get_task(str(spec)).load("test")


@pytest.mark.parametrize(
    "text,value",
    [
        ("42", 42),
        ("-3", -3),
        ("1,234", 1234),
        ("$12.50", 12.5),
        ("9 (apples)", 9),
        ("50%", 50),
        ("2.", 2),
        (".5", 0.5),
        ("1e3", 1000.0),
    ],
)
def test_parse_number(text, value):
    got = parse_number(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["twelve", "1,2,3", "", "3/4", "--1", "1 2"])
def test_parse_number_rejects(text):
    with pytest.raises(ValueError):
        parse_number(text)


def test_ekt_tasks_lists_the_registry():
    out = subprocess.run(
        [sys.executable, "-m", "ekt", "tasks"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("gsm8k", "svamp", "asdiv", "mawps", "gsm-hard", "math", "math-500"):
        assert name in out
    assert "ChilleD/SVAMP" in out and "math" in out


def test_gsm8k_lines_may_carry_extra_fields(tmp_path):
    rows = [{"question": "What is 2 plus 3?", "answer": "#### 5", "id": 7, "source": "mine"}]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    [p] = get_task("gsm8k", data_dir=str(tmp_path)).load("test")
    assert p.id == "gsm8k/test/0" and p.answer == 5


def test_gsm8k_answers_may_be_plain_numbers(tmp_path):
    rows = [
        {"question": "What is 2 plus 3?", "answer": "5"},
        {"question": "Half of 5?", "answer": "2.5"},
    ]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.answer for p in get_task("gsm8k", data_dir=str(tmp_path)).load("test")] == [5, 2.5]
