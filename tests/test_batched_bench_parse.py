"""benchmarks/sampling_throughput.py --vs llama.cpp reads llama-batched-bench's table (the
engine's pure batched decode speed, S_TG) and keys converted student GGUFs by their weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What llama-batched-bench 0.3.36 printed for -npp 693 -ntg 32 -npl 16 -pps (a second row
# added): a settings line, the markdown table, and (here appended) its stderr log.
OUTPUT = """\
llama_batched_bench: n_kv_max = 12288, n_batch = 2048, n_ubatch = 512, flash_attn = -1, \
is_pp_shared = 1, is_tg_separate = 0, n_gpu_layers = -1, n_threads = 2, n_threads_batch = 2

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|   693 |     32 |   16 |  11600 |    3.559 |   194.72 |    6.652 |    76.97 |   10.211 |   118.01 |
|   693 |     32 |   32 |  23200 |    3.561 |   194.61 |   11.020 |    92.92 |   14.581 |   117.74 |


--- stderr ---
0.00.222.348 W llama_context: n_ctx is not divisible by n_seq_max - rounding down to 12288
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
    assert (first["PP"], first["TG"], first["B"], first["N_KV"]) == (693, 32, 16, 11600)
    assert first["S_TG t/s"] == 76.97 and first["T_TG s"] == 6.652
    assert first["S_PP t/s"] == 194.72 and first["S t/s"] == 118.01
    assert rows[1]["B"] == 32 and rows[1]["S_TG t/s"] == 92.92


def test_parse_batched_bench_without_a_table_is_empty():
    bench = _bench()
    assert bench.parse_batched_bench("main: error: unable to load model\n") == []
    header_only = "\n".join(OUTPUT.splitlines()[:4])  # the header and separator, no row
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
