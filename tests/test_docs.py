"""The examples users read run: README's Python block and every docstring example.

Also: README stays a user's page (at most ~200 lines), ``import pattersolve`` stays light, and
no docstring points to files outside the repository.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pattersolve

REPO = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_example_runs(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    blocks = python_blocks((REPO / "README.md").read_text())
    assert blocks, "README has no Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "classical P 1 (20, 20, 20)" in out
    assert "['solved.json', 'solved.map', 'solved.mtz']" in out


def test_readme_is_a_users_page():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("name", sorted(m.name for m in pkgutil.iter_modules(
    pattersolve.__path__, "pattersolve.")))
def test_docstring_examples_run(name, monkeypatch):
    monkeypatch.chdir(REPO)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_package_docstring_example_runs(monkeypatch):
    monkeypatch.chdir(REPO)
    assert doctest.testmod(pattersolve).failed == 0


def test_phase_does_not_import_torch():
    code = ("import sys, pattersolve\n"
            "s = pattersolve.phase('share/examples/alaala_1akz.mtz', method='classical', "
            "starts=1, cycles=20)\n"
            "s.to_mtz()\n"
            "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_no_docstring_points_outside_the_repository():
    for path in sorted((REPO / "pattersolve").glob("*.py")):
        assert "../shared" not in path.read_text(), path
