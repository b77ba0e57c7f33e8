"""Progress on long work: a line with the time left in logs, nothing with --quiet."""

from __future__ import annotations

import logging

import pytest

from pattersolve import progress, settings
from pattersolve.cli import main


@pytest.fixture()
def immediate(monkeypatch):
    monkeypatch.setattr(settings, "PROGRESS_DELAY", 0.0)
    monkeypatch.setattr(settings, "PROGRESS_EVERY", 0.0)


def test_log_lines_say_how_far_and_how_long(immediate, caplog):
    caplog.set_level(logging.INFO, logger="pattersolve")
    with progress.task("work", 4, "steps") as advance:
        for _ in range(4):
            advance()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-1].startswith("work: 100 % (4 of 4 steps), about 0 s left"), lines
    assert len(lines) == 4


def test_silent_when_quiet(immediate, caplog):
    caplog.set_level(logging.WARNING, logger="pattersolve")
    with progress.task("work", 3) as advance:
        advance(3)
    assert not caplog.records


@pytest.mark.parametrize("quiet", [False, True])
def test_the_command_reports_refinement_progress(immediate, tmp_path, capsys, alaala_mtz,
                                                 quiet):
    data, _ = alaala_mtz
    args = [str(data), "-o", str(tmp_path / "o.map"), "--method", "classical", "--cycles", "5",
            "--starts", "2"] + (["--quiet"] if quiet else [])
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 0
    assert ("refinement: 100 % (2 of 2 starts)" in err) != quiet, err
