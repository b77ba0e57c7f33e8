"""The house rules that keep the code readable: short functions, few top-level configs.

No function in ``pattersolve/`` or ``training/`` has more than 80 lines of body (docstring
excluded); ``training/configs/`` holds at most 12 configs at its top level.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_BODY_LINES = 80


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the function's end."""
    body = node.body
    first = body[0]
    is_doc = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
              and isinstance(first.value.value, str))
    start = body[1].lineno if is_doc and len(body) > 1 else first.lineno
    return node.end_lineno - start + 1


def long_functions(paths: list[Path], limit: int = MAX_BODY_LINES) -> list[str]:
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = body_lines(node)
                if n > limit:
                    out.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_long_functions():
    paths = sorted((REPO / "pattersolve").glob("*.py")) + sorted(
        (REPO / "training").rglob("*.py"))
    assert not long_functions(paths), long_functions(paths)


def test_the_checker_counts_body_lines(tmp_path):
    f = tmp_path / "f.py"
    f.write_text('def f():\n    """Doc."""\n' + "    x = 1\n" * 81 + "\n\ndef g():\n    return 1\n")
    assert long_functions([f]) == ["f.py:1 f (81 lines)"]


def test_training_configs_top_level():
    configs = sorted((REPO / "training" / "configs").glob("*.toml"))
    assert len(configs) <= 12, [c.name for c in configs]
