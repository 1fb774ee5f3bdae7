"""A chat teacher end to end: `transformers serve`, `ekt generate` (chat format), `ekt verify`.

Starts `transformers serve` on loopback with the embedded SmolLM2-135M-Instruct (or uses
--base-url), samples ``--n`` replies for each of ``--questions`` GSM8K training questions
through the chat API with the chat prompt format, verifies them, and prints:

* the share of replies from which a program was extracted, over all replies and over the
  replies that contain code (a fence, a ``def`` line or an indented statement);
* the teacher's yield (correct samples, questions solved);
* token usage (prompt and completion tokens, as the server reported them).

    python benchmarks/chat_teacher.py --questions 16 --n 4     # 64 replies
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CODE = re.compile(r"```|^[ \t]*(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(|^[ \t]+\S", re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="preset or HF folder")
    ap.add_argument("--base-url", default="", help="an OpenAI-compatible server already running")
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--prompt-format", default="chat")
    ap.add_argument("--out", default="runs/bench-chat-teacher")
    args = ap.parse_args()

    from ekt.generation.backends.openai_compat import wait_for_server
    from ekt.models import resolve_model

    folder = resolve_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server = None
    base_url = args.base_url
    if not base_url:
        port = _free_port()
        base_url = f"http://127.0.0.1:{port}/v1"
        exe = Path(sys.executable).with_name("transformers")
        cmd = [
            str(exe),
            "serve",
            folder,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
            "--log-level",
            "warning",
        ]
        log = open(out / "serve.log", "ab")
        server = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        wait_for_server(base_url, timeout=300)
    ekt = [sys.executable, "-m", "ekt.cli"]
    try:
        t0 = time.time()
        gen = ekt + [
            "generate",
            "--model",
            args.model,
            "--split",
            "train",
            "--limit",
            str(args.questions),
            "--n",
            str(args.n),
            "--temperature",
            str(args.temperature),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--prompt-format",
            args.prompt_format,
            "--backend",
            "openai",
            "--api",
            "chat",
            "--base-url",
            base_url,
            "--served-model",
            folder,
            "--concurrency",
            str(args.concurrency),
            "--out",
            str(out / "samples"),
        ]
        print(subprocess.run(gen, check=True, stdout=subprocess.PIPE, text=True).stdout.strip())
        t_gen = time.time() - t0
        ver = ekt + [
            "verify",
            "--programs",
            str(out / "samples"),
            "--out",
            str(out / "executions.jsonl"),
            "--prompt-format",
            args.prompt_format,
        ]
        print(subprocess.run(ver, check=True, stdout=subprocess.PIPE, text=True).stdout.strip())
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    recs = [json.loads(x) for x in (out / "executions.jsonl").read_text().splitlines() if x]
    with_code = [r for r in recs if CODE.search(r["text"])]
    extracted = [r for r in recs if r["status"] != "no_program"]
    extracted_of_code = [r for r in with_code if r["status"] != "no_program"]
    correct = [r for r in recs if r["correct"]]
    solved = {r["problem_id"] for r in correct}
    kinds: dict[str, int] = {}
    from ekt.data.extract import extract

    for r in recs:
        k = extract(r["text"]).kind or "none"
        kinds[k] = kinds.get(k, 0) + 1
    print(f"replies: {len(recs)} ({len(with_code)} contain code); kinds: {kinds}")
    print(
        f"programs extracted: {len(extracted)}/{len(recs)} = {len(extracted) / len(recs):.1%} "
        f"of all replies; {len(extracted_of_code)}/{len(with_code)} = "
        f"{len(extracted_of_code) / max(1, len(with_code)):.1%} of the replies with code"
    )
    print(
        f"teacher yield: {len(correct)}/{len(recs)} samples correct "
        f"({len(correct) / len(recs):.1%}), {len(solved)}/{args.questions} questions solved"
    )
    pt = sum(r.get("prompt_tokens", 0) for r in recs)
    ct = sum(r.get("n_tokens", 0) for r in recs)
    print(
        f"tokens: {pt} prompt + {ct} completion ({pt / len(recs):.0f} + {ct / len(recs):.0f} "
        f"per reply); generation {t_gen:.0f}s"
    )
    failed = [r for r in with_code if r["status"] == "no_program"]
    for r in failed[:5]:
        print("--- not extracted:", r["error"], "\n" + r["text"][:600])


if __name__ == "__main__":
    main()
