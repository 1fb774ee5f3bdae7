"""The stdlib HTTP client of ekt's openai backend against the OpenAI Python SDK, on a real server.

Both send the same chat requests (``max_tokens`` small, so the figure is the client's cost
and the server's per-request overhead, not decoding) to an OpenAI-compatible server
already running at ``--base-url``, with the same concurrency, and print requests per
second and the client CPU seconds per request.

    python benchmarks/openai_client.py --base-url http://127.0.0.1:8000/v1 --requests 64
"""

from __future__ import annotations

import argparse
import resource
import time
from concurrent.futures import ThreadPoolExecutor


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", default="m")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=2)
    args = ap.parse_args()

    from ekt.generation.backends import BackendConfig
    from ekt.generation.backends.openai_compat import OpenAISampler
    from ekt.generation.config import SamplingParams

    reqs = [
        (f"q{i}", [{"role": "user", "content": f"What is {i} plus {i}? Answer briefly."}])
        for i in range(args.requests)
    ]
    params = SamplingParams(n=1, temperature=0.7, max_new_tokens=args.max_tokens, stop=())

    def ekt_client() -> None:
        backend = BackendConfig(
            "openai", base_url=args.base_url, api="chat", concurrency=args.concurrency
        )
        s = OpenAISampler(args.model, backend, progress=False)
        assert len(list(s.sample(reqs, params))) == len(reqs)

    def sdk_client() -> None:
        from openai import OpenAI

        client = OpenAI(base_url=args.base_url, api_key="none", max_retries=8)

        def one(r):
            out = client.chat.completions.create(
                model=args.model, messages=r[1], max_tokens=args.max_tokens, temperature=0.7
            )
            return out.choices[0].message.content

        with ThreadPoolExecutor(args.concurrency) as pool:
            assert len(list(pool.map(one, reqs))) == len(reqs)

    for name, fn in (("ekt stdlib client", ekt_client), ("openai SDK", sdk_client)) * 2:
        c0, t0 = _cpu(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
        print(
            f"{name:18s} {args.requests} requests: {wall:6.2f}s, "
            f"{args.requests / wall:6.1f} req/s, client CPU {1000 * cpu / args.requests:.2f} ms/req"
        )


if __name__ == "__main__":
    main()
