"""Bad input fails at read time: one line naming the problem and the fix, a documented exit code.

Header text gemmi cannot decode (Latin-1 bytes), cells that are no cell or too small for the
data, mmCIF blocks without ``_cell``, data that are all zero, SHELX sigmas <= 0 and lines
with impossible indices; and :func:`read_reflections` on a :class:`gemmi.Mtz` in memory.
"""

from __future__ import annotations

import gzip
import re

import gemmi
import numpy as np
import pytest

from pattersolve.cli import main
from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.formats import cell_problem, read_sf_cif, read_shelx_hkl_with_stats
from pattersolve.reflections import (
    ascii_text,
    load_mtz,
    mtz_text_fields,
    read_reflections,
    safe_history,
)

CELL = (9.0, 7.5, 10.0, 90.0, 101.0, 90.0)
CELL_ARG = ",".join(f"{x:g}" for x in CELL)


def _hkl_in_p1(d_min: float = 2.0) -> np.ndarray:
    from pattersolve.fourier import miller_sphere

    return miller_sphere(gemmi.UnitCell(*CELL), d_min, half=True)


def _amplitudes(hkl: np.ndarray) -> np.ndarray:
    """Smooth positive amplitudes with some contrast (no structure needed to read them)."""
    return 10.0 + 5.0 * np.cos(hkl @ np.array([0.7, 1.3, 0.4]))


def _mtz(hkl: np.ndarray, columns: list[tuple[str, str, np.ndarray]],
         cell: tuple[float, ...] = CELL, sg: str = "P 1") -> gemmi.Mtz:
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = gemmi.SpaceGroup(sg)
    mtz.set_cell_for_all(gemmi.UnitCell(*cell))
    ds = mtz.add_dataset("DATASETNAME")
    ds.project_name, ds.crystal_name = "PROJECTNAME", "CRYSTALNAME"
    for label, typ, _ in columns:
        mtz.add_column(label, typ)
    data = np.column_stack([hkl.astype(np.float64)] + [np.asarray(v, float) for *_, v in columns])
    mtz.set_data(data.astype(np.float32))
    mtz.title = "TITLETEXT"
    mtz.history = ["HISTORYLINE one", "second line"]
    return mtz


def _fp_mtz(hkl: np.ndarray | None = None, **kw) -> gemmi.Mtz:
    hkl = _hkl_in_p1() if hkl is None else hkl
    amp = _amplitudes(hkl)
    return _mtz(hkl, [("FP", "F", amp), ("SIGFP", "Q", 0.05 * amp)], **kw)


def _write(mtz: gemmi.Mtz, path, replace: dict[bytes, bytes] | None = None):
    mtz.write_to_file(str(path))
    if replace:
        raw = path.read_bytes()
        for old, new in replace.items():
            assert old in raw, old
            raw = raw.replace(old, new)
        path.write_bytes(raw)
    return path


def _set_record(path, key: bytes, text: str) -> None:
    """Replace the 80-byte header record starting with ``key``."""
    raw = bytearray(path.read_bytes())
    start = (int.from_bytes(raw[4:8], "little") - 1) * 4
    i = raw.index(key, start)
    raw[i:i + 80] = text.encode("latin-1").ljust(80)[:80]
    path.write_bytes(bytes(raw))


def _error(call) -> PattersolveError:
    with pytest.raises(PattersolveError) as info:
        call()
    return info.value


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, capsys.readouterr().err


def assert_one_line(code, err, expected):
    assert code == int(expected), err
    lines = [ln for ln in err.strip().splitlines() if "error:" in ln]
    assert len(lines) == 1 and "fix:" in lines[0], err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# header text
# ---------------------------------------------------------------------------------------------
LATIN1 = {b"HISTORYLINE one": b"HISTORYLIN\xc9 one", b"TITLETEXT": b"TITL\xc9TEXT",
          b"CRYSTALNAME": b"CRYST\xe9LNAME", b"DATASETNAME": b"DATAS\xe9TNAME"}


def test_latin1_header_bytes_break_gemmi_text_access(tmp_path):
    """The reported bug: gemmi reads the file, then raises when Python asks for the text."""
    p = _write(_fp_mtz(), tmp_path / "latin1.mtz", LATIN1)
    mtz = gemmi.read_mtz_file(str(p))
    for get in (lambda: mtz.history, lambda: mtz.title, lambda: mtz.datasets[1].crystal_name):
        with pytest.raises(UnicodeDecodeError):
            get()


def test_latin1_header_text_is_read_and_made_safe(tmp_path):
    p = _write(_fp_mtz(), tmp_path / "latin1.mtz", LATIN1)
    fields = mtz_text_fields(gemmi.read_mtz_file(str(p)))
    assert fields["title"] == "TITLETEXT"  # b"\xc9" is Latin-1 for E acute
    assert fields["history"] == ["HISTORYLINE one", "second line"]
    assert fields["datasets"][1] == {"id": 1, "project": "PROJECTNAME", "crystal": "CRYSTeLNAME",
                                     "dataset": "DATASeTNAME"}
    assert fields["columns"] == ["H", "K", "L", "FP", "SIGFP"]
    assert safe_history(gemmi.read_mtz_file(str(p))) == fields["history"]
    refl = read_reflections(p)
    assert refl.mtz.history == fields["history"] and refl.mtz.title == "TITLETEXT"
    assert refl.mtz.datasets[1].crystal_name == "CRYSTeLNAME"
    assert any("header text kept as ASCII" in n and "history" in n for n in refl.summary["notes"])
    # the safe MTZ writes and reads back
    refl.mtz.write_to_file(str(tmp_path / "again.mtz"))
    assert gemmi.read_mtz_file(str(tmp_path / "again.mtz")).history == fields["history"]


def test_latin1_column_label_is_folded(tmp_path):
    p = _write(_fp_mtz(), tmp_path / "label.mtz", {b"COLUMN FP ": b"COLUMN F\xc9 "})
    refl = read_reflections(p)
    assert refl.summary["columns"]["value"] == ["FE"]
    assert refl.mtz.column_labels() == ["H", "K", "L", "FE", "SIGFP"]


def test_utf8_text_that_gemmi_would_cut_is_kept_as_ascii(tmp_path):
    """Valid UTF-8 but not ASCII: gemmi cuts header lines at 80 bytes and can split a
    character, so the text is folded to ASCII too."""
    mtz = _fp_mtz()
    mtz.history = ["x" * 79 + "é"]
    p = _write(mtz, tmp_path / "utf8.mtz")
    with pytest.raises(UnicodeDecodeError):  # gemmi cut the 2-byte character in half
        gemmi.read_mtz_file(str(p)).history  # noqa: B018
    refl = read_reflections(p)
    assert refl.mtz.history == ["x" * 79 + "A"]  # the half read as Latin-1, folded
    mtz.history = ["café crème"]
    refl = read_reflections(_write(mtz, tmp_path / "utf8b.mtz"))
    assert refl.mtz.history == ["cafe creme"]


def test_ascii_text():
    assert ascii_text("Åström\tß→x") == "Astrom ??x"


def test_cli_end_to_end_on_latin1_header(tmp_path, capsys):
    p = _write(_fp_mtz(_hkl_in_p1(2.5)), tmp_path / "latin1.mtz", LATIN1)
    code, err = run_cli([p, "-o", tmp_path / "o.map", "--method", "classical", "--cycles", "3",
                         "--starts", "1"], capsys)
    assert code == 0, err
    out = gemmi.read_mtz_file(str(tmp_path / "o.mtz"))
    assert "HISTORYLINE one" in out.history and out.datasets[1].crystal_name == "CRYSTeLNAME"


# ---------------------------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell, why", [
    ((0, 6, 7, 90, 90, 90), "edge a = 0"),
    ((5, -6, 7, 90, 90, 90), "edge b = -6"),
    ((5, 6, 7, 200, 90, 90), "angle alpha = 200"),
    ((5, 6, 7, 90, 0, 90), "angle beta = 0"),
    ((5, 6, 7, 120, 120, 120), "no volume"),
    ((5, 6, 7, 30, 40, 100), "no volume"),
    ((5, 6, 7, 90, 90, float("nan")), "finite"),
    ((float("inf"), 6, 7, 90, 90, 90), "finite"),
    ((1, 1, 1, 90, 90, 90), "even one atom"),
    ((1e30, 6, 7, 90, 90, 90), "longer than any diffraction experiment"),
    ((5, 6, 7, 90, 90), "instead of six"),
])
def test_cell_problems(cell, why):
    assert why in cell_problem(cell)


@pytest.mark.parametrize("cell", [(5, 6, 7, 90, 90, 90), (5.9, 8.9, 18.3, 90, 103, 90),
                                  (16.19, 16.19, 11.24, 90, 90, 120), (2, 2, 2, 60, 60, 60)])
def test_good_cells(cell):
    assert cell_problem(cell) is None


@pytest.mark.parametrize("record, why", [
    ("CELL     0.0000    7.5000   10.0000   90.0000  101.0000   90.0000", "edge a = 0"),
    ("CELL    -9.0000    7.5000   10.0000   90.0000  101.0000   90.0000", "edge a = -9"),
    ("CELL     9.0000    7.5000   10.0000  200.0000  101.0000   90.0000", "angle alpha = 200"),
    ("CELL     9.0000    7.5000   10.0000  120.0000  120.0000  120.0000", "no volume"),
    ("CELL     nan    7.5000   10.0000   90.0000  101.0000   90.0000", "finite"),
    ("CELL  garbage", "even one atom"),  # gemmi falls back to a 1 A cube
    ("CELL  1.0e+30    7.5000   10.0000   90.0000  101.0000   90.0000", "longer than any"),
])
def test_bad_cell_in_an_mtz_is_refused(tmp_path, record, why):
    p = _write(_fp_mtz(), tmp_path / "cell.mtz")
    _set_record(p, b"CELL ", record)
    err = _error(lambda: read_reflections(p))
    assert err.exit_code == ExitCode.DATA
    assert why in err.message and "cell" in err.message and "--cell" in err.fix


def test_the_cell_flag_repairs_a_bad_cell_in_the_file(tmp_path):
    p = _write(_fp_mtz(), tmp_path / "cell.mtz")
    _set_record(p, b"CELL ", "CELL  garbage")
    refl = read_reflections(p, cell=CELL)
    assert refl.cell.approx(gemmi.UnitCell(*CELL), 1e-6)


@pytest.mark.parametrize("cell", [(0, 1, 1, 90, 90, 90), (10, 10, 10, 200, 90, 90),
                                  (9, 7.5, 10, 120, 120, 120), (float("inf"), 7.5, 10, 90, 90, 90),
                                  (1, 1, 1, 90, 90, 90), (1e30, 7.5, 10, 90, 101, 90)])
def test_bad_cell_flag_is_a_usage_error(tmp_path, cell):
    p = _write(_fp_mtz(), tmp_path / "x.mtz")
    err = _error(lambda: read_reflections(p, cell=cell))
    assert err.exit_code == ExitCode.USAGE and "--cell" in err.message
    hkl = tmp_path / "x.hkl"
    hkl.write_text("   1   0   0  100.00    1.00\n")
    err = _error(lambda: read_reflections(hkl, cell=cell, spacegroup="P 1"))
    assert err.exit_code == ExitCode.USAGE and "--cell" in err.message


def test_cell_too_small_for_the_data_names_the_reflection(tmp_path):
    """Volume enough for an atom, but an index whose d is below anything ever measured."""
    hkl = np.array([[1, 0, 0], [2, 1, 0], [30, 0, 0]])
    p = _write(_fp_mtz(hkl, cell=(5, 5, 5, 90, 90, 90)), tmp_path / "small.mtz")
    err = _error(lambda: read_reflections(p))
    assert err.exit_code == ExitCode.DATA
    assert "30 0 0" in err.message and "row 3" in err.message and "0.167 A" in err.message
    assert "--cell" in err.fix
    # the same file with a cell given on the command line that is too small for the data
    good = _write(_fp_mtz(_hkl_in_p1(1.0)), tmp_path / "good.mtz")
    err = _error(lambda: read_reflections(good, cell=(1.8, 1.8, 1.8, 90, 90, 90)))
    assert err.exit_code == ExitCode.DATA and "given with --cell" in err.message


@pytest.mark.parametrize("bad", [np.nan, 0.5, 1e9])
def test_corrupt_miller_index_in_an_mtz(tmp_path, bad):
    hkl = _hkl_in_p1().astype(np.float64)
    mtz = _fp_mtz()
    data = np.array(mtz.array)
    data[7, 0] = bad
    mtz.set_data(data.astype(np.float32))
    p = _write(mtz, tmp_path / "idx.mtz")
    err = _error(lambda: read_reflections(p))
    assert "row 8" in err.message
    assert err.exit_code == (ExitCode.DATA if bad == 1e9 else ExitCode.INPUT_FORMAT)
    assert len(hkl)


# ---------------------------------------------------------------------------------------------
# mmCIF without a cell or a space group
# ---------------------------------------------------------------------------------------------
def _cif_text(mtz: gemmi.Mtz) -> str:
    return gemmi.MtzToCif().write_cif_to_string(mtz)


def _drop(text: str, prefix: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(prefix)) + "\n"


def test_mmcif_without_cell_is_refused_or_takes_the_cell_flag(tmp_path):
    mtz = _fp_mtz(sg="P 1 21 1")
    mtz.ensure_asu()
    p = tmp_path / "nocell-sf.cif"
    p.write_text(_drop(_cif_text(mtz), "_cell."))
    err = _error(lambda: read_reflections(p))
    assert err.exit_code == ExitCode.DATA
    assert "_cell.length_a" in err.message and "--cell" in err.fix
    refl = read_reflections(p, cell=CELL)
    assert refl.cell.approx(gemmi.UnitCell(*CELL), 1e-6) and refl.spacegroup.hm == "P 1 21 1"
    q = tmp_path / "unknowncell-sf.cif"
    q.write_text(re.sub(r"_cell.length_b +\S+", "_cell.length_b ?", _cif_text(mtz)))
    assert "_cell.length_b" in _error(lambda: read_sf_cif(q)).message
    r = tmp_path / "badangle-sf.cif"
    r.write_text(re.sub(r"_cell.angle_beta +\S+", "_cell.angle_beta 201", _cif_text(mtz)))
    err = _error(lambda: read_reflections(r))
    assert err.exit_code == ExitCode.DATA and "angle beta = 201" in err.message


def test_mmcif_without_space_group_takes_the_flag(tmp_path):
    mtz = _fp_mtz(sg="P 1 21 1")
    mtz.ensure_asu()
    p = tmp_path / "nosg-sf.cif"
    p.write_text(_drop(_cif_text(mtz), "_symmetry."))
    err = _error(lambda: read_reflections(p))
    assert err.exit_code == ExitCode.DATA and "--spacegroup" in err.fix
    assert read_reflections(p, spacegroup="P 1 21 1").spacegroup.hm == "P 1 21 1"


# ---------------------------------------------------------------------------------------------
# data that are all zero
# ---------------------------------------------------------------------------------------------
def test_all_zero_amplitudes_are_refused(tmp_path):
    hkl = _hkl_in_p1()
    p = _write(_mtz(hkl, [("FP", "F", np.zeros(len(hkl)))]), tmp_path / "zero.mtz")
    err = _error(lambda: read_reflections(p))
    assert err.exit_code == ExitCode.DATA and "zero or negative" in err.message


def test_all_negative_intensities_are_refused(tmp_path):
    hkl = _hkl_in_p1()
    p = _write(_mtz(hkl, [("I", "J", -np.ones(len(hkl))), ("SIGI", "Q", np.ones(len(hkl)))]),
               tmp_path / "neg.mtz")
    err = _error(lambda: read_reflections(p))
    assert err.exit_code == ExitCode.DATA and "intensities" in err.message


# ---------------------------------------------------------------------------------------------
# SHELX HKLF 4
# ---------------------------------------------------------------------------------------------
def _line(h: int, k: int, l: int, i: float, s: float) -> str:
    return f"{h:4d}{k:4d}{l:4d}{i:8.2f}{s:8.2f}\n"


def _hkl_rows() -> list[tuple[int, int, int, float, float]]:
    hkl = _hkl_in_p1(1.5)
    amp = _amplitudes(hkl)
    return [(*map(int, h), float(a * a), float(0.05 * a * a + 1))
            for h, a in zip(hkl, amp, strict=True)]


def _hkl_file(path, rows, extra: str = "") -> None:
    path.write_text("".join(_line(*r) for r in rows) + extra + _line(0, 0, 0, 0, 0))


def test_shelx_sigmas_le_0_are_counted_and_reported(tmp_path):
    rows = _hkl_rows()
    n = len(rows)
    rows = [(h, k, l, i, -1.0 if j % 10 == 0 else 0.0 if j % 10 == 1 else s)
            for j, (h, k, l, i, s) in enumerate(rows)]
    n_neg, n_zero = sum(r[4] < 0 for r in rows), sum(r[4] == 0 for r in rows)
    p = tmp_path / "sig.hkl"
    _hkl_file(p, rows)
    refl = read_reflections(p, cell=CELL, spacegroup="P 1")
    obs = refl.summary["observations"]
    assert obs["observations"] == n and obs["dropped_sigma_negative"] == n_neg
    assert obs["dropped_sigma_zero"] == n_zero and obs["unique"] == n - n_neg - n_zero
    note = next(t for t in refl.summary["notes"] if t.startswith("SHELX file"))
    assert f"{n} observations" in note and f"{n_zero} with sigma = 0" in note
    assert f"{n_neg} with sigma < 0" in note
    assert refl.summary["reflections_used"] == n - n_neg - n_zero


@pytest.mark.parametrize("bad, code, what", [
    ("999999999 1 1 10.0 1.0\n", ExitCode.DATA, "d = "),
    ("  99   1   1   10.00    1.00\n", ExitCode.DATA, "d = "),
    ("99999999999 1 1 10.0 1.0\n", ExitCode.INPUT_FORMAT, "index"),
    ("   1   1   1     nan    1.00\n", ExitCode.INPUT_FORMAT, "finite"),
    ("   1   1   1   10.00     inf\n", ExitCode.INPUT_FORMAT, "finite"),
    ("   1   1\n", ExitCode.INPUT_FORMAT, "not an HKLF 4 record"),
    ("   1   1   1   10.00    1.00 \xdf\n", ExitCode.INPUT_FORMAT, "not a number"),
    ("1 1 1 10.0 1.0 batch7\n", ExitCode.INPUT_FORMAT, "not a number"),
    ("   1   1   1   10.00    1.00 \xa0\n", ExitCode.INPUT_FORMAT, "not a number"),
])
def test_shelx_bad_line_is_named_by_number(tmp_path, bad, code, what):
    rows = _hkl_rows()[:5]
    p = tmp_path / "bad.hkl"
    _hkl_file(p, rows, bad)
    err = _error(lambda: read_reflections(p, cell=CELL, spacegroup="P 1"))
    assert err.exit_code == code and what in err.message
    assert "line 6" in err.message and repr(bad.strip()) in err.message


def test_shelx_file_cut_at_the_start_of_a_record(tmp_path):
    """No terminator and a last line of blanks without its newline: a record cut short. A
    file cut at a line's end reads (the terminator is optional)."""
    rows = _hkl_rows()[:6]
    p = tmp_path / "cut.hkl"
    p.write_text("".join(_line(*r) for r in rows) + "   ")
    err = _error(lambda: read_reflections(p, cell=CELL, spacegroup="P 1"))
    assert err.exit_code == ExitCode.INPUT_FORMAT and "line 7" in err.message
    p.write_text("".join(_line(*r) for r in rows))
    assert read_reflections(p, cell=CELL, spacegroup="P 1").summary["reflections_used"] == 6


def test_infinite_values_are_missing_values(tmp_path):
    hkl = _hkl_in_p1()
    amp = _amplitudes(hkl)
    free = np.zeros(len(hkl))
    free[3] = -np.inf
    sig = 0.05 * amp
    sig[5] = np.inf
    amp[7] = np.inf
    p = _write(_mtz(hkl, [("FP", "F", amp), ("SIGFP", "Q", sig), ("FREE", "I", free)]),
               tmp_path / "inf.mtz")
    refl = read_reflections(p)
    assert refl.summary["reflections_used"] == len(hkl) - 2
    assert np.isfinite(refl.asu_amplitude).all() and np.isfinite(refl.asu_sigma).all()
    assert not np.isinf(refl.asu_free).any() and np.isnan(refl.asu_free).sum() == 1


def test_shelx_latin1_trailer_and_gzip(tmp_path):
    rows = _hkl_rows()
    p = tmp_path / "t.hkl"
    _hkl_file(p, rows, "   2   0   0   10.00    1.00   3 0.1 -0.2\n")  # batch, cosines: kept
    p.write_bytes(p.read_bytes() + b"TITL caf\xe9 after the terminator\n")
    mtz, stats = read_shelx_hkl_with_stats(p, cell=CELL, spacegroup="P 1")
    assert stats["observations"] == len(rows) + 1 and stats["unique"] == len(rows)
    gz = tmp_path / "t.hkl.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    used = read_reflections(gz, cell=CELL, spacegroup="P 1").summary["reflections_used"]
    assert used == len(rows)
    broken = tmp_path / "broken.hkl.gz"
    broken.write_bytes(gzip.compress(p.read_bytes())[:50])
    assert _error(lambda: read_reflections(broken, cell=CELL, spacegroup="1")).exit_code == (
        ExitCode.INPUT_FORMAT)


def test_shelx_all_zero_intensities_are_refused(tmp_path):
    rows = [(h, k, l, 0.0, s) for h, k, l, _, s in _hkl_rows()]
    p = tmp_path / "zero.hkl"
    _hkl_file(p, rows)
    err = _error(lambda: read_reflections(p, cell=CELL, spacegroup="P 1"))
    assert err.exit_code == ExitCode.DATA and "zero or negative" in err.message


# ---------------------------------------------------------------------------------------------
# an MTZ in memory
# ---------------------------------------------------------------------------------------------
def test_read_reflections_from_an_mtz_in_memory(tmp_path):
    mtz = _fp_mtz(sg="P 1 21 1")
    mtz.ensure_asu()
    p = _write(mtz, tmp_path / "x.mtz")
    from_file = read_reflections(p)
    in_memory = read_reflections(mtz)
    assert in_memory.summary["format"] == "mtz (in memory)" and in_memory.summary["file"] is None
    np.testing.assert_array_equal(in_memory.hkl, from_file.hkl)
    np.testing.assert_array_equal(in_memory.amplitude, from_file.amplitude)
    for key in ("columns", "reflections_used", "reflections_p1", "resolution", "completeness",
                "notes"):
        assert in_memory.summary[key] == from_file.summary[key], key
    assert in_memory.mtz is not mtz
    other = read_reflections(mtz, cell=(9.5, 7.5, 10, 90, 100, 90), spacegroup="P 1")
    assert other.spacegroup.hm == "P 1" and other.cell.a == pytest.approx(9.5)
    assert mtz.cell.a == pytest.approx(9.0) and mtz.spacegroup.hm == "P 1 21 1"  # untouched
    assert load_mtz(mtz)[1] == "mtz (in memory)"


def test_mtz_in_memory_with_undecodable_text_is_not_changed(tmp_path):
    p = _write(_fp_mtz(), tmp_path / "latin1.mtz", LATIN1)
    mtz = gemmi.read_mtz_file(str(p))
    refl = read_reflections(mtz)
    assert refl.mtz.history == ["HISTORYLINE one", "second line"]
    with pytest.raises(UnicodeDecodeError):
        mtz.history  # noqa: B018 - the caller's object keeps its bytes


def test_mtz_in_memory_without_space_group(tmp_path):
    mtz = _fp_mtz()
    mtz.spacegroup = None
    err = _error(lambda: read_reflections(mtz))
    assert err.exit_code == ExitCode.INPUT_FORMAT and "--spacegroup" in err.fix
    assert read_reflections(mtz, spacegroup="P 1").spacegroup.hm == "P 1"
    assert mtz.spacegroup is None


# ---------------------------------------------------------------------------------------------
# through the command line: one line, a documented code, no traceback
# ---------------------------------------------------------------------------------------------
def test_cli_refusals_are_one_line(tmp_path, capsys):
    zero = _write(_mtz(_hkl_in_p1(), [("FP", "F", np.zeros(len(_hkl_in_p1())))]),
                  tmp_path / "zero.mtz")
    cell = _write(_fp_mtz(), tmp_path / "cell.mtz")
    _set_record(cell, b"CELL ", "CELL  garbage")
    hkl = tmp_path / "big.hkl"
    _hkl_file(hkl, _hkl_rows()[:5], "999999999 1 1 10.0 1.0\n")
    cases = [([zero], ExitCode.DATA), ([cell], ExitCode.DATA),
             ([zero, "--cell", "10,10,10,200,90,90"], ExitCode.USAGE),
             ([hkl, "--cell", CELL_ARG, "--spacegroup", "P 1"], ExitCode.DATA)]
    for args, expected in cases:
        code, err = run_cli([*args[:1], "-o", tmp_path / "o.map", *args[1:]], capsys)
        assert_one_line(code, err, expected)
        assert not (tmp_path / "o.map").exists()
