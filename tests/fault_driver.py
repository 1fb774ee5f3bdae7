"""A process for the fault tests: ``python fault_driver.py STAGES URL OUT DATA_DIR``.

Runs ekt's generate stage against the teacher at URL into OUT (STAGES ``generate``) and
then verifies it into OUT/executions.jsonl (``generate,verify``), as ``ekt generate`` and
``ekt verify`` do, without the CLI's start-up time. Prints ``ok`` and the summaries, or,
for a user's error, one line ``error: ...`` and exits 2 (the CLI's code).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ekt.data.tasks import get_task
from ekt.errors import user_message
from ekt.generation.backends import BackendConfig
from ekt.generation.backends.openai_compat import OpenAISampler
from ekt.generation.config import SamplingParams
from ekt.generation.generate import GenerateSettings, generate
from ekt.verification.verify import verify

PARAMS = SamplingParams(n=3, temperature=1.0, max_new_tokens=16, seed=11)
SHARD = 2


def main(stages: str, url: str, out: str, data_dir: str) -> int:
    task = get_task("gsm8k", data_dir)
    problems = task.load("train")
    try:
        if "generate" in stages:
            backend = BackendConfig("openai", base_url=url, concurrency=2, request_timeout=10.0)
            sampler = OpenAISampler("fake", backend, backoff=0.05, max_backoff=0.2,
                                    progress=False)  # fmt: skip
            s = generate(
                sampler,
                problems,
                out,
                PARAMS,
                GenerateSettings(prompt="student", shard_size=SHARD),
            )
            print(s.line(), flush=True)
        if "verify" in stages:
            v = verify(out, Path(out) / "executions.jsonl", task, progress=False)
            print(v.line(), flush=True)
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise
        print(f"error: {message}", flush=True)
        return 2
    print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
