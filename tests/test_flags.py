"""Every ``--flag`` that a message, a help text or a docstring quotes exists.

A user told to pass ``--grid-spacing`` by an error message, when no such option exists, is
stuck; this test reads every string literal in the package and checks each flag it quotes
against the options the commands really have.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click

from pattersolve.cli import pattersolve_command
from pattersolve.cli_phasematch import main as phasematch_command

REPO = Path(__file__).resolve().parents[1]
#: Flags of other programs that the training tree's help quotes (torchrun launches it).
OTHER_PROGRAMS = {"nproc-per-node", "nproc_per_node", "nnodes", "node-rank", "rdzv-endpoint",
                  "rdzv-backend", "standalone"}
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9_-]*)")


def command_flags(*commands: click.Command) -> set[str]:
    flags = {"help", "version"}
    for cmd in commands:
        for param in cmd.params:
            for opt in [*param.opts, *getattr(param, "secondary_opts", [])]:
                if opt.startswith("--"):
                    flags.add(opt[2:])
    return flags


def quoted_flags(paths: list[Path]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for flag in FLAG.findall(node.value):
                    found.setdefault(flag, set()).add(path.name)
    return found


def test_flags_quoted_by_the_tool_exist():
    known = command_flags(pattersolve_command, phasematch_command)
    paths = sorted((REPO / "pattersolve").glob("*.py"))
    missing = {f: sorted(where) for f, where in quoted_flags(paths).items() if f not in known}
    assert not missing, f"quoted but no such option: {missing}"


def test_flags_quoted_by_the_training_tree_exist():
    from pattersolve_train.cli import cli as train_group

    known = command_flags(pattersolve_command, phasematch_command) | OTHER_PROGRAMS
    for cmd in train_group.commands.values():
        known |= command_flags(cmd)
    paths = sorted((REPO / "training" / "pattersolve_train").glob("*.py"))
    missing = {f: sorted(where) for f, where in quoted_flags(paths).items() if f not in known}
    assert not missing, f"quoted but no such option: {missing}"


def test_the_checker_catches_a_missing_flag(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('MSG = "use --grid-spacing 0.5"\n')
    assert "grid-spacing" in quoted_flags([bad])
