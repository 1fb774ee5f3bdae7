"""OpenAISampler against a real OpenAI-compatible server: ``transformers serve`` on loopback.

The server runs the tiny test model (saved with amplified residual branches so
that its continuations vary, and with a trivial chat template for the chat
endpoint). Nothing is mocked: requests, retries and the server's answers are
real. One test puts a small fault-injecting proxy (429, then 500) in front of
the real server; another SIGKILLs the server mid-job, restarts it, and checks
that the written shards hold every sample exactly once.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from conftest import TOY_QUESTIONS

from ekt.data.prompts import STOP_STRINGS, student_prompt
from ekt.generation.config import SamplingParams

SERVE_MISSING = [m for m in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(m) is None]
SERVE_SKIP = pytest.mark.skipif(
    bool(SERVE_MISSING),
    reason=f"`transformers serve` needs {', '.join(SERVE_MISSING)}: "
    "pip install 'ekt[serve]' (make test installs it)",
)
pytestmark = [pytest.mark.slow, SERVE_SKIP,  # starts real servers: `make test` only
              pytest.mark.xdist_group("openai_backend")]  # one server, one worker

QUESTIONS = TOY_QUESTIONS
REQUESTS = [(f"toy/{i}", student_prompt(q)) for i, q in enumerate(QUESTIONS)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``transformers serve MODEL`` on 127.0.0.1; start(), kill(), start() again."""

    def __init__(self, model_dir: Path, log: Path):
        self.model_dir = model_dir
        self.port = _free_port()
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 180.0) -> None:
        from ekt.generation.backends.openai_compat import wait_for_server

        exe = Path(sys.executable).with_name("transformers")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        cmd = [str(exe), "serve", str(self.model_dir), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--device", "cpu", "--log-level", "warning"]
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for_server(self.base_url, timeout=timeout)
        except Exception:
            self.kill()
            raise RuntimeError(f"server did not start:\n{self.log.read_text()[-2000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def served_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """Amplified so continuations vary; a trivial chat template for the chat endpoint."""
    from conftest import amplified_model

    out = tmp_path_factory.mktemp("served") / "model"
    return amplified_model(
        tiny_model_dir, out, 40, "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )


@pytest.fixture(scope="module")
def server(served_model_dir, tmp_path_factory):
    srv = Server(served_model_dir, tmp_path_factory.mktemp("serve") / "serve.log")
    srv.start()
    yield srv
    srv.kill()


def _sampler(srv_url: str, model: Path, **backend):
    """A sampler of ``model`` on the server at ``srv_url``; ``backend``: BackendConfig fields."""
    from ekt.generation.backends import BackendConfig
    from ekt.generation.backends.openai_compat import OpenAISampler

    cfg = BackendConfig("openai", base_url=srv_url, **{"concurrency": 4, **backend})
    return OpenAISampler(str(model), cfg, backoff=0.2, max_backoff=2.0, progress=False)


def _check_complete(out, requests, n):
    keys = Counter((c.problem_id, c.sample_idx) for c in out)
    assert set(keys) == {(pid, i) for pid, _ in requests for i in range(n)}
    assert max(keys.values()) == 1, "a sample was written twice"


def test_completions_endpoint(server, served_model_dir):
    sampler = _sampler(server.base_url, served_model_dir, n_per_request=0)  # all n at once
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=1)
    out = list(sampler.sample(REQUESTS[:4], params))
    _check_complete(out, REQUESTS[:4], 3)
    # transformers serve ignores `n`: the sampler learns it and asks one sample at a time.
    assert sampler.n_supported is False
    assert all(1 <= c.n_tokens <= 12 for c in out)
    assert not any(s in c.text for c in out for s in STOP_STRINGS)
    assert len({c.text for c in out}) > 1


def test_greedy_matches_local_sampler(server, served_model_dir):
    """The server's greedy text equals TransformersSampler's on the same weights."""
    from ekt.generation.backends.torch_sampler import TransformersSampler
    from ekt.models import load_model

    params = SamplingParams(n=2, temperature=0, max_new_tokens=16, stop=())
    # The prompt as it is (trim_prompt=False): the same tokens as the unhealed local sampler.
    remote = _sampler(server.base_url, served_model_dir, trim_prompt=False)
    remote = list(remote.sample(REQUESTS[:3], params))
    _check_complete(remote, REQUESTS[:3], 2)
    model, tok = load_model(str(served_model_dir), device="cpu")
    local = TransformersSampler(model, tok, progress=False, heal_prompt=False)
    want = {(c.problem_id, c.sample_idx): c.text for c in local.sample(REQUESTS[:3], params)}
    assert {(c.problem_id, c.sample_idx): c.text for c in remote} == want


def test_trimmed_prompt_is_sent_without_its_newline(server, served_model_dir):
    """trim_prompt (the default): the server continues the prompt without its trailing
    newline; a reply that starts with that newline loses it, so the record continues the
    prompt as ekt wrote it. Checked against the local sampler fed the trimmed prompt."""
    from ekt.generation.backends.torch_sampler import TransformersSampler
    from ekt.models import load_model

    params = SamplingParams(n=1, temperature=0, max_new_tokens=16, stop=())
    sampler = _sampler(server.base_url, served_model_dir)
    remote = {c.problem_id: c for c in sampler.sample(REQUESTS, params)}
    model, tok = load_model(str(served_model_dir), device="cpu")
    local = TransformersSampler(model, tok, progress=False, heal_prompt=False)
    trimmed = [(pid, prompt.rstrip("\n")) for pid, prompt in REQUESTS]
    assert all(p != q for (_, p), (_, q) in zip(REQUESTS, trimmed))
    for c in local.sample(trimmed, params):
        want = c.text[1:] if c.text.startswith("\n") else c.text
        assert remote[c.problem_id].text == want
        assert remote[c.problem_id].n_tokens == c.n_tokens


def test_chat_endpoint(server, served_model_dir):
    sampler = _sampler(server.base_url, served_model_dir, api="chat")
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=2)
    out = list(sampler.sample(REQUESTS[:2], params))
    _check_complete(out, REQUESTS[:2], 2)
    assert all(c.n_tokens >= 1 for c in out)


class _FlakyProxy:
    """Forwards to the real server, but answers 429 and then 500 to the first requests."""

    def __init__(self, target: str, faults: list[int]):
        faults_left = list(faults)
        lock = threading.Lock()
        self.seen: list[int] = []

        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    fault = faults_left.pop(0) if faults_left else None
                if fault is not None:
                    seen.append(fault)
                    self.send_response(fault)
                    if fault == 429:
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                req = urllib.request.Request(
                    target + self.path[len("/v1") :],
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=120) as resp:
                    data = resp.read()
                seen.append(200)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_retries_429_and_5xx(server, served_model_dir):
    proxy = _FlakyProxy(server.base_url, [429, 500, 503, 429])
    try:
        sampler = _sampler(proxy.url, served_model_dir, concurrency=2)
        params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=3)
        out = list(sampler.sample(REQUESTS[:3], params))
    finally:
        proxy.close()
    _check_complete(out, REQUESTS[:3], 2)
    assert sampler.retries == 4
    assert Counter(proxy.seen)[200] >= 6


def test_fatal_4xx_stops_with_the_message(server, served_model_dir):
    from ekt.errors import EktError

    sampler = _sampler(server.base_url + "/nowhere", served_model_dir, max_retries=2)
    with pytest.raises(EktError, match="HTTP 404"):
        list(sampler.sample(REQUESTS[:1], SamplingParams(n=1, max_new_tokens=4)))


def test_server_killed_mid_job_output_complete(served_model_dir, tmp_path):
    """SIGKILL the server while requests are in flight, restart it: shards complete, no dups."""
    from ekt.generation.generate import GenerateSettings, generate, read_completions
    from ekt.records import Problem

    srv = Server(served_model_dir, tmp_path / "serve.log")
    srv.start()
    inner = _sampler(srv.base_url, served_model_dir, concurrency=4, max_retries=60)
    events: list[str] = []

    class KillMidway:
        """Passes completions through; after the 5th, kills the server and restarts it."""

        def sample(self, requests, params):
            restarter = None
            for i, c in enumerate(inner.sample(requests, params), start=1):
                if i == 5:
                    srv.kill()
                    events.append("killed")

                    def restart():
                        time.sleep(1.0)
                        srv.start()
                        events.append("restarted")

                    restarter = threading.Thread(target=restart)
                    restarter.start()
                yield c
            if restarter is not None:
                restarter.join()

    problems = [Problem(pid, q, 0.0, "toy") for (pid, _), q in zip(REQUESTS, QUESTIONS)]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=24, seed=4)
    try:
        summary = generate(
            KillMidway(),
            problems,
            tmp_path / "out",
            params,
            GenerateSettings(prompt="student"),
        )
    finally:
        srv.kill()
    assert events == ["killed", "restarted"]
    assert inner.retries > 0, "the kill went unnoticed"
    records = read_completions(tmp_path / "out")
    _check_complete(records, REQUESTS, 4)
    assert summary.samples == len(records) == len(REQUESTS) * 4
    lines = [json.loads(x) for x in (tmp_path / "out/samples/shard-00000.jsonl").open()]
    assert len(lines) == len(records)


def test_cli_generate_and_evaluate_through_the_server(server, served_model_dir, data_dir, tmp_path):
    """`ekt generate/evaluate --backend openai` reach the server and write the usual records."""
    from ekt.cli import main
    from ekt.generation.generate import read_completions

    common = ["--data-dir", str(data_dir), "--limit", "2", "--max-new-tokens", "8"]
    backend = ["--backend", "openai", "--base-url", server.base_url, "--concurrency", "2"]
    out = tmp_path / "gen"
    argv = ["generate", "--model", str(served_model_dir), "--out", str(out), "--n", "3"]
    assert main(argv + common + backend) == 0
    records = read_completions(out)
    assert len(records) == 6 and {c.sample_idx for c in records} == {0, 1, 2}
    manifest = json.loads(next(out.glob("*.json")).read_text())
    assert "openai:" in json.dumps(manifest)  # the weights are named by the server they live on
    ev = tmp_path / "eval"
    argv = ["evaluate", "--model", str(served_model_dir), "--out", str(ev), "--n", "2"]
    assert main(argv + common + backend + ["--k", "1,2", "--isolation", "standard"]) == 0
    scores = json.loads((ev / "scores.json").read_text())
    assert scores["problems"] == 2 and scores["settings"]["eval"]["backend"]["name"] == "openai"


class _RecordingProxy:
    """Forwards to the real server and keeps what passed: request bodies, headers, responses.
    ``status`` set: answers every request with that status instead (e.g. 401)."""

    def __init__(self, target: str, status: int | None = None):
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.responses: list[dict] = []
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rec.bodies.append(json.loads(body))
                rec.headers.append({k.lower(): v for k, v in self.headers.items()})
                if status is not None:
                    msg = b'{"error": {"message": "invalid api key"}}'
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                req = urllib.request.Request(
                    target + self.path[len("/v1") :],
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=120) as resp:
                    data = resp.read()
                rec.responses.append(json.loads(data))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_hosted_api_options_reach_the_server(server, served_model_dir, monkeypatch):
    """Key from the named variable, extra headers, extra_body; stop strings trimmed to
    max_stop on the wire and every stop string still cut on the client."""
    monkeypatch.setenv("EKT_TEST_TEAM_KEY", "sk-test-123")
    proxy = _RecordingProxy(server.base_url)
    stops = ("\n\n", " ", "e", "a")
    try:
        sampler = _sampler(
            proxy.url, served_model_dir, api_key_env="EKT_TEST_TEAM_KEY",
            headers={"X-Team": "ekt"}, extra_body={"frequency_penalty": 0.0}, max_stop=2,
        )  # fmt: skip
        params = SamplingParams(n=1, temperature=1.0, max_new_tokens=12, seed=5, stop=stops)
        out = list(sampler.sample(REQUESTS[:2], params))
    finally:
        proxy.close()
    _check_complete(out, REQUESTS[:2], 1)
    assert all(h["authorization"] == "Bearer sk-test-123" for h in proxy.headers)
    assert all(h["x-team"] == "ekt" for h in proxy.headers)
    assert all(b["stop"] == ["\n\n", " "] for b in proxy.bodies)
    assert all(b["frequency_penalty"] == 0.0 for b in proxy.bodies)
    assert not any(s in c.text for c in out for s in stops)  # "e" and "a" cut by the client


def test_api_openai_com_gets_at_most_4_stop_strings():
    from ekt.generation.backends import BackendConfig
    from ekt.generation.backends.openai_compat import OpenAISampler

    openai, local = "https://api.openai.com/v1", "http://127.0.0.1:8000/v1"
    assert OpenAISampler("gpt-x", BackendConfig("openai", base_url=openai)).max_stop == 4
    assert OpenAISampler("m", BackendConfig("openai", base_url=local)).max_stop == 0  # all
    two = BackendConfig("openai", base_url=openai, max_stop=2)
    assert OpenAISampler("gpt-x", two).max_stop == 2


def test_chat_messages_are_sent_as_messages_and_usage_is_recorded(server, served_model_dir):
    from ekt.data.prompt_format import load_format

    fmt = load_format("chat")
    requests = [(f"toy/{i}", fmt.teacher(q, 1)) for i, q in enumerate(QUESTIONS[:2])]
    proxy = _RecordingProxy(server.base_url)
    try:
        sampler = _sampler(proxy.url, served_model_dir, api="chat")
        params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=6, stop=())
        out = list(sampler.sample(requests, params))
    finally:
        proxy.close()
    _check_complete(out, requests, 2)
    sent = sorted((b["messages"] for b in proxy.bodies), key=lambda m: m[-1]["content"])
    assert sent[0] == requests[0][1] or sent[0] == requests[1][1]
    assert {json.dumps(m) for m in sent} == {json.dumps(p) for _, p in requests}
    billed = sum(r["usage"]["prompt_tokens"] for r in proxy.responses)
    assert billed > 0 and sum(c.prompt_tokens for c in out) == billed
    assert sum(c.n_tokens for c in out) == sum(
        r["usage"]["completion_tokens"] for r in proxy.responses
    )


def test_completions_api_refuses_chat_messages(server, served_model_dir):
    from ekt.errors import EktError

    sampler = _sampler(server.base_url, served_model_dir)  # api="completions"
    with pytest.raises(EktError, match="--api chat"):
        list(sampler.sample([("p", [{"role": "user", "content": "hi"}])], SamplingParams()))


def test_401_names_the_key_variable(served_model_dir, monkeypatch):
    from ekt.errors import EktError

    monkeypatch.delenv("EKT_UNSET_KEY", raising=False)
    proxy = _RecordingProxy("http://127.0.0.1:9", status=401)
    try:
        sampler = _sampler(proxy.url, served_model_dir, api_key_env="EKT_UNSET_KEY")
        with pytest.raises(EktError, match=r"HTTP 401.*\$EKT_UNSET_KEY, which is not set"):
            list(sampler.sample(REQUESTS[:1], SamplingParams(max_new_tokens=4)))
    finally:
        proxy.close()
    assert "authorization" not in proxy.headers[0]


def test_rate_limiter_holds_requests_and_tokens_to_the_window():
    from ekt.generation.backends.openai_compat import RateLimiter

    lim = RateLimiter(requests_per_minute=2)
    lim.WINDOW = 0.5  # the same limiter on a half-second window, so the test is quick
    t0 = time.monotonic()
    stamps = [lim.acquire(1)[0] - t0 for _ in range(5)]
    assert stamps[1] < 0.2 and stamps[2] >= 0.49 and stamps[4] >= 0.99
    tok = RateLimiter(tokens_per_minute=100)
    tok.WINDOW = 0.5
    t0 = time.monotonic()
    first = tok.acquire(80)
    tok.settle(first, 30)  # the server said 30: room for 70 more at once
    assert tok.acquire(60)[0] - t0 < 0.2
    assert tok.acquire(50)[0] - t0 >= 0.49  # 30 + 60 + 50 > 100: waits for the window
    assert tok.waited > 0
