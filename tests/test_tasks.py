import json
import re

import pytest

from ekt.data.prompts import EXEMPLARS
from ekt.data.tasks import get_task, parse_gold
from ekt.errors import EktError


@pytest.mark.parametrize(
    "text,expected",
    [
        ("steps\n#### 72", 72),
        ("#### 1,234", 1234),
        ("#### 1,234,567", 1234567),
        ("#### -5", -5),
        ("#### 0.5", 0.5),
        ("#### -3.25", -3.25),
        ("a #### 1\n#### 2", 2),
        ("#### $18", 18),
        ("#### 7.", 7),
    ],
)
def test_parse_gold(text, expected):
    value = parse_gold(text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("text", ["no marker", "#### ", "#### twelve", "#### 1/2", "#### 3 4"])
def test_parse_gold_rejects(text):
    with pytest.raises(ValueError):
        parse_gold(text)


@pytest.mark.parametrize("split", ["train", "test"])
def test_gold_parses_on_every_gsm8k_line(data_dir, split):
    lines = (data_dir / f"{split}.jsonl").read_text().splitlines()
    problems = get_task("gsm8k", data_dir=str(data_dir)).load_file(split)
    assert len(problems) == len(lines)
    for i, (p, line) in enumerate(zip(problems, lines)):
        raw = json.loads(line)["answer"].rsplit("####", 1)[1].strip()
        # Independent check: digits of the raw text match the parsed number.
        assert float(re.sub(r"[,$]", "", raw)) == p.answer, (i, raw)
        assert p.id == f"gsm8k/{split}/{i}"


def test_split_sizes_dev_holdout_and_exemplars(data_dir):
    t = get_task("gsm8k", data_dir=str(data_dir))
    train, test = t.load("train"), t.load("test")
    n_ex = len(EXEMPLARS)
    assert len(train) == 7473 - n_ex
    assert len(test) == 1319
    ex_ids = {e.source_id for e in EXEMPLARS}
    assert not ex_ids & {p.id for p in train}
    held = get_task("gsm8k", data_dir=str(data_dir), dev_size=500)
    tr, dev = held.load("train"), held.load("dev")
    assert {p.split for p in dev} == {"dev"}
    assert not {p.id for p in tr} & {p.id for p in dev}
    assert len(tr) + len(dev) == 7473 - n_ex
    assert 495 <= len(dev) <= 500  # exemplars may fall into the dev sample
    # Stable: the same seed picks the same dev questions; another seed picks others.
    assert [p.id for p in get_task("gsm8k", data_dir=str(data_dir), dev_size=500).load("dev")] == [
        p.id for p in dev
    ]
    other = get_task("gsm8k", data_dir=str(data_dir), dev_size=500, dev_seed=1).load("dev")
    assert {p.id for p in other} != {p.id for p in dev}


def _write(tmp_path, train_lines, test_lines=('{"question": "q", "answer": "#### 1"}',)):
    (tmp_path / "train.jsonl").write_text("\n".join(train_lines) + "\n")
    (tmp_path / "test.jsonl").write_text("\n".join(test_lines) + "\n")
    return get_task("gsm8k", data_dir=str(tmp_path))


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"question": "q", "answer": "#### 1"', "malformed JSON"),
        ('{"question": "q"}', "missing field 'answer'"),
        ('{"answer": "#### 3"}', "missing field 'question'"),
        ('{"question": "q", "answer": "no marker"}', "unparsable gold answer"),
        ('{"question": "q", "answer": "#### many"}', "unparsable gold answer"),
        ('["q", "#### 1"]', "expected a JSON object"),
        ('{"question": 5, "answer": "#### 1"}', "field 'question' must be a string"),
    ],
)
def test_malformed_input_names_file_and_line(tmp_path, line, message):
    task = _write(tmp_path, ['{"question": "ok", "answer": "#### 2"}', line])
    with pytest.raises(EktError) as err:
        task.load("train")
    assert f"train.jsonl:2: {message}" in str(err.value)


def test_missing_dir_and_bad_split(tmp_path):
    with pytest.raises(EktError, match="does not exist"):
        get_task("gsm8k", data_dir=str(tmp_path / "nope")).load("train")
    with pytest.raises(EktError, match="unknown split"):
        get_task("gsm8k", data_dir=str(tmp_path)).load("validation")
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(EktError, match="empty"):
        get_task("gsm8k", data_dir=str(tmp_path)).load("train")
