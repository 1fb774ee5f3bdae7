"""Sampling from an OpenAI-compatible HTTP server (vLLM, llama.cpp, TGI, ``transformers serve``).

``OpenAISampler(model, backend).sample(requests, params)`` sends the prompts
to ``/completions`` (raw text, the default) or ``/chat/completions`` (``api="chat"``:
a chat prompt format's messages as they are, a text prompt as one user message)
and yields one ``Completion`` per (problem, sample index), like every ekt
sampler. It needs nothing beyond the standard library.

* **Hosted APIs.** The key is read from the environment variable ``api_key_env``
  (default ``OPENAI_API_KEY``; unset: no ``Authorization`` header), ``headers`` are
  added to every request and ``extra_body`` merged into every body. At most
  ``max_stop`` stop strings are sent (api.openai.com accepts 4 and gets 4 when
  ``max_stop`` is 0); every stop string is still cut on the client.
* **Rate limits.** ``requests_per_minute`` and ``tokens_per_minute`` (0: none)
  hold requests back so that no 60-second window exceeds them; a request counts
  its prompt (estimated at 4 characters a token until the server reports usage)
  plus ``max_tokens`` per choice, and the estimate is replaced by the server's
  ``usage.total_tokens`` when the response arrives.
* **Usage.** ``Completion.prompt_tokens`` is the server's ``usage.prompt_tokens``
  shared out over the request's choices (their sum is what was billed).

* **Work units.** A problem's ``n`` samples go out as requests of
  ``n_per_request`` samples (default 1: one sample per request, so every
  sample has its own seed and its own token counts; 0: all ``n`` in one
  request). A unit is ``(problem, first sample index, count)``; the choices of
  its response become samples ``first, first+1, ...``. A server that returns
  fewer choices than asked (many ignore ``n``) gets the rest as new units, and
  from then on one sample per request. Each request carries ``seed = f(seed,
  problem, first index)`` (the built-in sampler's per-sample seed), so a
  server that honours seeds (llama.cpp, vLLM) gives the same samples again.
* **A prompt the server tokenises well** (``trim_prompt``, default on, for
  the completions API). ekt's prompts end with ``def solution():\n``. BPE
  tokenizers such as SmolLM2's merge a newline with the indentation after it,
  so a prompt that ends on a bare newline token is one the model never saw
  before an indented line, and it answers with unindented text (the built-in
  sampler heals that token; a server cannot). The prompt is therefore sent
  without its trailing whitespace and the model writes the newline and
  indentation itself; when the reply starts with the whitespace that was
  held back, it is removed, so ``Completion.text`` continues ekt's prompt as
  it does for every sampler. (A reply that does not start with it is kept as
  it is: a same-line body such as `` return 4`` still reads as an indented
  line to ``extract_program``.)
* **Bounded concurrency.** At most ``concurrency`` requests are in flight
  (0: the server's slot count where it reports one, as llama.cpp does, else 8).
* **The server first.** Before the first request ``GET /models`` must answer
  within ``HEALTH_TIMEOUT`` seconds: a server that is down is one line naming
  the URL, not minutes of retries; a model the list does not name is a note.
* **Retries.** HTTP 408, 409, 429 and 5xx, timeouts, refused or dropped
  connections, truncated bodies and malformed replies are retried with
  exponential backoff (``backoff * 2**attempt`` seconds, at most
  ``max_backoff``, with jitter), up to ``max_retries`` times in a row for a
  unit, each retry said on stderr as it happens; other 4xx errors stop at once
  with the server's message. The server's ``Retry-After`` (seconds or an HTTP
  date) replaces the backoff, capped at ``max_backoff``; a value that is not a
  finite, non-negative number means the ordinary backoff.
* **A reply is checked before use.** Every field ekt reads (``choices``, each
  choice's ``index`` and ``text`` or ``message.content``, ``usage``) must have
  its type; anything else (no choices, a choice that is a string, JSON nested
  too deeply to parse, a body over ``MAX_BODY`` bytes) is one retryable error
  that quotes the start of the reply, never a traceback.
* **Nothing hangs.** ``request_timeout`` bounds a whole request: connecting, the headers
  and the body together (a body trickled a byte at a time is cut at the
  deadline). A fatal error (a 4xx, retries spent) shuts the sockets of the
  other requests in flight, so the job ends within moments.
* **Progress.** A bar over the samples with tokens/s on a terminal; elsewhere
  (a log file) one line every ``PROGRESS_EVERY`` seconds.
* **Nothing lost or doubled.** A sample is recorded only when its response
  has arrived whole, once per (problem, index); a request lost with a dying
  server is simply sent again. ``sample`` checks at the end that every
  (problem, index) was yielded exactly once.

``Completion.text`` is cut before the first stop string on the client side as
well (servers differ on whether they include it). ``n_tokens`` and
``prompt_tokens`` are the server's ``usage`` of a single-choice response;
responses with several choices report only a total for the request, so each
text is counted by the ``tokenizer`` given, and without one such a response is
an error that says to send one sample per request (no count is ever guessed).
Greedy (temperature 0) sends one request per problem and reports its text
``n`` times, as ``TransformersSampler`` does.

``ekt.generation.backends.llamacpp_server`` builds on this class for
llama.cpp's ``llama-server`` (its own endpoint: exact per-sample counts, the
stop string that ended a sample, prompt-cache reuse, the server's slots).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import os
import random
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from ekt.errors import EktError
from ekt.generation.backends import BackendConfig
from ekt.generation.config import SamplingParams
from ekt.generation.sampler import derive_seed, truncate_at_stop
from ekt.records import Completion

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Servers that refuse more stop strings than this (the request fails with HTTP 400).
STOP_LIMITS = {"api.openai.com": 4}
CHARS_PER_TOKEN = 4  # the estimate of a prompt's tokens where no tokenizer counts them
MAX_BODY = 64 << 20  # a reply longer than this is not an answer to a sampling request
HEALTH_TIMEOUT = 5.0  # seconds the server has to answer GET /models before the first request
PROGRESS_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal


class RateLimiter:
    """Requests and tokens per sliding 60-second window, shared by the sender threads."""

    WINDOW = 60.0

    def __init__(self, requests_per_minute: float = 0, tokens_per_minute: float = 0):
        if requests_per_minute < 0 or tokens_per_minute < 0:
            raise EktError("requests_per_minute and tokens_per_minute must be >= 0 (0: no limit)")
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._sent: deque[list[float]] = deque()  # [time, tokens] per request in the window
        self._cv = threading.Condition()
        self.waited = 0.0  # seconds spent held back (for logs and tests)

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.tpm)

    def _prune(self, now: float) -> None:
        while self._sent and self._sent[0][0] <= now - self.WINDOW:
            self._sent.popleft()

    def acquire(self, tokens: float, abandoned: threading.Event | None = None) -> list[float]:
        """Wait until a request of ``tokens`` fits; its entry (update it with ``settle``)."""
        if not self.active:
            return [time.monotonic(), tokens]
        if self.tpm:
            tokens = min(tokens, self.tpm)  # a request bigger than the limit still goes, alone
        with self._cv:
            while True:
                now = time.monotonic()
                self._prune(now)
                used = sum(t for _, t in self._sent)
                ok_r = not self.rpm or len(self._sent) + 1 <= self.rpm
                ok_t = not self.tpm or used + tokens <= self.tpm
                if ok_r and ok_t:
                    entry = [now, tokens]
                    self._sent.append(entry)
                    return entry
                if abandoned is not None and abandoned.is_set():
                    raise EktError("rate limiter: the job was stopped")
                wait_s = self._sent[0][0] + self.WINDOW - now if self._sent else 0.05
                t0 = time.monotonic()
                self._cv.wait(timeout=max(0.01, min(wait_s, 1.0)))
                self.waited += time.monotonic() - t0

    def settle(self, entry: list[float], tokens: float) -> None:
        """Replace a request's estimate with what the server reported."""
        with self._cv:
            entry[1] = tokens
            self._cv.notify_all()


@dataclass(frozen=True)
class _Unit:
    problem: int  # index into the request list
    start: int  # first sample index
    count: int


@dataclass(frozen=True)
class _Choice:
    """One sample of a response, as the server reports it."""

    text: str  # the continuation of the prompt as sent
    n_tokens: int | None  # tokens generated for it (None: the server did not say)
    prompt_tokens: int = 0  # tokens of the prompt as the server tokenised it (0: not said)
    stop: str = ""  # the stop string that ended it, where the server says ("" otherwise)


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Malformed(_Retryable):
    """A reply whose fields are not what the API promises (retried like any bad reply)."""


def quote(raw: bytes | str, limit: int = 120) -> str:
    """The start of a reply, on one line, for a message."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text[: limit + 1].split())
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def one_line(text: str, limit: int = 300) -> str:
    """``text`` with its whitespace runs (newlines too) as single spaces, at most ``limit``."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date), or None when it
    is absent or not a finite, non-negative time (the ordinary backoff then applies)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _count(value: Any) -> int | None:
    """A token count as a server reports it: a non-negative integer (12.0 too), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def usage_of(out: dict) -> dict[str, int]:
    """A reply's ``usage`` counts that are there; a malformed one is a _Malformed."""
    usage = out.get("usage")
    if usage is None:
        return {}
    if not isinstance(usage, dict):
        raise _Malformed(f"'usage' is not an object: {quote(json.dumps(usage))}")
    got = {}
    for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
        if usage.get(k) is None:
            continue
        n = _count(usage[k])
        if n is None:
            raise _Malformed(f"usage.{k} is not a token count: {quote(json.dumps(usage[k]))}")
        got[k] = n
    return got


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Watch:
    """The sockets of one request: shut down at its deadline, or when the job stops, so
    that no read (connect, headers, a trickled body) outlives either."""

    def __init__(self) -> None:
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.why = ""

    def add(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._socks.append(sock)
            if self.why:
                _shut(sock)
        return sock

    def fire(self, why: str) -> None:
        with self._lock:
            self.why = self.why or why
            for sock in self._socks:
                _shut(sock)


class _Abandon(threading.Event):
    """Set when a job stops (done, or a fatal error): no more retries, and every request
    still in flight has its sockets shut."""

    def __init__(self) -> None:
        super().__init__()
        self._watches: set[_Watch] = set()
        self._lock = threading.Lock()

    def watch(self, w: _Watch) -> None:
        with self._lock:
            self._watches.add(w)
        if self.is_set():
            w.fire("the job was stopped")

    def unwatch(self, w: _Watch) -> None:
        with self._lock:
            self._watches.discard(w)

    def set(self) -> None:
        super().set()
        with self._lock:
            watches = list(self._watches)
        for w in watches:
            w.fire("the job was stopped")


def _tracked(http_class: Any, watch: _Watch) -> Any:
    """``http_class`` whose sockets ``watch`` can shut (registered as soon as connected)."""

    def make(host: str, **kw: Any) -> Any:
        conn = http_class(host, **kw)
        connect = conn._create_connection
        conn._create_connection = lambda *a, **k: watch.add(connect(*a, **k))
        return conn

    return make


class _HTTP(urllib.request.HTTPHandler):
    def __init__(self, watch: _Watch):
        super().__init__()
        self.watch = watch

    def do_open(self, http_class, req, **kw):  # type: ignore[no-untyped-def,override]
        return super().do_open(_tracked(http_class, self.watch), req, **kw)


class _HTTPS(urllib.request.HTTPSHandler):
    def __init__(self, watch: _Watch):
        super().__init__()
        self.watch = watch

    def do_open(self, http_class, req, **kw):  # type: ignore[no-untyped-def,override]
        return super().do_open(_tracked(http_class, self.watch), req, **kw)


def fetch(req: urllib.request.Request, timeout: float, abandoned: Any = None) -> bytes:
    """The body of ``req``, all of it within ``timeout`` seconds (connect, headers, body),
    at most ``MAX_BODY`` bytes. Raises urllib's HTTPError for an HTTP error status, and
    TimeoutError at the deadline (or when ``abandoned``, an ``_Abandon``, is set)."""
    watch = _Watch()
    timer = threading.Timer(timeout, watch.fire, (f"no whole reply within {timeout:g}s",))
    timer.daemon = True
    if isinstance(abandoned, _Abandon):
        abandoned.watch(watch)
    timer.start()
    try:
        opener = urllib.request.build_opener(_HTTP(watch), _HTTPS(watch))
        try:
            with opener.open(req, timeout=timeout) as resp:
                raw = resp.read(MAX_BODY + 1)
        except urllib.error.HTTPError as e:
            if watch.why:
                raise TimeoutError(watch.why) from None
            try:  # the error's body, read while the deadline still holds
                e.detail = e.read(500).decode("utf-8", "replace").strip()  # type: ignore[attr-defined]
            except (OSError, http.client.HTTPException, ValueError):
                e.detail = ""  # type: ignore[attr-defined]
            if watch.why:
                raise TimeoutError(watch.why) from None
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:
            if watch.why:
                raise TimeoutError(watch.why) from None
            if isinstance(e, ValueError):  # a header or status line http.client refuses
                raise http.client.HTTPException(f"unreadable reply ({e})") from None
            raise
        if watch.why:  # a body cut short by the deadline may still parse: never use it
            raise TimeoutError(watch.why)
        if len(raw) > MAX_BODY:
            raise _Malformed(f"a reply over {MAX_BODY >> 20} MiB")
        return raw
    finally:
        timer.cancel()
        if isinstance(abandoned, _Abandon):
            abandoned.unwatch(watch)


class _Progress:
    """Samples done and tokens/s: a bar on a terminal, else a line every PROGRESS_EVERY s;
    ``note`` prints a line (a retry) without breaking the bar. Silent when not ``enabled``."""

    def __init__(self, total: int, enabled: bool, label: str):
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.total, self.label = total, label
        self.done = self.tokens = 0
        self.t0 = self.last = time.monotonic()
        self._lock = threading.Lock()
        self.bar = tqdm(total=total, desc="sample", unit="seq", disable=not self.tty)

    def rate(self) -> float:
        dt = time.monotonic() - self.t0
        return self.tokens / dt if dt > 0 else 0.0

    def line(self) -> str:
        return (
            f"sample: {self.done}/{self.total} samples, {self.tokens} tokens, "
            f"{self.rate():.1f} tok/s, {time.monotonic() - self.t0:.0f}s ({self.label})"
        )

    def update(self, tokens: int) -> None:
        self.done += 1
        self.tokens += tokens
        if self.tty:
            self.bar.set_postfix_str(f"{self.rate():.1f} tok/s", refresh=False)
            self.bar.update(1)
        elif self.enabled and time.monotonic() - self.last >= PROGRESS_EVERY:
            self.last = time.monotonic()
            self.note(self.line())

    def note(self, message: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self.tty:
                self.bar.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
        if self.enabled and not self.tty and self.done:
            self.note(self.line())


class OpenAISampler:
    """Sampler over an OpenAI-compatible server (see the module docstring)."""

    def __init__(
        self,
        model: str,
        backend: BackendConfig,
        *,
        tokenizer: Any = None,
        progress: bool = True,
        api_key: str | None = None,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ):
        """``model`` as the server names it, on the server and with the request settings of
        ``backend`` (its ``base_url``, ``api``, ``concurrency``, ``request_timeout``, ...).
        ``tokenizer`` counts the samples of a multi-choice response; ``api_key`` (default:
        the variable ``backend.api_key_env``); a failed request is sent again after
        ``backoff`` seconds, doubling up to ``max_backoff``."""
        b = backend
        if b.api not in ("completions", "chat"):
            raise EktError(f"--api must be completions or chat, got {b.api!r}")
        if b.concurrency < 0:
            raise EktError(
                f"--concurrency must be >= 0 (0: the server's slots), got {b.concurrency}"
            )
        if b.n_per_request < 0 or b.max_retries < 0:
            raise EktError("n_per_request and max_retries must be >= 0")
        if b.max_stop < 0:
            raise EktError(f"max_stop must be >= 0 (0: the server's own limit), got {b.max_stop}")
        self.base_url = b.base_url.rstrip("/")
        self.model = model
        self.api = b.api
        self.concurrency = b.concurrency  # 0: resolved by _resolve_concurrency on the first job
        self.n_per_request = b.n_per_request
        self.timeout = b.request_timeout
        self.max_retries = b.max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.api_key_env = b.api_key_env
        self.api_key = api_key if api_key is not None else os.environ.get(b.api_key_env or "")
        host = urlparse(self.base_url).hostname or ""
        # 0: every stop string, unless the server is known to take fewer
        self.max_stop = b.max_stop or STOP_LIMITS.get(host, 0)
        self.headers = {str(k): str(v) for k, v in (b.headers or {}).items()}
        self.limiter = RateLimiter(b.requests_per_minute, b.tokens_per_minute)
        self.tokenizer = tokenizer
        self.progress = progress
        self.extra_body = dict(b.extra_body or {})
        self.trim_prompt = b.trim_prompt and b.api == "completions"
        self.n_supported: bool | None = None  # learnt from the first multi-choice response
        self.retries = 0  # requests sent again, over the sampler's life (for logs and tests)
        self.checked = False  # the server answered GET /models (check_server)
        self._progress: _Progress | None = None  # the running job's, for retry notes

    # ---- one request ---------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.api == 'chat' else 'completions'}"

    def _body(self, prompt: Any, problem_id: str, unit: _Unit, params: SamplingParams) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": unit.count,
            "seed": derive_seed(params.seed, problem_id, unit.start) % (2**31),
        }
        stop = list(params.stop)[: self.max_stop] if self.max_stop else list(params.stop)
        if stop:
            body["stop"] = stop
        if self.api == "chat":
            if isinstance(prompt, str):
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                body["messages"] = [dict(m) for m in prompt]
        elif isinstance(prompt, str):
            body["prompt"] = prompt
        else:
            raise EktError(
                f"{problem_id}: a chat prompt format gives messages, which /completions cannot "
                "take; set backend.api: chat (--api chat)"
            )
        body.update(self.extra_body)
        return body

    def _auth_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _key_hint(self, code: int) -> str:
        if code not in (401, 403):
            return ""
        return (
            f" (the API key is read from ${self.api_key_env}, which is "
            f"{'set' if self.api_key else 'not set'}; backend.api_key_env names another)"
        )

    def _post(self, body: dict, abandoned: Any = None) -> dict:
        """POST once, within the whole-request deadline; the parsed response (a dict that
        ``_answered``), or _Retryable / EktError."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **self._auth_headers()}
        req = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
        try:
            raw = fetch(req, self.timeout, abandoned)
        except urllib.error.HTTPError as e:
            detail = getattr(e, "detail", "")
            if e.code in RETRY_STATUS:
                after = e.headers.get("Retry-After") if e.headers else None
                raise _Retryable(f"HTTP {e.code}: {quote(detail)}", retry_after(after)) from None
            raise EktError(
                f"{self.endpoint}: HTTP {e.code}: {quote(detail, 300)}{self._key_hint(e.code)}"
            ) from None
        except (OSError, http.client.HTTPException) as e:  # refused, reset, deadline, torn body
            raise _Retryable(f"{type(e).__name__}: {one_line(str(e))}") from None
        try:
            out = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Malformed(f"unparsable reply ({len(raw)} bytes): {quote(raw)}") from None
        except RecursionError:
            raise _Malformed(f"reply nested too deeply to parse: {quote(raw)}") from None
        if isinstance(out, dict) and "error" in out:
            raise _Retryable(f"server error: {quote(json.dumps(out['error']), 300)}")
        if not isinstance(out, dict) or not self._answered(out):
            raise _Malformed(f"reply without the fields of an answer: {quote(raw)}")
        return out

    def _estimate(self, body: dict) -> float:
        """Tokens a request may use: its prompt (``CHARS_PER_TOKEN`` characters a token) and
        max_tokens per choice."""
        chars = len(body.get("prompt") or "") + sum(
            len(str(m.get("content", ""))) for m in body.get("messages") or []
        )
        # llama.cpp's own endpoint names them n_predict and takes one sample per request
        most = body.get("max_tokens", body.get("n_predict", 0))
        return chars / CHARS_PER_TOKEN + most * body.get("n", 1)

    def _answered(self, out: dict) -> bool:
        """Whether a parsed response body carries an answer (here: a ``choices`` list)."""
        return isinstance(out.get("choices"), list)

    def _request(
        self,
        prompt: Any,
        problem_id: str,
        unit: _Unit,
        params: SamplingParams,
        abandoned: threading.Event,
    ) -> tuple[dict, list[_Choice]]:
        """POST with retries and exponential backoff, within the rate limits: the response
        and its checked choices (a malformed reply is retried like a failed request)."""
        body = self._body(prompt, problem_id, unit, params)
        for attempt in range(self.max_retries + 1):
            entry = self.limiter.acquire(self._estimate(body), abandoned)
            try:
                out = self._post(body, abandoned)
                choices = self._choices(out)
                usage = usage_of(out)
                total = usage.get("total_tokens")
                if total is None:
                    total = (usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
                             or entry[1])  # fmt: skip
                self.limiter.settle(entry, total)
                return out, choices
            except _Retryable as e:
                if attempt == self.max_retries or abandoned.is_set():
                    raise EktError(
                        f"{self.endpoint}: giving up on {problem_id} after "
                        f"{attempt + 1} attempts: {one_line(str(e), 400)}"
                    ) from None
                self.retries += 1
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                if e.retry_after is not None:  # the server's wish, within the maximum backoff
                    delay = min(self.max_backoff, e.retry_after)
                delay *= 0.5 + random.random() / 2
                if self._progress is not None:
                    self._progress.note(
                        f"retry {attempt + 1}/{self.max_retries} of {problem_id} in "
                        f"{delay:.1f}s: {one_line(str(e))}"
                    )
                abandoned.wait(delay)
        raise AssertionError("unreachable")

    @staticmethod
    def _prompt_tokens(out: dict, count: int) -> list[int]:
        """The response's prompt tokens shared out over ``count`` samples (sum = billed)."""
        total = usage_of(out).get("prompt_tokens")
        if total is None or count < 1:
            return [0] * max(count, 0)
        share, rest = divmod(total, count)
        return [share + (i < rest) for i in range(count)]

    def _choices(self, out: dict) -> list[_Choice]:
        """One ``_Choice`` per choice of a response, in choice-index order; a reply whose
        fields are not what the API promises is a _Malformed (retried)."""
        choices = out.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _Malformed(f"no choices in the reply: {quote(json.dumps(out)[:400])}")
        by_index: dict[int, str] = {}
        for pos, c in enumerate(choices):
            if not isinstance(c, dict):
                raise _Malformed(f"choice {pos} is not an object: {quote(json.dumps(c)[:400])}")
            index = c.get("index", pos)
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise _Malformed(f"choice {pos} has index {quote(json.dumps(index)[:200])}")
            if index in by_index:
                raise _Malformed(f"two choices with index {index}")
            if self.api == "chat":
                message = c.get("message")
                if not isinstance(message, dict):
                    raise _Malformed(
                        f"choice {pos} has no message object: {quote(json.dumps(c)[:400])}"
                    )
                text = message.get("content")
                text = "" if text is None else text  # a reply without text: no program
            else:
                text = c.get("text")
            if not isinstance(text, str):
                what = "message.content" if self.api == "chat" else "text"
                raise _Malformed(
                    f"choice {pos}'s {what} is not a string: {quote(json.dumps(text)[:200])}"
                )
            by_index[index] = text
        texts = [by_index[i] for i in sorted(by_index)]
        usage = usage_of(out)
        total, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens", 0)
        if len(texts) == 1:
            return [_Choice(texts[0], total, prompt)]
        if self.tokenizer is None:
            raise EktError(
                f"{self.endpoint}: a response with {len(texts)} choices reports only the "
                "request's total tokens; send one sample per request (backend.n_per_request: 1, "
                "the default) or give the sampler a tokenizer to count each sample"
            )
        return [
            _Choice(t, len(self.tokenizer(t, add_special_tokens=False).input_ids), prompt)
            for t in texts
        ]

    # ---- the server ----------------------------------------------------------------------

    def check_server(self) -> None:
        """``GET /models`` before the first request: a server that does not answer within
        ``HEALTH_TIMEOUT`` seconds is one EktError naming the URL; a model list that does not
        name ``model`` is a note (servers differ on the names they accept)."""
        url = f"{self.base_url}/models"
        req = urllib.request.Request(url, headers=self._auth_headers(), method="GET")
        t0 = time.monotonic()
        try:
            raw = fetch(req, min(HEALTH_TIMEOUT, self.timeout))
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise EktError(f"{url}: HTTP {e.code}{self._key_hint(e.code)}") from None
            self.checked = True  # it answers; not every server lists its models
            return
        except (OSError, http.client.HTTPException) as e:
            reason = one_line(str(getattr(e, "reason", None) or e), 200)
            raise EktError(
                f"{url}: the teacher server does not answer ({reason}, after "
                f"{time.monotonic() - t0:.1f}s); is it running at {self.base_url}? "
                "(backend.base_url)"
            ) from None
        except _Malformed:
            raw = b""
        self.checked = True
        try:
            listed = json.loads(raw).get("data") if raw else None
        except (ValueError, AttributeError, RecursionError):
            listed = None
        if not isinstance(listed, list):
            return
        ids = [m.get("id") for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if ids and self.model and self.model not in ids:
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            print(
                f"note: {url} lists {shown}, not {self.model!r}; requests name {self.model!r} "
                "(backend.served_model names another)",
                file=sys.stderr,
            )

    def _layout(self, prompt: str) -> tuple[str, str]:
        """The prompt as sent, and the trailing whitespace held back from it (see trim_prompt)."""
        if not self.trim_prompt or not isinstance(prompt, str):  # messages go as they are
            return prompt, ""
        sent = prompt.rstrip()
        return (sent, prompt[len(sent) :]) if sent else (prompt, "")

    def _resolve_concurrency(self) -> int:
        """``concurrency``, or for 0 the server's slot count (``server_slots``), else 8."""
        if self.concurrency == 0:
            self.concurrency = self.server_slots() or 8
        return self.concurrency

    def server_slots(self) -> int | None:
        """Sequences the server decodes at once, where it says (a plain server does not)."""
        return None

    # ---- the job -------------------------------------------------------------------------

    def sample(
        self,
        requests: Sequence[tuple[str, Any]],
        params: SamplingParams,
        start: int | None = None,
    ) -> Iterator[Completion]:
        """Yield ``params.n`` completions per request, in the order they arrive.

        A prompt is text, or (``api="chat"``) a list of chat messages. ``start``: the
        sample indices are ``start .. start+n-1``; a request's seed is its first index's,
        so with ``n_per_request: 1`` (the default) each sample is the one any other call
        draws for that index.
        """
        first = start or 0
        todo: deque[_Unit] = deque()
        per = params.n if params.greedy else (self.n_per_request or params.n)
        for j in range(len(requests)):
            if params.greedy:
                todo.append(_Unit(j, first, 1))
                continue
            for s in range(first, first + params.n, per):
                todo.append(_Unit(j, s, min(per, first + params.n - s)))
        layouts = [self._layout(prompt) for _, prompt in requests]
        seen: set[tuple[int, int]] = set()
        if requests and not self.checked:
            self.check_server()
        bar = _Progress(len(requests) * params.n, self.progress, self.endpoint)
        self._progress = bar
        concurrency = self._resolve_concurrency() if requests else 1
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ekt-http")
        flying: dict[Future, _Unit] = {}
        abandoned = _Abandon()  # set when the job stops: no more retries, sockets shut
        try:
            while todo or flying:
                while todo and len(flying) < concurrency:
                    unit = todo.popleft()
                    if unit.count > 1 and self.n_supported is False:
                        todo.extendleft(
                            _Unit(unit.problem, s, 1)
                            for s in reversed(range(unit.start, unit.start + unit.count))
                        )
                        continue
                    pid = requests[unit.problem][0]
                    sent = layouts[unit.problem][0]
                    flying[pool.submit(self._request, sent, pid, unit, params, abandoned)] = unit
                finished, _ = wait(list(flying), return_when=FIRST_COMPLETED)
                for fut in finished:
                    unit = flying.pop(fut)
                    out, got = fut.result()  # EktError propagates: a fatal server answer
                    if params.greedy:
                        got = got[:1] * params.n if got else []
                        unit = _Unit(unit.problem, first, params.n)
                    got = got[: unit.count]
                    billed = self._prompt_tokens(out, len(got))
                    if unit.count > 1 and not params.greedy:
                        self.n_supported = len(got) >= unit.count
                    if len(got) < unit.count:  # the server gave fewer choices than asked
                        rest = _Unit(unit.problem, unit.start + len(got), unit.count - len(got))
                        todo.appendleft(rest)
                    pid = requests[unit.problem][0]
                    held = layouts[unit.problem][1]
                    for k, choice in enumerate(got):
                        key = (unit.problem, unit.start + k)
                        if key in seen:
                            continue
                        seen.add(key)
                        text = choice.text
                        if held and text.startswith(held):
                            text = text[len(held) :]
                        cut = truncate_at_stop(text, params.stop)[0]
                        bar.update(int(choice.n_tokens or 0))
                        yield Completion(
                            pid,
                            unit.start + k,
                            cut,
                            int(choice.n_tokens or 0),
                            prompt_tokens=billed[k] if len(got) > 1 else choice.prompt_tokens,
                            stop=choice.stop,
                        )
        finally:
            abandoned.set()  # shuts the sockets of the requests still in flight
            for fut in flying:
                fut.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()
            self._progress = None
        missing = len(requests) * params.n - len(seen)
        if missing:
            raise EktError(f"{self.endpoint}: {missing} samples missing at the end of the job")


def wait_for_server(base_url: str, timeout: float = 60.0) -> None:
    """Block until ``GET {base_url}/models`` answers (for scripts and tests)."""
    deadline = time.monotonic() + timeout
    url = base_url.rstrip("/") + "/models"
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (OSError, http.client.HTTPException) as e:
            last = str(e)
        time.sleep(0.2)
    raise EktError(f"{url}: no answer within {timeout:.0f}s ({last})")


__all__ = ["OpenAISampler", "wait_for_server"]
