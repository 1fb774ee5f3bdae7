"""ekt: explicit knowledge transfer of code generation from a teacher LM to a small student."""

import os as _os

# torch's CPU thread pool (libgomp) spins at every barrier by default; on a CPU shared with
# other processes a spinning thread takes the core from the one doing the work, and the
# sampler's decode step (hundreds of small parallel regions) runs 2-4x slower. Passive waiting
# is what llama-server's `--poll 0` does for the same reason. libgomp reads this once, when
# torch is first imported, so it is set here, before any ekt module imports torch; a value
# already in the environment wins (OMP_WAIT_POLICY=ACTIVE restores spinning).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
