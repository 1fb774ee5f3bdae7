"""A fake OpenAI-compatible teacher for the fault-injection tests: a real HTTP server on
127.0.0.1 (a thread of the test process, or ``python fakeopenai.py`` as a process of its own).

A correct reply is a function of the request alone (prompt, seed, n), so any run, however
often it was interrupted or retried, must write exactly the records of an uninterrupted one.
Faults are queued by name; each request takes the next one (if any) instead of the correct
reply. Every fault is bounded in time (a hang or a trickle stops after ``MAX_STALL`` s) and
the server shuts itself down after ``lifetime`` seconds.
"""

from __future__ import annotations

import email.utils
import http.server
import json
import sys
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable

MAX_STALL = 20.0  # the longest a hang or a trickle lasts, whatever the client does


def answer(prompt: str, seed: int, index: int) -> str:
    """The sample the fake teacher writes for a prompt, seed and choice index."""
    return f"\n    return {zlib.crc32(f'{prompt}|{seed}|{index}'.encode()) % 1000}\n"


def good_reply(
    body: dict, api: str = "completions", writes: Callable[[str, int, int], str] = answer
) -> dict:
    """The reply to a request when no fault is queued; ``writes(prompt, seed, index)`` is
    each sample's text."""
    n = int(body.get("n") or 1)
    if api == "chat":
        prompt = json.dumps(body["messages"])
        texts = [writes(prompt, body["seed"], i) for i in range(n)]
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ]
    else:
        prompt = body["prompt"]
        choices = [
            {"index": i, "text": writes(prompt, body["seed"], i), "finish_reason": "stop"}
            for i in range(n)
        ]
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "choices": choices,
        "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": 5 * n,
                  "total_tokens": len(prompt) // 4 + 5 * n},
    }  # fmt: skip


def _send(h: http.server.BaseHTTPRequestHandler, status: int, data: bytes,
          headers: Iterable[tuple[str, str]] = ()) -> None:  # fmt: skip
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for k, v in headers:
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


def _json(obj) -> Callable:
    return lambda h, body, good: _send(h, 200, json.dumps(obj).encode())


def _edit(change: Callable[[dict], None]) -> Callable:
    def fault(h, body, good):
        bad = json.loads(json.dumps(good))
        change(bad)
        _send(h, 200, json.dumps(bad).encode())

    return fault


def _status(code: int, retry_after: str | None = None) -> Callable:
    def fault(h, body, good):
        extra = [("Retry-After", retry_after)] if retry_after is not None else []
        _send(h, code, b'{"error": {"message": "try later"}}', extra)

    return fault


def _stall(stop: threading.Event, seconds: float = MAX_STALL) -> None:
    stop.wait(seconds)


def _hang(h, body, good):  # no status line, no headers, nothing
    _stall(h.server.stopping)  # type: ignore[attr-defined]


def _trickle(h, body, good):  # a whole reply, one byte a second
    data = json.dumps(good).encode()
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.flush()
    t0 = time.monotonic()
    for b in data:
        if h.server.stopping.is_set() or time.monotonic() - t0 > MAX_STALL:  # type: ignore[attr-defined]
            return
        try:
            h.wfile.write(bytes([b]))
            h.wfile.flush()
        except OSError:
            return
        time.sleep(1.0)


def _slow_headers(h, body, good):  # the status line, then a header byte a second
    h.wfile.write(b"HTTP/1.1 200 OK\r\n")
    h.wfile.flush()
    for b in b"Content-Type: application/json\r\nX-Slow: " + b"x" * 40:
        if h.server.stopping.is_set():  # type: ignore[attr-defined]
            return
        try:
            h.wfile.write(bytes([b]))
            h.wfile.flush()
        except OSError:
            return
        time.sleep(1.0)


def _truncated(h, body, good):  # promises more than it sends, then closes
    data = json.dumps(good).encode()
    h.send_response(200)
    h.send_header("Content-Length", str(len(data) + 100))
    h.end_headers()
    h.wfile.write(data[: len(data) // 2])
    h.close_connection = True


def _raw(data: bytes) -> Callable:  # bytes on the wire as they are, then close
    def fault(h, body, good):
        h.wfile.write(data)
        h.wfile.flush()
        h.close_connection = True

    return fault


def _drop(h, body, good):  # closes without a word
    h.close_connection = True


def _deep(h, body, good):  # JSON nested 200k deep
    _send(h, 200, b'{"choices": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


def _set(path: list, value) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return change


# Every fault the tests throw: name -> how the server answers instead of the good reply.
FAULTS: dict[str, Callable] = {
    "zero_choices": _edit(_set(["choices"], [])),
    "choice_is_string": _edit(_set(["choices"], ["    return 1\n"])),
    "choice_is_null": _edit(_set(["choices"], [None])),
    "choices_is_object": _edit(_set(["choices"], {"0": {"text": "x"}})),
    "no_choices_key": _json({"id": "cmpl-fake", "object": "text_completion"}),
    "text_is_int": _edit(_set(["choices", 0, "text"], 7)),
    "text_is_null": _edit(_set(["choices", 0, "text"], None)),
    "text_is_list": _edit(_set(["choices", 0, "text"], ["a"])),
    "index_is_string": _edit(_set(["choices", 0, "index"], "zero")),
    "index_is_negative": _edit(_set(["choices", 0, "index"], -1)),
    "index_is_float": _edit(_set(["choices", 0, "index"], 0.5)),
    "index_twice": _edit(lambda d: d["choices"].append(dict(d["choices"][0]))),
    "usage_is_string": _edit(_set(["usage"], "lots")),
    "usage_tokens_string": _edit(_set(["usage", "completion_tokens"], "5")),
    "usage_tokens_negative": _edit(_set(["usage", "prompt_tokens"], -4)),
    "usage_tokens_bool": _edit(_set(["usage", "total_tokens"], True)),
    "body_is_list": _json([1, 2, 3]),
    "body_is_string": _json("ok"),
    "body_is_null": _json(None),
    "error_in_200": _json({"error": {"message": "overloaded", "code": 503}}),
    "not_json": lambda h, body, good: _send(h, 200, b"<html>502 Bad Gateway</html>"),
    "not_utf8": lambda h, body, good: _send(h, 200, b'{"choices": "\xff\xfe"}'),
    "empty_body": lambda h, body, good: _send(h, 200, b""),
    "deep_json": _deep,
    "status_500": _status(500),
    "status_503": _status(503),
    "status_429": _status(429),
    "retry_after_inf": _status(429, "inf"),
    "retry_after_huge": _status(429, "100000"),
    "retry_after_negative": _status(503, "-5"),
    "retry_after_nan": _status(503, "nan"),
    "retry_after_word": _status(429, "soon"),
    "retry_after_date_far": _status(503, _http_date(86400 * 365)),
    "retry_after_1e400": _status(429, "1e400"),
    "truncated_body": _truncated,
    "bad_status_line": _raw(b"HTTP/1.1 two hundred OK\r\n\r\n{}"),
    "not_http": _raw(b"SSH-2.0-OpenSSH_9.6\r\n"),
    "bad_content_length": _raw(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n{}"),
    "header_flood": _raw(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200 + b"\r\n{}"),
    "gzip_body": lambda h, body, good: _send(
        h, 200, __import__("gzip").compress(json.dumps(good).encode()),
        [("Content-Encoding", "gzip")]),
    "dropped_connection": _drop,
    "hang": _hang,
    "trickle": _trickle,
    "slow_headers": _slow_headers,
    "http_400": _status(400),
}
# The faults that wait for the client's deadline (a test gives those a short timeout).
STALLS = {"hang", "trickle", "slow_headers"}


class FakeOpenAI:
    """The server: ``FakeOpenAI(faults=["zero_choices", ...]).url``; ``close()`` (or its
    ``lifetime``) stops it. ``up=False`` for /models answering 503 is not needed: a server
    that is down is a port nobody listens on."""

    def __init__(self, faults: Iterable[str] = (), api: str = "completions",
                 lifetime: float = 60.0, model: str = "fake", delay: float = 0.0,
                 writes: Callable[[str, int, int], str] = answer):  # fmt: skip
        self.faults = deque(faults)
        self.posts = 0
        self.faults_sent: list[str] = []
        lock = threading.Lock()
        me = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    _send(self, 200, json.dumps({"data": [{"id": model}]}).encode())
                else:
                    _send(self, 404, b'{"error": "not found"}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    me.posts += 1
                    fault = me.faults.popleft() if me.faults else None
                    if fault:
                        me.faults_sent.append(fault)
                good = good_reply(body, api, writes)
                if delay:
                    self.server.stopping.wait(delay)  # type: ignore[attr-defined]
                if fault is None:
                    _send(self, 200, json.dumps(good).encode())
                else:
                    FAULTS[fault](self, body, good)

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], ConnectionError):  # a client killed
                    super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.httpd.stopping = threading.Event()  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self._timer = threading.Timer(lifetime, self.close)
        self._timer.daemon = True
        self._timer.start()

    def close(self) -> None:
        self._timer.cancel()
        self.httpd.stopping.set()  # type: ignore[attr-defined]
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":  # python fakeopenai.py LIFETIME DELAY [FAULT ...]: prints its URL
    srv = FakeOpenAI(sys.argv[3:], lifetime=float(sys.argv[1]), delay=float(sys.argv[2]))
    print(srv.url, flush=True)
    srv.httpd.stopping.wait(float(sys.argv[1]) + 1)  # type: ignore[attr-defined]


# -- the fault suite's clock: every case bounded, the longest printed ------------------------

CASE_LIMIT_S = 30.0
DURATIONS: dict[str, float] = {}
FIGURES: Counter = Counter()  # records compared, cut points, kills: the closing line's


def _pytest_fixtures():  # defined lazily: this module also runs as a plain script
    import pytest

    @pytest.fixture(autouse=True)
    def bounded_case(request):
        """Times the case; over CASE_LIMIT_S is a failure."""
        t0 = time.monotonic()
        yield
        took = time.monotonic() - t0
        DURATIONS[request.node.nodeid] = took
        assert took < CASE_LIMIT_S, f"fault case took {took:.1f}s (limit {CASE_LIMIT_S:.0f}s)"

    @pytest.fixture(autouse=True, scope="module")
    def longest_case(request):
        """At the end of a module: cases run so far and the longest, on the terminal."""
        yield
        if not DURATIONS:
            return
        name, took = max(DURATIONS.items(), key=lambda kv: kv[1])
        line = f"fault cases run: {len(DURATIONS)}; longest {took:.1f}s: {name}"
        if FIGURES:
            line += "; " + ", ".join(f"{k} {v}" for k, v in sorted(FIGURES.items()))
            line += "; none lost, none duplicated (each case asserts it)"
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or capture is None:
            print(line)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    return bounded_case, longest_case
