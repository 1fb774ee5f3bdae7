"""Fault injection: a teacher server that misbehaves (issue 25), and one that is down.

The server is ``fakeopenai.FakeOpenAI``, a real HTTP server on loopback. Each case asserts
the exact outcome: the (problem, sample, text) records equal to an uninterrupted run, the
retries counted, the error one line; and its wall time (at most 30 s, the longest printed).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fakeopenai import FAULTS, STALLS, FakeOpenAI, _pytest_fixtures

from ekt.errors import EktError
from ekt.generation.backends import BackendConfig
from ekt.generation.backends.openai_compat import OpenAISampler, retry_after
from ekt.generation.config import SamplingParams

bounded_case, longest_case = _pytest_fixtures()

REQUESTS = [(f"toy/{i}", f"Question {i}?\ndef solution():\n") for i in range(3)]
PARAMS = SamplingParams(n=2, temperature=1.0, max_new_tokens=16, seed=7)
TIMEOUT = 1.5  # the whole-request deadline for the cases that stall


def _sampler(url: str, progress: bool = False, **backend) -> OpenAISampler:
    """A sampler on the fake server at ``url``; ``backend``: BackendConfig fields."""
    backend = {"concurrency": 2, "max_retries": 3, "request_timeout": TIMEOUT, **backend}
    cfg = BackendConfig("openai", base_url=url, **backend)
    return OpenAISampler("fake", cfg, backoff=0.02, max_backoff=0.3, progress=progress)


def _records(out) -> set[tuple[str, int, str]]:
    got = [(c.problem_id, c.sample_idx, c.text) for c in out]
    assert len(got) == len(set(got)), "a sample was yielded twice"
    return set(got)


@pytest.fixture(scope="module")
def baseline() -> set[tuple[str, int, str]]:
    with FakeOpenAI() as srv:
        got = _records(_sampler(srv.url).sample(REQUESTS, PARAMS))
    assert len(got) == len(REQUESTS) * PARAMS.n
    return got


@pytest.mark.parametrize("fault", sorted(set(FAULTS) - {"http_400"}))
def test_a_bad_reply_is_retried_and_nothing_is_lost(fault, baseline):
    """Two faulty replies, then good ones: the same records as without faults."""
    with FakeOpenAI([fault, fault]) as srv:
        sampler = _sampler(srv.url)
        t0 = time.monotonic()
        got = _records(sampler.sample(REQUESTS, PARAMS))
        took = time.monotonic() - t0
        assert srv.faults_sent == [fault, fault]
    assert got == baseline
    assert sampler.retries == 2
    # Retry-After of any size waits at most max_backoff; a stall at most the deadline
    assert took < (2 * TIMEOUT + 2 if fault in STALLS else 2.0), took


@pytest.mark.parametrize(
    "fault", sorted(f for f in FAULTS if f not in STALLS and not f.startswith("retry_after")
                    and f not in ("http_400", "status_429", "status_500", "status_503"))
)  # fmt: skip
def test_a_reply_bad_every_time_is_one_line_with_a_quote(fault):
    """Retries spent: one EktError line that names the request and quotes the reply."""
    with FakeOpenAI([fault] * 10) as srv:
        sampler = _sampler(srv.url, concurrency=1, max_retries=2)
        with pytest.raises(EktError) as exc:
            list(sampler.sample(REQUESTS[:1], SamplingParams(n=1, seed=1)))
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 700, msg
    assert "giving up on toy/0 after 3 attempts" in msg, msg
    assert srv.url in msg


def test_quotes_are_short_and_show_the_reply():
    with FakeOpenAI(["text_is_int"] * 10) as srv:
        with pytest.raises(EktError, match=r"choice 0's text is not a string: '7'"):
            list(_sampler(srv.url, max_retries=0).sample(REQUESTS[:1], SamplingParams(n=1)))
    with FakeOpenAI(["deep_json"]) as srv:
        deep = r"nested too deeply to parse: '\{\"choices\": \[\[\["
        with pytest.raises(EktError, match=deep) as e:
            list(_sampler(srv.url, max_retries=0).sample(REQUESTS[:1], SamplingParams(n=1)))
        assert len(str(e.value)) < 400


@pytest.mark.parametrize(
    ("value", "want"),
    [("2", 2.0), ("0", 0.0), ("1.5", 1.5), ("inf", None), ("-inf", None), ("nan", None),
     ("-5", None), ("soon", None), ("", None), (None, None), ("1e400", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)  # fmt: skip
def test_retry_after_values(value, want):
    assert retry_after(value) == want


def test_retry_after_date_in_the_future_is_seconds():
    import email.utils

    got = retry_after(email.utils.formatdate(1000.0 + 30, usegmt=True), now=1000.0)
    assert got == pytest.approx(30.0, abs=1.0)


def test_retry_after_huge_is_capped_at_max_backoff(baseline):
    """Retry-After: 100000 and inf wait max_backoff (here 0.3 s), not a day or a traceback."""
    with FakeOpenAI(["retry_after_huge", "retry_after_inf", "retry_after_date_far"]) as srv:
        sampler = _sampler(srv.url, concurrency=1)
        t0 = time.monotonic()
        got = _records(sampler.sample(REQUESTS, PARAMS))
        took = time.monotonic() - t0
    assert got == baseline and sampler.retries == 3
    assert took < 3 * 0.3 + 1.5, took


def test_a_trickled_body_meets_the_whole_request_deadline():
    """1 byte/s: the per-read timeout never fires; the request's deadline does."""
    with FakeOpenAI(["trickle"] * 10) as srv:
        sampler = _sampler(srv.url, concurrency=1, max_retries=0, request_timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(EktError, match=r"no whole reply within 1s"):
            list(sampler.sample(REQUESTS[:1], SamplingParams(n=1)))
        assert time.monotonic() - t0 < 3.0


def _http_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ekt-http")]


def test_a_fatal_error_cancels_the_requests_in_flight():
    """Two requests hang, a third gets HTTP 400: the error at once, and the hung requests'
    threads end within moments, not at the 600 s default timeout."""
    others = set(_http_threads())  # an earlier test's, if its generator awaits collection
    with FakeOpenAI(["hang", "hang", "http_400"]) as srv:
        sampler = _sampler(srv.url, concurrency=3, request_timeout=600.0)
        t0 = time.monotonic()
        with pytest.raises(EktError, match="HTTP 400"):
            list(sampler.sample(REQUESTS, SamplingParams(n=1)))
        took = time.monotonic() - t0
        deadline = time.monotonic() + 5
        while set(_http_threads()) - others and time.monotonic() < deadline:
            time.sleep(0.05)
        left = set(_http_threads()) - others
    assert took < 3.0, took
    assert not left, f"{len(left)} request threads still running"


DRIVER = """
import sys, time
from ekt.errors import EktError
from ekt.generation.backends import BackendConfig
from ekt.generation.backends.openai_compat import OpenAISampler
from ekt.generation.config import SamplingParams
backend = BackendConfig("openai", base_url=sys.argv[1], concurrency=3, request_timeout=600)
s = OpenAISampler("fake", backend, progress=False)
t0 = time.monotonic()
try:
    list(s.sample([(f"p/{i}", f"q{i}") for i in range(3)], SamplingParams(n=1)))
except EktError as e:
    print(f"error after {time.monotonic() - t0:.2f}s: {e}", flush=True)
    sys.exit(2)
"""


def test_a_fatal_error_ends_the_process_within_seconds(tmp_path):
    """The same in a process of its own: it exits (code 2, one line) within a few seconds
    of the error, though two of its requests still hang on the server."""
    with FakeOpenAI(["hang", "hang", "http_400"]) as srv:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", DRIVER, srv.url], env=env,
                              capture_output=True, text=True, timeout=25)  # fmt: skip
        took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "HTTP 400" in lines[0], proc.stdout
    error_at = float(lines[0].split()[2].rstrip("s:"))
    assert error_at < 3.0 and took - error_at < 8.0, (error_at, took)  # start-up included


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nobody listens there


def test_a_down_server_is_one_line_within_5s():
    url = f"http://127.0.0.1:{_dead_port()}/v1"
    sampler = _sampler(url, request_timeout=600.0, max_retries=8)
    t0 = time.monotonic()
    with pytest.raises(EktError) as exc:
        list(sampler.sample(REQUESTS, PARAMS))
    took = time.monotonic() - t0
    msg = str(exc.value)
    print(f"down server detected in {took:.3f}s: {msg}")
    assert took < 5.0, took
    assert "\n" not in msg and f"{url}/models" in msg and "does not answer" in msg
    assert sampler.retries == 0


def test_a_server_that_never_answers_is_found_within_5s():
    """A listening socket that never replies: the health check's own deadline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        t0 = time.monotonic()
        with pytest.raises(EktError, match="does not answer"):
            list(_sampler(url, request_timeout=600.0).sample(REQUESTS, PARAMS))
        assert time.monotonic() - t0 < 5.5


def test_model_missing_from_the_list_is_a_note(capsys, baseline):
    with FakeOpenAI(model="other-model") as srv:
        got = _records(_sampler(srv.url).sample(REQUESTS, PARAMS))
    assert got == baseline
    assert "lists other-model, not 'fake'" in capsys.readouterr().err


def test_retries_and_progress_are_shown_when_not_a_terminal(capsys, baseline, monkeypatch):
    """Not a terminal: no \\r frames; each retry a line as it happens, and a closing line."""
    import ekt.generation.backends.openai_compat as oc

    monkeypatch.setattr(oc, "PROGRESS_EVERY", 0.0)
    with FakeOpenAI(["status_503", "zero_choices"]) as srv:
        sampler = _sampler(srv.url, progress=True)
        got = _records(sampler.sample(REQUESTS, PARAMS))
    err = capsys.readouterr().err
    assert got == baseline
    assert "\r" not in err and "\x1b" not in err
    retries = [x for x in err.splitlines() if x.startswith("retry ")]
    assert len(retries) == 2 and any("HTTP 503" in x for x in retries), err
    assert any("no choices" in x for x in retries), err
    progress = [x for x in err.splitlines() if x.startswith("sample: ")]
    assert progress and progress[-1].startswith("sample: 6/6 samples, 30 tokens"), err
    assert "tok/s" in progress[-1]


def test_generate_through_a_faulty_server_writes_what_a_clean_one_does(tmp_path):
    """The generate stage end to end: every fault of the list once, then the records on
    disk equal an uninterrupted run's, none lost, none twice."""
    from ekt.generation.generate import GenerateSettings, generate, read_completions
    from ekt.records import Problem

    problems = [Problem(f"toy/{i}", f"Q{i}?", 0.0, "toy") for i in range(4)]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=16, seed=3)

    def run(faults, out):
        with FakeOpenAI(faults) as srv:
            s = _sampler(srv.url, max_retries=len(FAULTS) + 1, concurrency=3)
            generate(s, problems, out, params, GenerateSettings(prompt="student", shard_size=3))
        return [(c.problem_id, c.sample_idx, c.text) for c in read_completions(out)]

    clean = run([], tmp_path / "clean")
    faults = [f for f in sorted(FAULTS) if f not in STALLS and f != "http_400"]
    faulty = run(faults, tmp_path / "faulty")
    assert len(clean) == 12 and len(set(faulty)) == len(faulty)
    assert sorted(faulty) == sorted(clean)
    print(f"generate through {len(faults)} faults: {len(faulty)} records compared, "
          "0 lost, 0 duplicated")


def test_chat_replies_are_checked_too(tmp_path):
    chat = [("toy/0", [{"role": "user", "content": "hi"}])]
    for fault, want in [
        (lambda d: d["choices"][0].__setitem__("message", "x"), "no message object"),
        (lambda d: d["choices"][0]["message"].__setitem__("content", 5), "message.content"),
    ]:
        with FakeOpenAI(api="chat") as srv:
            import fakeopenai

            fakeopenai.FAULTS["_chat_case"] = fakeopenai._edit(fault)
            srv.faults.extend(["_chat_case"] * 5)
            with pytest.raises(EktError, match=want):
                list(_sampler(srv.url, api="chat", max_retries=1).sample(chat, SamplingParams(n=1)))
        fakeopenai.FAULTS.pop("_chat_case")
    with FakeOpenAI(api="chat") as srv:  # content null: a reply without a program, kept
        got = list(_sampler(srv.url, api="chat").sample(chat, SamplingParams(n=1)))
    assert json.loads(json.dumps(got[0].text)) == got[0].text and got[0].text.strip()


@pytest.fixture(scope="module")
def cli_main():
    """``ekt.cli.main``, imported before the cases' clocks start (torch and all, ~10 s here)."""
    from ekt.cli import main

    return main


def test_cli_down_server_is_one_line_within_5s(tmp_path, capsys, cli_main):
    """`ekt generate --backend openai` against a port nobody listens on: exit 2 and one line
    naming the URL, within 5 s of the command starting its work."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    (data / "test.jsonl").write_text('{"question": "2+2?", "answer": "#### 4"}\n')
    url = f"http://127.0.0.1:{_dead_port()}/v1"
    argv = ["generate", "--model", "fake", "--out", str(tmp_path / "gen"), "--data-dir",
            str(data), "--n", "2", "--backend", "openai", "--base-url", url]  # fmt: skip
    capsys.readouterr()
    t0 = time.monotonic()
    code = cli_main(argv)
    took = time.monotonic() - t0
    err = capsys.readouterr().err.strip().splitlines()
    print(f"ekt generate: down server reported in {took:.2f}s")
    assert code == 2
    assert len(err) == 1 and err[0].startswith("ekt generate: error: ") and url in err[0], err
    assert took < 5.0, took


def test_cli_second_writer_is_one_line_naming_the_holder(tmp_path, capsys, cli_main):
    """Another process holds the output's lock: `ekt verify` on the same --out exits 2 at
    once with one line naming that pid and the path; once it is gone, nothing blocks."""
    out = tmp_path / "executions.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    hold = ("import sys, time\nfrom ekt.locks import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(20)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], env=env,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        programs = tmp_path / "p.jsonl"
        programs.write_text('{"problem_id": "gsm8k/train/0", "program": "def solution():\\n'
                            '    return 1\\n"}\n')  # fmt: skip
        capsys.readouterr()
        t0 = time.monotonic()
        code = cli_main(["verify", "--programs", str(programs), "--out", str(out)])
        took = time.monotonic() - t0
        err = capsys.readouterr().err.strip().splitlines()
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    assert code == 2 and took < 2.0, (code, took)
    assert len(err) == 1 and f"(pid {holder.pid}" in err[0] and str(out) in err[0], err
    from ekt.locks import output_lock

    with output_lock(out):  # the dead holder's lock file is still there; it blocks nothing
        pass
