"""ekt: explicit knowledge transfer of code generation from a teacher LM to a small student."""

import os as _os

# torch's CPU thread pool (libgomp) spins at every barrier by default (300,000 turns) and
# OMP_WAIT_POLICY=ACTIVE spins for good: on a CPU shared with other processes a spinning
# thread takes the core from the one doing the work, and the sampler's decode step (hundreds
# of small parallel regions) ran 2-4x slower. Passive waiting (no spin) costs a quarter on a
# quiet machine instead, each region waking its sleeping threads. A short spin between the
# step's back-to-back regions keeps most of both (gemma3-270m decode, 2-core EPYC, medians of
# alternating runs: quiet 103 tokens/s passive, 130 with 5,000 turns, 128 active; with two
# busy processes on the cores 59 passive, 46 with 5,000 turns, 26 active). libgomp reads
# these once, when torch is first imported, so they are set here, before any ekt module
# imports torch. A value already in the environment wins: OMP_WAIT_POLICY=PASSIVE for a
# crowded machine, ACTIVE (or a larger GOMP_SPINCOUNT) for a dedicated one. KMP_BLOCKTIME is
# the same bound (1 ms) for LLVM's and Intel's OpenMP runtimes (torch on macOS), not measured
# here.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "5000"
    _os.environ.setdefault("KMP_BLOCKTIME", "1")

__version__ = "0.1.0"
