"""``pattersolve-train curves``: learning curves read from run folders, drawn to a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pattersolve_train.cli import main
from pattersolve_train.curves import read_curves

pytest.importorskip("matplotlib")


def _run(folder: Path, batch: int, accum: int, rows: list[dict]) -> Path:
    """A run folder as `fit` leaves it (only the files `curves` reads)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"name": "recipe", "batch_size": batch,
                                                    "grad_accum": accum}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_curves_in_examples_seen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tmp_path / "a", 8, 2, [{"step": 10, "train_loss": 0.5},
                                     {"step": 20, "train_loss": 0.3, "val_cc": 0.61},
                                     {"step": 30, "train_loss": 0.2, "val_cc": 0.72}])
    b = _run(tmp_path / "b", 4, 1, [{"step": 10, "train_loss": 0.9}])
    curves = read_curves(a)
    assert curves.validation == [(320, 0.61), (480, 0.72)]  # steps x 8 x 2
    assert curves.training[0] == (160, 0.5) and curves.name == "recipe"
    out = tmp_path / "plots" / "curves.png"
    assert main(["curves", str(a), str(b), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{a}: last validation CC 0.7200 after 480 examples"
    assert lines[1] == f"{b}: no validation CC logged yet"


def test_curves_refuses_what_is_not_a_run(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "curves.png"
    assert main(["curves", str(tmp_path / "missing"), "--out", str(out)]) == 3
    assert "is not a training run" in capsys.readouterr().err
    bad = _run(tmp_path / "bad", 8, 1, [])
    (bad / "config.json").write_text("{}")  # no batch size
    assert main(["curves", str(bad), "--out", str(out)]) == 4
    assert "unreadable" in capsys.readouterr().err and not out.exists()
