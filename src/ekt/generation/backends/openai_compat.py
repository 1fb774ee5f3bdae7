"""Sampling from an OpenAI-compatible HTTP server (vLLM, llama.cpp, TGI, ``transformers serve``).

``OpenAISampler(base_url, model).sample(requests, params)`` sends the prompts
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
* **Retries.** HTTP 408, 409, 429 and 5xx, timeouts, refused or dropped
  connections and truncated bodies are retried with exponential backoff
  (``backoff * 2**attempt`` seconds, at most ``max_backoff``, with jitter, or
  the server's ``Retry-After``), up to ``max_retries`` times in a row for a
  unit; other 4xx errors stop at once with the server's message.
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

import http.client
import json
import os
import random
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
from ekt.generation.sampling import SamplingParams, derive_seed, truncate_at_stop
from ekt.records import Completion

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Servers that refuse more stop strings than this (the request fails with HTTP 400).
STOP_LIMITS = {"api.openai.com": 4}
CHARS_PER_TOKEN = 4  # the estimate of a prompt's tokens where no tokenizer counts them


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


class OpenAISampler:
    """Sampler over an OpenAI-compatible server (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api: str = "completions",
        concurrency: int = 0,
        n_per_request: int = 1,
        timeout: float = 600.0,
        max_retries: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        api_key: str | None = None,
        max_stop: int = 0,
        tokenizer: Any = None,
        progress: bool = True,
        extra_body: dict | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        headers: dict[str, str] | None = None,
        requests_per_minute: float = 0,
        tokens_per_minute: float = 0,
        trim_prompt: bool = True,
    ):
        if api not in ("completions", "chat"):
            raise EktError(f"--api must be completions or chat, got {api!r}")
        if concurrency < 0:
            raise EktError(f"--concurrency must be >= 0 (0: the server's slots), got {concurrency}")
        if n_per_request < 0 or max_retries < 0:
            raise EktError("n_per_request and max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api = api
        self.concurrency = concurrency  # 0: resolved by _resolve_concurrency on the first job
        self.n_per_request = n_per_request
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.api_key_env = api_key_env
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env or "")
        if max_stop < 0:
            raise EktError(f"max_stop must be >= 0 (0: the server's own limit), got {max_stop}")
        host = urlparse(self.base_url).hostname or ""
        # 0: every stop string, unless the server is known to take fewer
        self.max_stop = max_stop or STOP_LIMITS.get(host, 0)
        self.headers = {str(k): str(v) for k, v in (headers or {}).items()}
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute)
        self.tokenizer = tokenizer
        self.progress = progress
        self.extra_body = dict(extra_body or {})
        self.trim_prompt = trim_prompt and api == "completions"
        self.n_supported: bool | None = None  # learnt from the first multi-choice response
        self.retries = 0  # requests sent again, over the sampler's life (for logs and tests)

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

    def _post(self, body: dict) -> dict:
        """POST once; the parsed response, or _Retryable / EktError."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **self.headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode("utf-8", "replace").strip()
            if e.code in RETRY_STATUS:
                after = e.headers.get("Retry-After") if e.headers else None
                try:
                    wait_s = float(after) if after else None
                except ValueError:
                    wait_s = None
                raise _Retryable(f"HTTP {e.code}: {detail}", wait_s) from None
            hint = ""
            if e.code in (401, 403):
                hint = (
                    f" (the API key is read from ${self.api_key_env}, which is "
                    f"{'set' if self.api_key else 'not set'}; backend.api_key_env names another)"
                )
            raise EktError(f"{self.endpoint}: HTTP {e.code}: {detail}{hint}") from None
        except (OSError, http.client.HTTPException) as e:  # refused, reset, timeout, torn body
            raise _Retryable(f"{type(e).__name__}: {e}") from None
        try:
            out = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Retryable(f"unparsable response ({len(raw)} bytes)") from None
        if not isinstance(out, dict) or not self._answered(out):
            if isinstance(out, dict) and "error" in out:
                raise _Retryable(f"server error: {str(out['error'])[:300]}")
            raise EktError(f"{self.endpoint}: response without choices: {str(out)[:300]}")
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
    ) -> dict:
        """POST with retries and exponential backoff, within the rate limits."""
        body = self._body(prompt, problem_id, unit, params)
        for attempt in range(self.max_retries + 1):
            entry = self.limiter.acquire(self._estimate(body), abandoned)
            try:
                out = self._post(body)
                usage = out.get("usage") or {}
                total = usage.get("total_tokens")
                if not isinstance(total, int):
                    total = sum(
                        v for v in (usage.get("prompt_tokens"), usage.get("completion_tokens"))
                        if isinstance(v, int)
                    ) or entry[1]  # fmt: skip
                self.limiter.settle(entry, total)
                return out
            except _Retryable as e:
                if attempt == self.max_retries or abandoned.is_set():
                    raise EktError(
                        f"{self.endpoint}: giving up on {problem_id} after "
                        f"{self.max_retries + 1} attempts: {e}"
                    ) from None
                self.retries += 1
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                delay = e.retry_after if e.retry_after is not None else delay
                abandoned.wait(delay * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")

    @staticmethod
    def _prompt_tokens(out: dict, count: int) -> list[int]:
        """The response's prompt tokens shared out over ``count`` samples (sum = billed)."""
        total = (out.get("usage") or {}).get("prompt_tokens")
        if not isinstance(total, int) or total < 0 or count < 1:
            return [0] * max(count, 0)
        share, rest = divmod(total, count)
        return [share + (i < rest) for i in range(count)]

    def _choices(self, out: dict) -> list[_Choice]:
        """One ``_Choice`` per choice of a response, in choice-index order."""
        choices = sorted(out["choices"], key=lambda c: c.get("index", 0))
        texts = []
        for c in choices:
            if self.api == "chat":
                text = (c.get("message") or {}).get("content") or ""
            else:
                text = c.get("text") or ""
            texts.append(text)
        usage = out.get("usage") or {}
        total, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
        prompt = prompt if isinstance(prompt, int) else 0
        if len(texts) == 1:
            return [_Choice(texts[0], total if isinstance(total, int) else None, prompt)]
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
        from tqdm.auto import tqdm

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
        show = self.progress and sys.stderr.isatty()
        bar = tqdm(total=len(requests) * params.n, desc="sample", unit="seq", disable=not show)
        concurrency = self._resolve_concurrency() if requests else 1
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ekt-http")
        flying: dict[Future, _Unit] = {}
        abandoned = threading.Event()  # set when the caller stops early: no more retries
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
                    out = fut.result()  # EktError propagates: a fatal server answer
                    got = self._choices(out)
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
                        bar.update(1)
                        yield Completion(
                            pid,
                            unit.start + k,
                            cut,
                            int(choice.n_tokens or 0),
                            prompt_tokens=billed[k] if len(got) > 1 else choice.prompt_tokens,
                            stop=choice.stop,
                        )
        finally:
            abandoned.set()
            for fut in flying:
                fut.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()
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
