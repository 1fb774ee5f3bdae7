import ast
import math
import operator

import pytest

from ekt.data.prompts import PROGRAM_HEADER
from ekt.data.supervised import parse_arithmetic, reference_pairs, reference_program
from ekt.data.tasks import get_task
from ekt.records import Problem

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def _value(node: ast.AST, env: dict[str, float]) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _value(node.operand, env)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_value(node.left, env), _value(node.right, env))
    raise AssertionError(f"unexpected node {ast.dump(node)}")


def run_reference(program: str) -> float:
    """Evaluate a reference program by walking its ast (only the shapes it may contain)."""
    tree = ast.parse(program)
    assert len(tree.body) == 1 and isinstance(tree.body[0], ast.FunctionDef)
    fn = tree.body[0]
    assert fn.name == "solution" and not fn.args.args
    env: dict[str, float] = {}
    for stmt in fn.body[:-1]:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
        assert isinstance(stmt.targets[0], ast.Name)
        env[stmt.targets[0].id] = _value(stmt.value, env)
    ret = fn.body[-1]
    assert isinstance(ret, ast.Return) and isinstance(ret.value, ast.Name)
    return env[ret.value.id]


SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)


def test_program_from_annotations_reuses_earlier_steps():
    prog = reference_program(SOLUTION)
    assert prog == (
        PROGRAM_HEADER + "    step1 = 48 / 2\n    step2 = 48 + step1\n    return step2\n"
    )
    compile(prog, "<program>", "exec")
    assert run_reference(prog) == 72


def test_small_literals_stay_literal_and_latest_step_wins():
    text = "<<3*4=12>> <<12*2=24>> <<24-12=12>> <<100-24=76>> <<12+1=13>> #### 13"
    prog = reference_program(text)
    assert "step2 = 12 * 2" in prog  # 12 is small: left as written
    assert "step4 = 100 - step2" in prog
    assert run_reference(prog) == 13


def test_cleaning_commas_dollars_x_and_leading_zeros():
    prog = reference_program("<<$1,200x3=3600>> <<05+0.5=5.5>> <<-2**2=-4>> #### -4")
    assert "step1 = 1200 * 3" in prog
    assert "step2 = 5 + 0.5" in prog
    assert run_reference(prog) == -4


def test_answer_from_an_earlier_step_drops_later_steps():
    text = "<<6*7=42>> <<42/2=21>> So the answer is 42.\n#### 42"
    prog = reference_program(text)
    assert prog.endswith("    step1 = 6 * 7\n    return step1\n")
    # without a final-answer line the last step is returned
    assert reference_program("<<6*7=42>> <<42/2=21>>").endswith("return step2\n")


@pytest.mark.parametrize(
    "text",
    [
        "no annotations here\n#### 5",
        "",
        "<<abs(-3)=3>>",
        "<<a+b=3>> <<1+2=3>>",
        "<<__import__('os').system('true')=0>>",
        "<<'ab'*2=abab>>",
        "<<(1,2)[0]=1>>",
        "<<1 if 1 else 2=1>>",
        "<<2+3j=2>>",
        "<<[1][0]=1>>",
        "<<lambda: 1=1>>",
        "<<2+=3>>",
    ],
)
def test_none_without_plain_arithmetic(text):
    assert reference_program(text) is None


def test_parse_arithmetic_accepts_only_arithmetic():
    assert parse_arithmetic("(1+2)*3//4%5-6**2/7") is not None
    for bad in ("x", "1<2", "not 1", "~1", "1 and 2", "f(1)", "1;2", "1\n2", "()"):
        assert parse_arithmetic(bad) is None, bad


def test_reference_pairs():
    problems = [
        Problem("gsm8k/train/0", "q0", 72.0, "train", SOLUTION),
        Problem("gsm8k/train/1", "q1", 5.0, "train", "no steps #### 5"),
    ]
    pairs = reference_pairs(problems)
    assert [(p.problem_id, p.question, p.source) for p in pairs] == [
        ("gsm8k/train/0", "q0", "supervised")
    ]
    assert pairs[0].program == reference_program(SOLUTION)


# Measured on the GSM8K train file (7,468 questions after exemplar exclusion): a program
# for 7,373 (98.7%), of which 7,009 (93.9% of all) return the gold answer; the rest end
# with an unannotated step. The threshold leaves a little room.
MIN_CORRECT_FRACTION = 0.93


def test_gsm8k_train_coverage(data_dir):
    problems = get_task("gsm8k", data_dir=str(data_dir)).load("train")
    made = correct = 0
    for p in problems:
        prog = reference_program(p.solution)
        if prog is None:
            assert "<<" not in p.solution, p.id
            continue
        made += 1
        compile(prog, p.id, "exec")
        try:
            value = run_reference(prog)
        except (ZeroDivisionError, OverflowError):
            continue
        if math.isclose(value, p.answer, rel_tol=1e-6, abs_tol=1e-4):
            correct += 1
    fraction = correct / len(problems)
    print(f"reference programs: {made}/{len(problems)} made, {correct} correct ({fraction:.2%})")
    assert made / len(problems) > 0.98
    assert fraction > MIN_CORRECT_FRACTION, fraction
