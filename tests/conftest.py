import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Short word problems for the sampler and backend tests (no gold answers needed).
TOY_QUESTIONS = [
    "Julie has 12 pages to read and reads 3 a day. How many days does she need?",
    "Mark has 10 yellow flowers and 80% more purple ones. How many purple flowers?",
    "Randy has 60 mango trees. How many trees in all?",
    "Joy reads 8 pages in 20 minutes. How many hours for 120 pages?",
    "A ball costs $2. How much do 5 balls cost?",
    "Tom has 3 boxes of 7 pens. How many pens?",
]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """GSM8K folder from EKT_DATA_DIR (the Makefile and CI set it to ../shared/data/gsm8k)."""
    d = os.environ.get("EKT_DATA_DIR")
    if not d:
        pytest.skip("EKT_DATA_DIR is not set; run through `make test`")
    p = Path(d)
    if not (p / "train.jsonl").is_file():
        pytest.fail(f"EKT_DATA_DIR={d} has no train.jsonl")
    return p


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from ekt.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def amplified_model(src: Path, out: Path, scale: float, chat_template: str | None = None) -> Path:
    """The tiny model with its residual branches scaled by ``scale``: other weights, same
    shapes, so its samples differ from the original's (and, scaled up, vary and run long)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                w.mul_(scale)
    model.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(src)
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(out)
    return out


# Tests in other engineers' files that take several seconds each here (pytest --durations on
# the 2-core machine): `make test-fast` (-m "not slow") skips them, `make test` runs them.
# Tests in the files that mark their own use @pytest.mark.slow in place.
SLOW_TESTS = {
    "tests/test_sampling.py::test_preset_greedy_equals_generate_with_packing",
    "tests/test_sampling.py::test_preset_writes_a_program",
    "tests/test_sampling.py::test_order_and_subset_do_not_change_a_problem",
    "tests/test_sampling.py::test_n_records_per_problem",
    "tests/test_sampling.py::test_same_seed_same_records_other_seed_differs",
    "tests/test_sampling.py::test_greedy_equals_model_generate",
    "tests/test_sampling.py::test_token_healing",
    "tests/test_sampling.py::test_shared_prefix_computed_once_and_matches_padded_path",
    "tests/test_models.py::test_preset_conversion_matches_the_gguf",
    "tests/test_models.py::test_preset_tokenizers_special_tokens",
    "tests/test_models.py::test_bogus_hub_id_fails_fast_with_ekt_error",
    "tests/test_openai_backend.py::test_server_killed_mid_job_output_complete",
    "tests/test_report.py::test_ekt_run_ends_with_intervals_and_report",
    "tests/test_report.py::test_report_renders_in_headless_chromium",
    "tests/test_packing.py::test_lora_and_gradient_checkpointing_give_a_plain_checkpoint",
    "tests/test_packing.py::test_packed_training_follows_the_unpacked_trajectory",
    "tests/test_sandbox.py::test_oracle_corpus_through_ekt_verify",
    "tests/test_llamacpp_backend.py::test_llamacpp_backend_samples_a_preset_end_to_end",
    "tests/test_llamacpp_backend.py::"
    "test_a_transformers_folder_is_converted_once_by_llama_cpps_converter",
}


# whole files that start real servers (llama-server, transformers serve), train with TRL or
# rerun the sandbox suite without CAP_SYS_ADMIN: `make test` runs them, `make test-fast` not
SLOW_FILES = {
    "tests/test_llama_server.py",
    "tests/test_chat_server.py",
    "tests/test_openai_backend.py",
    "tests/test_export.py",
    "tests/test_sandbox_hostile2.py",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        node = item.nodeid.split("[", 1)[0]
        if node in SLOW_TESTS or node.split("::", 1)[0] in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="module")
def _close_helper_processes():
    """The procedural helper (generation and checking) lives for the process, like ekt's; a
    test module leaves none behind, so the sandbox tests' "nothing outlived it" holds."""
    yield
    from ekt.data import procedural

    if procedural._CHECKER is not None:
        procedural._CHECKER.close()
