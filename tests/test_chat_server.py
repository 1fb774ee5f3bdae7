"""A chat teacher end to end: the embedded SmolLM2-135M-Instruct behind a real
``transformers serve`` on loopback, ``ekt generate`` with a chat prompt format (a user's
own YAML and exemplar file) through the chat API, then ``ekt verify``.

Nothing is mocked: the model, the server, the HTTP client, the extraction and the sandbox
are the real ones. The share of replies read as programs on 64 replies is measured by
``benchmarks/chat_teacher.py`` (too slow for a test on two CPU cores).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_openai_backend import SERVE_SKIP, Server

pytestmark = [pytest.mark.slow, SERVE_SKIP,  # starts real servers: `make test` only
              pytest.mark.xdist_group("chat_server")]  # one server, one worker

# A prompt format of the user's own, in a folder of its own, with one exemplar written here.
FORMAT = """\
name: my-chat
style: chat
entry_point: solution
exemplars: shots.jsonl
instruction: >-
  You are a Python programmer. For each math problem, reply with only a Python code block
  defining solution(), which returns the answer. No explanations.
templates:
  system: "{{ instruction }}"
  user: "Problem: {{ question }}"
  assistant: |-
    ```python
    {{ program }}
    ```
"""
SHOTS = [
    {
        "question": "A box holds 6 eggs. How many eggs are in 4 boxes?",
        "program": "def solution():\n    eggs_per_box = 6\n    boxes = 4\n"
        "    return eggs_per_box * boxes\n",
    },
    {
        "question": "Sam had 20 stickers and gave away 7. How many are left?",
        "program": "def solution():\n    stickers = 20\n    given = 7\n"
        "    return stickers - given\n",
    },
    {
        "question": "A pen costs $3. How much do 5 pens cost?",
        "program": "def solution():\n    price = 3\n    pens = 5\n    return price * pens\n",
    },
]
CODE = re.compile(r"```|^[ \t]*def[ \t]+\w+[ \t]*\(", re.M)


@pytest.fixture(scope="module")
def smollm2_server(tmp_path_factory):
    from ekt.models import resolve_model

    folder = Path(resolve_model("smollm2-135m"))
    srv = Server(folder, tmp_path_factory.mktemp("serve-smollm2") / "serve.log")
    srv.start(timeout=300)
    yield srv, folder
    srv.kill()


def test_chat_teacher_generate_and_verify_end_to_end(smollm2_server, data_dir, tmp_path):
    from ekt.cli import main
    from ekt.generation.generate import read_completions

    srv, folder = smollm2_server
    fmt_dir = tmp_path / "fmt"
    fmt_dir.mkdir()
    (fmt_dir / "my_chat.yaml").write_text(FORMAT)
    (fmt_dir / "shots.jsonl").write_text("".join(json.dumps(s) + "\n" for s in SHOTS))
    fmt = str(fmt_dir / "my_chat.yaml")
    out = tmp_path / "gen"
    argv = [
        "generate", "--model", "smollm2-135m", "--data-dir", str(data_dir), "--split", "train",
        "--limit", "2", "--n", "2", "--temperature", "0", "--max-new-tokens", "120",
        "--prompt-format", fmt, "--backend", "openai", "--api", "chat",
        "--base-url", srv.base_url, "--served-model", str(folder), "--concurrency", "2",
        "--price-input-per-mtok", "0.5", "--price-output-per-mtok", "1.5", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    records = read_completions(out)
    assert len(records) == 4
    assert all(c.prompt_tokens > 0 and c.n_tokens > 0 for c in records)  # usage recorded
    with_code = [c for c in records if CODE.search(c.text)]
    assert with_code, "SmolLM2-Instruct wrote no code at all: " + repr(records[0].text[:300])
    # greedy: one request per question, its reply reported for both samples
    by_problem: dict[str, set[str]] = {}
    for c in records:
        by_problem.setdefault(c.problem_id, set()).add(c.text)
    assert all(len(texts) == 1 for texts in by_problem.values())
    for c in records:  # a program, or the reason there is none; the raw reply is kept
        assert bool(c.program) != bool(c.extract_error)
        assert c.text and not c.program.startswith("```")
    assert all(c.program for c in with_code)
    settings = json.loads((out / "generate.json").read_text())
    assert settings["prompt_format"] == fmt and settings["sampling"]["stop"] == []

    ex = tmp_path / "ex.jsonl"
    verify = ["verify", "--programs", str(out), "--out", str(ex), "--data-dir", str(data_dir)]
    assert main(verify + ["--prompt-format", fmt]) == 0
    done = [json.loads(x) for x in ex.read_text().splitlines()]
    assert len(done) == 4
    for r in done:
        assert r["status"] in ("ok", "error", "timeout", "killed", "no_program")
        assert (r["status"] == "no_program") == (not r["program"])

    # Records holding only the raw chat text: `ekt verify` extracts the same programs itself.
    raw = tmp_path / "raw.jsonl"
    raw.write_text(
        "".join(
            json.dumps({"problem_id": c.problem_id, "sample_idx": c.sample_idx, "text": c.text})
            + "\n"
            for c in records
        )
    )
    ex2 = tmp_path / "ex2.jsonl"
    assert main(["verify", "--programs", str(raw), "--out", str(ex2),
                 "--data-dir", str(data_dir)]) == 0  # fmt: skip
    again = {(r["problem_id"], r["sample_idx"]): r for r in map(json.loads, ex2.open())}
    for r in done:
        twin = again[(r["problem_id"], r["sample_idx"])]
        assert (twin["program"], twin["status"], twin["correct"]) == (
            r["program"], r["status"], r["correct"],
        )  # fmt: skip


def test_generate_summary_reports_tokens_cost_and_missing_programs(
    smollm2_server, data_dir, tmp_path, capsys
):
    """The stage line: prompt tokens, the cost from the price table, replies without code."""
    from ekt.cli import main

    srv, folder = smollm2_server
    argv = [
        "generate", "--model", "smollm2-135m", "--data-dir", str(data_dir), "--split", "train",
        "--limit", "1", "--n", "1", "--temperature", "0", "--max-new-tokens", "40",
        "--prompt-format", "chat", "--backend", "openai", "--api", "chat",
        "--base-url", srv.base_url, "--served-model", str(folder),
        "--price-input-per-mtok", "0.5", "--price-output-per-mtok", "1.5",
        "--out", str(tmp_path / "g"),
    ]  # fmt: skip
    assert main(argv) == 0
    line = capsys.readouterr().out
    m = re.search(r"(\d+) new tokens.*; (\d+) prompt tokens; cost \$([\d.]+); (\d+) without", line)
    assert m, line
    completion, prompt, cost = int(m.group(1)), int(m.group(2)), float(m.group(3))
    assert prompt > 100 and completion > 0
    assert cost == pytest.approx(round(prompt * 0.5e-6 + completion * 1.5e-6, 4), abs=1e-4)
