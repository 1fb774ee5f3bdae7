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
    from tiny_models import make_tiny_model

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


@pytest.fixture(autouse=True, scope="module")
def _close_helper_processes():
    """The procedural helper (generation and checking) lives for the process, like ekt's; a
    test module leaves none behind, so the sandbox tests' "nothing outlived it" holds."""
    yield
    from ekt.data import procedural

    if procedural._CHECKER is not None:
        procedural._CHECKER.close()


def pytest_collection_modifyitems(config, items):
    """The tests marked slow first (in their files' order, then the rest in theirs): with the
    suite spread over workers (``make test``: pytest-xdist), a long test started last would
    keep one worker busy while the others idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
