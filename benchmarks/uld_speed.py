"""ULD distance on the embedded pair's vocabularies: sorting whole rows vs the top-m heads.

    python benchmarks/uld_speed.py [--rows 256] [--repeats 3]

Prints the seconds per call (forward and the student's backward) of the distance as
``ekt.training.kd.uld_per_position`` computes it (the top ``m`` of each side, ``m`` the
smaller vocabulary) and as the definition reads (both whole rows sorted, the shorter
zero-padded), measured one after the other in the same process, and the largest difference
of their values. Rows are random logits with SmolLM2's (49,152) and Gemma 3's (262,144)
vocabulary sizes.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ekt.training.kd import uld_per_position

V_STUDENT, V_TEACHER = 49_152, 262_144


def by_definition(s: torch.Tensor, t: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    out = []
    for i in range(0, s.shape[0], chunk):
        ps = torch.softmax(s[i : i + chunk].float(), -1).sort(-1, descending=True).values
        with torch.no_grad():
            pt = torch.softmax(t[i : i + chunk].float(), -1).sort(-1, descending=True).values
        m = ps.shape[-1]
        out.append((ps - pt[:, :m]).abs().sum(-1) + pt[:, m:].sum(-1))
    return torch.cat(out)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, s, t, repeats: int) -> tuple[float, torch.Tensor]:
    best = float("inf")
    for _ in range(repeats):
        x = s.detach().requires_grad_(True)
        t0 = time.perf_counter()
        d = fn(x, t)
        d.sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best, d.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    s = torch.randn(a.rows, V_STUDENT, generator=g) * 3
    t = torch.randn(a.rows, V_TEACHER, generator=g) * 3
    top_s, top_d = timed(lambda x, y: uld_per_position(x, y), s, t, a.repeats)
    def_s, def_d = timed(by_definition, s, t, a.repeats)
    print(f"cpu={cpu_name()} threads={torch.get_num_threads()}")
    print(
        f"rows={a.rows} whole_sort_s={def_s:.3f} top_m_s={top_s:.3f} "
        f"speedup={def_s / top_s:.2f}x max_abs_diff={(top_d - def_d).abs().max().item():.2e}"
    )


if __name__ == "__main__":
    main()
