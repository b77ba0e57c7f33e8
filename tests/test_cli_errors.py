"""Bad input: one line naming the problem and the fix, a distinct exit code, no traceback,
and no output file left behind."""

from __future__ import annotations

import subprocess
import sys

import gemmi
import numpy as np
import pytest

from pattersolve import synthetic
from pattersolve.cli import main
from pattersolve.errors import ExitCode


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    return exc.value.code, err


def assert_one_line_error(code, err, expected):
    assert code == int(expected), err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("pattersolve: error:")]
    assert len(lines) == 1, err
    assert "fix:" in lines[0]
    assert "Traceback" not in err


def test_missing_file(tmp_path, capsys):
    code, err = run_cli([tmp_path / "nope.mtz", "-o", tmp_path / "o.map"], capsys)
    assert_one_line_error(code, err, ExitCode.INPUT_MISSING)
    assert list(tmp_path.iterdir()) == []


def test_directory_as_input(tmp_path, capsys):
    d = tmp_path / "adir.mtz"
    d.mkdir()
    code, err = run_cli([d, "-o", tmp_path / "o.map"], capsys)
    assert code in (int(ExitCode.INPUT_MISSING), 2)
    assert "Traceback" not in err
    assert not (tmp_path / "o.map").exists()


def test_not_an_mtz(tmp_path, capsys):
    bad = tmp_path / "bad.mtz"
    bad.write_bytes(b"\x00\x01 definitely not an MTZ" * 10)
    code, err = run_cli([bad, "-o", tmp_path / "o.map"], capsys)
    assert_one_line_error(code, err, ExitCode.INPUT_FORMAT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mtz"]


def test_no_usable_column(tmp_path, capsys, alaala):
    p = tmp_path / "phi.mtz"
    synthetic.write_data_mtz(p, alaala.placement.cell, alaala.hkl,
                             [("PHIC", "P", np.angle(alaala.f))])
    code, err = run_cli([p, "-o", tmp_path / "o.map"], capsys)
    assert_one_line_error(code, err, ExitCode.COLUMNS)


def test_ambiguous_columns(tmp_path, capsys, alaala):
    p = tmp_path / "amb.mtz"
    a = np.abs(alaala.f)
    synthetic.write_data_mtz(p, alaala.placement.cell, alaala.hkl,
                             [("F1", "F", a), ("F2", "F", a)])
    code, err = run_cli([p, "-o", tmp_path / "o.map"], capsys)
    assert_one_line_error(code, err, ExitCode.COLUMNS)
    assert "F1" in err and "F2" in err and "--f-label" in err


def test_all_nan(tmp_path, capsys, alaala):
    p = tmp_path / "nan.mtz"
    synthetic.write_data_mtz(p, alaala.placement.cell, alaala.hkl,
                             [("FP", "F", np.full(len(alaala.hkl), np.nan))])
    code, err = run_cli([p, "-o", tmp_path / "o.map"], capsys)
    assert_one_line_error(code, err, ExitCode.DATA)


def test_no_reflections_left(tmp_path, capsys):
    """Only F000 (never usable), or everything cut away by --d-min/--d-max."""
    p = tmp_path / "empty.mtz"
    synthetic.write_data_mtz(p, gemmi.UnitCell(10, 10, 10, 90, 90, 90),
                             np.zeros((1, 3)), [("FP", "F", np.ones(1))])
    code, err = run_cli([p, "-o", tmp_path / "o.map"], capsys)
    assert_one_line_error(code, err, ExitCode.DATA)


def test_zero_byte_file(tmp_path, capsys):
    p = tmp_path / "zero.mtz"
    p.write_bytes(b"")
    code, err = run_cli([p, "-o", tmp_path / "o.map"], capsys)
    assert_one_line_error(code, err, ExitCode.INPUT_FORMAT)


def test_grid_too_large(tmp_path, capsys):
    cell = gemmi.UnitCell(1500, 1500, 1500, 90, 90, 90)
    hkl = np.array([[h, 0, 0] for h in range(1, 13)] + [[1000, 0, 0], [0, 1400, 3]])
    p = tmp_path / "huge.mtz"
    synthetic.write_data_mtz(p, cell, hkl, [("FP", "F", np.ones(len(hkl)))])
    code, err = run_cli([p, "-o", tmp_path / "o.map"], capsys)
    assert_one_line_error(code, err, ExitCode.RESOURCES)
    assert "GiB" in err and "--d-min" in err


def test_existing_output_kept(tmp_path, capsys, alaala_mtz):
    data, _ = alaala_mtz
    out = tmp_path / "o.map"
    out.write_text("the user's old map")
    code, err = run_cli([data, "-o", out, "--method", "classical"], capsys)
    assert_one_line_error(code, err, ExitCode.OUTPUT)
    assert out.read_text() == "the user's old map"
    assert not (tmp_path / "o.mtz").exists()


def test_unwritable_output(tmp_path, capsys, alaala_mtz):
    data, _ = alaala_mtz
    code, err = run_cli([data, "-o", tmp_path / "no" / "such" / "o.map"], capsys)
    assert_one_line_error(code, err, ExitCode.OUTPUT)


def test_bad_model(tmp_path, capsys, alaala_mtz):
    data, _ = alaala_mtz
    code, err = run_cli([data, "-o", tmp_path / "o.map", "--model", "no-such-model"], capsys)
    assert_one_line_error(code, err, ExitCode.MODEL)
    assert not (tmp_path / "o.map").exists()


def test_bad_cell_flag(tmp_path, capsys, alaala_mtz):
    data, _ = alaala_mtz
    code, err = run_cli([data, "-o", tmp_path / "o.map", "--cell", "1,2"], capsys)
    assert_one_line_error(code, err, ExitCode.USAGE)


def test_help_is_fast_and_has_examples():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "pattersolve.cli", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "Examples:" in out.stdout and "--method" in out.stdout
    imported = out.stderr
    assert " torch" not in imported and "onnxruntime" not in imported


def test_failure_while_writing_leaves_no_outputs(tmp_path, capsys, alaala_mtz, monkeypatch):
    """The map is staged first; if the MTZ then fails (disk full, say), the map goes too."""
    import errno

    from pattersolve import output

    class FullDisk:
        def write_to_file(self, path):
            open(path, "wb").write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output, "phased_mtz", lambda *a, **k: FullDisk())
    data, _ = alaala_mtz
    code, err = run_cli([data, "-o", tmp_path / "o.map", "--method", "classical",
                         "--cycles", "20", "--starts", "1"], capsys)
    assert_one_line_error(code, err, ExitCode.OUTPUT)
    assert not (tmp_path / "o.map").exists() and not (tmp_path / "o.mtz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.mtz", "truth.mtz"]


def test_corrupt_model_file(tmp_path, capsys, alaala_mtz):
    import shutil

    from pattersolve.runtime import resolve_model

    copy = tmp_path / "model"
    shutil.copytree(resolve_model("alaala-10A").path, copy)
    weights = copy / "model.onnx"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    data, _ = alaala_mtz
    code, err = run_cli([data, "-o", tmp_path / "o.map", "--model", copy, "--backend", "onnx"],
                        capsys)
    assert_one_line_error(code, err, ExitCode.MODEL)
    assert "checksum" in err
    assert not (tmp_path / "o.map").exists() and not (tmp_path / "o.mtz").exists()
