"""Chat replies through verify and filter: raw ``text`` read as programs, failures counted.

The sandbox is the real one; the replies are written here for problems whose gold answer is
read from the GSM8K file, so the correct ones are correct for the right reason.
"""

from __future__ import annotations

import json

from ekt.data.tasks import Task, get_task
from ekt.verification.filtering import filter_stage
from ekt.verification.verify import verify


def _write(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _answer(task: Task, n: int):
    p = task.load("train")[n]
    gold = int(p.answer) if float(p.answer).is_integer() else p.answer
    return p, gold


def test_verify_reads_chat_text_and_counts_missing_programs(data_dir, tmp_path):
    task = get_task("gsm8k", data_dir=str(data_dir))
    (p0, g0), (p1, g1) = _answer(task, 0), _answer(task, 1)
    recs = [
        {  # fenced, prose, trailing print: correct
            "problem_id": p0.id, "sample_idx": 0, "n_tokens": 30,
            "text": f"Here you go:\n```python\ndef solution():\n    answer = {g0}\n"
                    "    return answer\n\nprint(solution())\n```\nIt prints the answer.",
        },
        {  # restated def line, no fence, __main__ guard: wrong
            "problem_id": p0.id, "sample_idx": 1, "n_tokens": 30,
            "text": f"def solution():\n    return {g0} + 1\n\nif __name__ == '__main__':\n"
                    "    print(solution())\n",
        },
        {  # prose only: no program
            "problem_id": p1.id, "sample_idx": 0, "n_tokens": 12,
            "text": f"The answer is {g1}.",
        },
        {  # an empty program written by an older ekt: no program
            "problem_id": p1.id, "sample_idx": 1, "n_tokens": 0, "program": "", "text": "",
        },
    ]  # fmt: skip
    _write(tmp_path / "samples.jsonl", recs)
    out = tmp_path / "ex.jsonl"
    s = verify(tmp_path / "samples.jsonl", out, task, progress=False)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in got] == ["ok", "ok", "no_program", "no_program"]
    assert [r["correct"] for r in got] == [True, False, False, False]
    assert got[0]["program"] == f"def solution():\n    answer = {g0}\n    return answer\n"
    assert got[2]["error"] == "no code in reply" and got[3]["error"] == "empty reply"
    assert got[0]["text"] == recs[0]["text"]  # the raw text is kept
    assert s.no_program == 2 and s.correct == 1
    assert "2 samples without a program (extraction failed)" in s.line()
    assert "most samples hold no program" not in s.line()

    f = filter_stage(out, tmp_path / "pairs.jsonl", task, decontaminate=None)
    assert f.pairs == 1 and f.no_program == 2
    assert "(2 without a program, 1 wrong), 1 correct" in f.line()


def test_a_stage_where_most_replies_hold_no_program_says_so(data_dir, tmp_path):
    task = get_task("gsm8k", data_dir=str(data_dir))
    p, _ = _answer(task, 2)
    recs = [
        {"problem_id": p.id, "sample_idx": i, "text": t}
        for i, t in enumerate(["I think it is 5.", "Let me compute: 3 + 2 = 5.", "5"])
    ]
    _write(tmp_path / "s.jsonl", recs)
    s = verify(tmp_path / "s.jsonl", tmp_path / "ex.jsonl", task, progress=False)
    assert s.no_program == 3
    assert "most samples hold no program" in s.line()
    f = filter_stage(tmp_path / "ex.jsonl", tmp_path / "pairs.jsonl", task, decontaminate=None)
    assert "most samples held no program" in f.line()


def test_another_entry_point_is_run_by_its_own_name(data_dir, tmp_path):
    task = get_task("gsm8k", data_dir=str(data_dir))
    p, gold = _answer(task, 3)
    text = (
        "```python\ndef simple_math_problem() -> float:\n    \"\"\"\n    A question.\n"
        f"    \"\"\"\n    result = {gold}\n    return result\n```"
    )
    _write(tmp_path / "s.jsonl", [{"problem_id": p.id, "sample_idx": 0, "text": text}])
    s = verify(tmp_path / "s.jsonl", tmp_path / "ex.jsonl", task, progress=False,
               prompt_format="tinygsm")  # fmt: skip
    rec = json.loads((tmp_path / "ex.jsonl").read_text())
    assert rec["correct"] is True and s.correct == 1
    assert rec["program"].startswith("def simple_math_problem() -> float:")
    assert "solution = " not in rec["program"]  # the alias is only how the sandbox calls it
