"""Short real GRPO run (notes/issue28.md): smollm2-135m on basic_arithmetic, 64 training
questions, group 8, one question per step, 48 tokens, lr 2e-5.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/grpo_short_run.py OUT_DIR STEPS``; then
``python benchmarks/grpo_heldout.py OUT_DIR/model 40``.
"""

import sys
import time

from ekt.data.tasks import get_task
from ekt.methods.grpo import grpo_config, train_grpo
from ekt.sandbox.pool import SandboxConfig

out = sys.argv[1]
steps = int(sys.argv[2])
task = get_task("basic_arithmetic")
probs = task.load("train")[:64]
cfg = grpo_config(
    out,
    max_steps=steps,
    num_generations=8,
    per_device_train_batch_size=8,
    max_completion_length=48,
    learning_rate=2e-5,
    save_steps=4,
)
t = time.time()
r = train_grpo("smollm2-135m", probs, task, out, cfg, SandboxConfig(workers=1))
print(r)
print("wall", round(time.time() - t, 1))
