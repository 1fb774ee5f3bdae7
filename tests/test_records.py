import pytest

from ekt.errors import EktError
from ekt.records import Completion, JsonlWriter, read_jsonl, read_records


def test_writer_repairs_torn_tail_and_reader_skips_it(tmp_path):
    path = tmp_path / "s.jsonl"
    with JsonlWriter(path) as w:
        w.write(Completion("p/0", 0, "x", 1))
        w.write(Completion("p/0", 1, "y", 2))
    with open(path, "a") as fh:
        fh.write('{"problem_id": "p/0", "sample_')  # a writer killed mid-line
    assert [o["sample_idx"] for _, o in read_jsonl(path)] == [0, 1]
    with JsonlWriter(path) as w:
        w.write(Completion("p/0", 2, "z", 3))
    assert [c.sample_idx for c in read_records(path, Completion)] == [0, 1, 2]


def test_reader_names_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(EktError, match=r"bad.jsonl:2: malformed JSON"):
        list(read_jsonl(path))
    path.write_text('{"problem_id": "p", "sample_idx": 0, "text": "t"}\n')
    with pytest.raises(EktError, match=r"bad.jsonl:1: missing field\(s\) n_tokens"):
        read_records(path, Completion)
    path.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(EktError, match="not valid UTF-8"):
        list(read_jsonl(path))
