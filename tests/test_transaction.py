"""Nothing the user had is lost: the output transaction, end to end through the command.

Each numbered case of the issue "Nothing lost, no traceback" that concerns outputs has its
test here, written as the failing case first (items 1, 2: full disk and Latin-1 history; 5,
6, 7, 8, 9).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import gemmi
import numpy as np
import pytest

from pattersolve import transaction
from pattersolve.cli import main
from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.transaction import OutputSet

CHEAP = ["--method", "classical", "--cycles", "5", "--starts", "1"]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("pattersolve: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def folder_state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture()
def old_outputs(tmp_path, alaala_mtz, capsys):
    """A folder with data.mtz and a complete old output set (o.map, o.mtz, o.json)."""
    data, _ = alaala_mtz
    code, err = run_cli([data, "-o", tmp_path / "o.map", "--json", tmp_path / "o.json",
                         *CHEAP, "--seed", "1"], capsys)
    assert code == 0, err
    return data, folder_state(tmp_path)


# --- 1. data loss with --overwrite ------------------------------------------------------------
def test_late_failure_keeps_old_outputs(tmp_path, capsys, old_outputs, monkeypatch):
    """The MTZ fails to write after the map was made: the old map, MTZ and JSON stay."""
    from pattersolve import output

    class FullDisk:
        def write_to_file(self, path):
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output, "phased_mtz", lambda *a, **k: FullDisk())
    data, before = old_outputs
    code, err = run_cli([data, "-o", tmp_path / "o.map", "--json", tmp_path / "o.json",
                         *CHEAP, "--overwrite"], capsys)
    assert code == ExitCode.OUTPUT
    assert "No space left on device" in one_error_line(err)
    assert folder_state(tmp_path) == before  # byte-identical, no temporary or lock file


def test_unwritable_json_fails_before_any_work(tmp_path, capsys, old_outputs):
    data, before = old_outputs
    code, err = run_cli([data, "-o", tmp_path / "o.map", "--json",
                         tmp_path / "missing" / "o.json", *CHEAP, "--overwrite"], capsys)
    assert code == ExitCode.OUTPUT and "does not exist" in one_error_line(err)
    assert "read " not in err  # refused before the data were read
    assert folder_state(tmp_path) == before


def test_rename_failure_at_commit_restores_everything(tmp_path, capsys, old_outputs,
                                                      monkeypatch):
    """The second rename into place fails: the first new file is taken back, old restored."""
    real = os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        if str(src).endswith(".tmp"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(transaction.os, "replace", flaky)
    data, before = old_outputs
    code, err = run_cli([data, "-o", tmp_path / "o.map", "--json", tmp_path / "o.json",
                         *CHEAP, "--overwrite"], capsys)
    assert code == ExitCode.OUTPUT and "Input/output error" in one_error_line(err)
    assert calls["n"] == 2
    assert folder_state(tmp_path) == before


def test_interrupt_during_work_keeps_old_outputs(tmp_path, capsys, old_outputs, monkeypatch):
    import pattersolve.api

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pattersolve.api, "_run_method", interrupted)
    data, before = old_outputs
    code, err = run_cli([data, "-o", tmp_path / "o.map", "--json", tmp_path / "o.json",
                         *CHEAP, "--overwrite"], capsys)
    assert code == ExitCode.INTERRUPTED == 130
    assert folder_state(tmp_path) == before


def test_new_set_replaces_old_only_when_complete(tmp_path, capsys, old_outputs):
    data, before = old_outputs
    code, _ = run_cli([data, "-o", tmp_path / "o.map", "--json", tmp_path / "o.json",
                       *CHEAP, "--overwrite", "--seed", "2"], capsys)
    assert code == 0
    after = folder_state(tmp_path)
    assert sorted(after) == sorted(before)
    assert after["o.map"] != before["o.map"] and after["o.mtz"] != before["o.mtz"]


# --- 2. a full disk, for real (a file-size limit makes every write past it fail) ----------------
FULL_DISK = """
import resource, signal, sys
from pattersolve.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_full_disk_while_writing(tmp_path, old_outputs):
    data, before = old_outputs
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(data), "-o",
                          str(tmp_path / "o.map"), "--json", str(tmp_path / "o.json"), *CHEAP,
                          "--overwrite"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == ExitCode.OUTPUT, out.stderr
    assert "could not write" in one_error_line(out.stderr)
    assert folder_state(tmp_path) == before


def test_latin1_history_is_no_crash(tmp_path, capsys, alaala_mtz):
    data, _ = alaala_mtz
    mtz = gemmi.read_mtz_file(str(data))
    mtz.history = ["collected by Ren\u00e9e"]
    mtz.write_to_file(str(data))
    raw = data.read_bytes().replace("Ren\u00e9e".encode(), b"Ren\xe9e ")  # Latin-1 byte
    data.write_bytes(raw)
    code, err = run_cli([data, "-o", tmp_path / "o.map", *CHEAP], capsys)
    assert code == 0, err
    assert "pattersolve" in gemmi.read_mtz_file(str(tmp_path / "o.mtz")).history[0]


# --- 5. the design card's own usage shape ------------------------------------------------------
def test_map_named_like_the_input(tmp_path, capsys, alaala_mtz):
    data, _ = alaala_mtz
    original = data.read_bytes()
    code, err = run_cli([data, "-o", tmp_path / "data.map", *CHEAP], capsys)
    assert code == 0, err
    assert data.read_bytes() == original
    assert (tmp_path / "data_phased.mtz").exists()
    assert "_phased.mtz" in main.__globals__["pattersolve_command"].get_help(
        __import__("click").Context(main.__globals__["pattersolve_command"]))


# --- 6. permissions and what may be replaced -----------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_outputs_follow_the_umask(tmp_path, capsys, alaala_mtz, mask):
    data, _ = alaala_mtz
    old = os.umask(mask)
    try:
        code, _ = run_cli([data, "-o", tmp_path / "o.map", "--json", tmp_path / "o.json",
                           *CHEAP], capsys)
    finally:
        os.umask(old)
    assert code == 0
    for name in ("o.map", "o.mtz", "o.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask


def test_symlink_output_is_refused_even_with_overwrite(tmp_path, capsys, alaala_mtz):
    data, _ = alaala_mtz
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "o.mtz").symlink_to(target)
    code, err = run_cli([data, "-o", tmp_path / "o.map", *CHEAP, "--overwrite"], capsys)
    assert code == ExitCode.OUTPUT and "symbolic link" in one_error_line(err)
    assert (tmp_path / "o.mtz").is_symlink() and target.read_text() == "keep me"
    assert not (tmp_path / "o.map").exists()


def test_fifo_output_is_refused(tmp_path, capsys, alaala_mtz):
    data, _ = alaala_mtz
    os.mkfifo(tmp_path / "o.json")
    code, err = run_cli([data, "-o", tmp_path / "o.map", "--json", tmp_path / "o.json",
                         *CHEAP, "--overwrite"], capsys)
    assert code == ExitCode.OUTPUT and "named pipe" in one_error_line(err)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "o.json").st_mode)


# --- 7. say it early; exit code 130 documented ---------------------------------------------------
def test_warnings_come_before_the_solve(tmp_path, capsys, alaala_mtz):
    data, _ = alaala_mtz
    code, err = run_cli([data, "-o", tmp_path / "o.map", "--method", "chargeflip"], capsys)
    lines = err.splitlines()
    warn = next(i for i, ln in enumerate(lines) if "charge flipping needs atomic" in ln)
    work = next(i for i, ln in enumerate(lines) if ln.startswith("charge flipping:"))
    assert warn < work, err


def test_help_lists_every_exit_code():
    from click.testing import CliRunner

    from pattersolve.cli import pattersolve_command

    text = CliRunner().invoke(pattersolve_command, ["--help"]).output
    for code in ExitCode:
        if code not in (ExitCode.OK, ExitCode.NOT_REPRODUCED):
            assert f"{int(code)} " in text, code


# --- 8. two runs with the same outputs ---------------------------------------------------------
def test_second_run_on_the_same_outputs_fails_at_once(tmp_path, capsys, alaala_mtz):
    data, _ = alaala_mtz
    lock = tmp_path / ".o.mtz.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a first run is writing o.mtz
    try:
        code, err = run_cli([data, "-o", tmp_path / "o.map", *CHEAP], capsys)
    finally:
        os.close(fd)
    assert code == ExitCode.OUTPUT and "another run" in one_error_line(err)
    assert "read " not in err
    assert not (tmp_path / "o.map").exists() and not (tmp_path / ".o.map.lock").exists()


def test_lock_of_a_killed_run_does_not_block(tmp_path):
    (tmp_path / ".o.map.lock").write_text("")  # left by a run killed with SIGKILL
    with OutputSet([tmp_path / "o.map"]) as out:
        out.stage(tmp_path / "o.map", lambda t: Path(t).write_text("x"))
        out.commit()
    assert (tmp_path / "o.map").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.map"]


# --- 9. the input's dataset and wavelength; no reader warns ------------------------------------
def test_output_mtz_keeps_dataset_and_wavelength(tmp_path, capsys, alaala_mtz):
    rs = pytest.importorskip("reciprocalspaceship")
    data, _ = alaala_mtz
    mtz = gemmi.read_mtz_file(str(data))
    ds = mtz.datasets[1]
    ds.wavelength, ds.dataset_name, ds.crystal_name = 0.9763, "peak", "xtal7"
    mtz.write_to_file(str(data))
    code, err = run_cli([data, "-o", tmp_path / "o.map", *CHEAP], capsys)
    assert code == 0, err
    out = gemmi.read_mtz_file(str(tmp_path / "o.mtz"))
    d = out.dataset(out.column_with_label("FWT").dataset_id)
    assert (d.dataset_name, d.crystal_name) == ("peak", "xtal7")
    assert d.wavelength == pytest.approx(0.9763)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = rs.read_mtz(str(tmp_path / "o.mtz"))
    assert np.isfinite(table["PHWT"].to_numpy()).all()


# --- the helper itself ---------------------------------------------------------------------------
def test_outputset_refuses_an_input_as_output(tmp_path):
    data = tmp_path / "in.mtz"
    data.write_text("x")
    with pytest.raises(PattersolveError) as err:
        OutputSet([data], overwrite=True, protect=[data]).claim()
    assert err.value.exit_code == ExitCode.OUTPUT and data.read_text() == "x"


def test_outputset_duplicate_paths(tmp_path):
    with pytest.raises(PattersolveError) as err:
        OutputSet([tmp_path / "a", tmp_path / "." / "a"]).claim()
    assert err.value.exit_code == ExitCode.USAGE
