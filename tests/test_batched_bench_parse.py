"""benchmarks/sampling_throughput.py --vs llama.cpp reads llama-batched-bench's table (the
engine's pure batched decode speed, S_TG) and keys converted student GGUFs by their weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The shape llama-batched-bench prints (log lines, then a markdown table, then timings).
OUTPUT = """\
llama_context: n_ctx_seq (752) < n_ctx_train (8192) -- the full capacity of the model will not be
main: n_kv_max = 12032, n_batch = 2048, n_ubatch = 512, flash_attn = -1, is_pp_shared = 1, \
is_tg_separate = 0, n_gpu_layers = -1, n_threads = 2, n_threads_batch = 2

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|   624 |    128 |   16 |  12032 |    1.912 |   326.36 |   30.441 |    67.28 |   32.353 |    82.59 |
|   624 |    128 |   32 |  24064 |    1.905 |   327.56 |   55.010 |    74.46 |   56.915 |    82.93 |

llama_perf_context_print:        load time =     231.52 ms
"""


def _bench():
    spec = importlib.util.spec_from_file_location(
        "sampling_throughput", REPO / "benchmarks" / "sampling_throughput.py"
    )
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_parse_batched_bench_reads_every_row_by_column_name():
    rows = _bench().parse_batched_bench(OUTPUT)
    assert len(rows) == 2
    first = rows[0]
    assert (first["PP"], first["TG"], first["B"], first["N_KV"]) == (624, 128, 16, 12032)
    assert first["S_TG t/s"] == 67.28 and first["T_TG s"] == 30.441
    assert first["S_PP t/s"] == 326.36 and first["S t/s"] == 82.59
    assert rows[1]["B"] == 32 and rows[1]["S_TG t/s"] == 74.46


def test_parse_batched_bench_without_a_table_is_empty():
    bench = _bench()
    assert bench.parse_batched_bench("main: error: unable to load model\n") == []
    header_only = "\n".join(OUTPUT.splitlines()[:5])
    assert bench.parse_batched_bench(header_only) == []


def test_folder_digest_follows_the_weights_not_the_logs(tmp_path):
    bench = _bench()
    a, b = tmp_path / "a", tmp_path / "b"
    for d, weights in ((a, b"\x00\x01"), (b, b"\x00\x02")):  # same names and sizes
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(weights)
    assert bench.folder_digest(a) != bench.folder_digest(b)
    before = bench.folder_digest(a)
    (a / "train_log.jsonl").write_text("{}\n")
    (a / "checkpoints").mkdir()
    (a / "checkpoints" / "model.safetensors").write_bytes(b"x")
    assert bench.folder_digest(a) == before
