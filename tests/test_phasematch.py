"""Tests for pattersolve.phasematch and the pattersolve-phasematch command."""

from __future__ import annotations

import json
import subprocess
import sys

import gemmi
import numpy as np
import pytest
from click.testing import CliRunner

from pattersolve import fourier
from pattersolve import simulate as sim
from pattersolve.cli_phasematch import main
from pattersolve.errors import PattersolveError
from pattersolve.phasematch import (
    expand_to_p1,
    match_phases,
    other_hand_allowed,
    permitted_shift_mask,
    random_phase_floor,
    read_map_coefficients,
)

# a hand-written Ala-Ala-like dipeptide (heavy atoms, A)
ALA_ALA = np.array([
    [0.00, 0.00, 0.00], [1.46, 0.00, 0.00], [2.00, 1.42, 0.00], [1.25, 2.39, 0.00],
    [1.95, -0.75, 1.23], [3.33, 1.55, 0.00], [3.96, 2.86, 0.00], [5.47, 2.75, 0.00],
    [6.06, 1.67, 0.00], [6.10, 3.83, 0.00], [3.45, 3.65, 1.20],
])
ELEMENTS = ["N", "C", "C", "O", "C", "N", "C", "C", "O", "O", "C"]


def _p1_fragment(cell_length=10.0, d_min=1.5, seed=0):
    rng = np.random.default_rng(seed)
    pl = sim.place_fragment(ALA_ALA, ELEMENTS, cell_lengths=[cell_length] * 3,
                            rotation=sim.random_rotation(rng))
    hkl = fourier.miller_sphere(pl.cell, d_min)
    return pl, hkl, sim.structure_factors(pl.frac, ELEMENTS, 15.0, pl.cell, hkl)


P21 = gemmi.SpaceGroup("P 1 21 1")
P21_CELL = gemmi.UnitCell(11.0, 12.0, 10.0, 90.0, 103.0, 90.0)


def _p21_model():
    """Fractional coordinates of both P2(1) copies of the fragment, and the elements."""
    cart = ALA_ALA - ALA_ALA.mean(0) + np.array([3.0, 1.0, 2.5])
    frac = np.array([P21_CELL.fractionalize(gemmi.Position(*x)).tolist() for x in cart])
    mate = frac * np.array([-1.0, 1.0, -1.0]) + np.array([0.0, 0.5, 0.0])
    return np.vstack([frac, mate]), ELEMENTS * 2


def _p21_structure_factors(d_min=2.0, shift=(0.0, 0.0, 0.0)):
    """ASU and P1 half-sphere F by brute force for the P2(1) model moved by ``shift``."""
    frac, elements = _p21_model()
    frac = frac + np.asarray(shift)
    full = fourier.miller_sphere(P21_CELL, d_min, half=False)
    asu = gemmi.ReciprocalAsu(P21)
    ops = P21.operations()
    in_asu = np.array([asu.is_in(list(map(int, h))) and not ops.is_systematically_absent(
        list(map(int, h))) for h in full])
    hkl_asu = full[in_asu]
    f_asu = sim.structure_factors(frac, elements, 15.0, P21_CELL, hkl_asu)
    hkl_p1 = fourier.miller_sphere(P21_CELL, d_min)
    absent = np.array([ops.is_systematically_absent(list(map(int, h))) for h in hkl_p1])
    hkl_p1 = hkl_p1[~absent]
    f_p1 = sim.structure_factors(frac, elements, 15.0, P21_CELL, hkl_p1)
    return hkl_asu, f_asu, hkl_p1, f_p1


def _write_mtz(path, hkl, f, cell, sg, labels=("FWT", "PHWT"), extra_pair=None):
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = sg
    mtz.set_cell_for_all(cell)
    mtz.add_dataset("test")
    mtz.add_column(labels[0], "F")
    mtz.add_column(labels[1], "P")
    cols = [hkl.astype(np.float32), np.abs(f)[:, None], np.degrees(np.angle(f))[:, None]]
    if extra_pair:
        mtz.add_column(extra_pair[0], "F")
        mtz.add_column(extra_pair[1], "P")
        cols += [np.abs(f)[:, None], np.degrees(np.angle(f))[:, None]]
    mtz.set_data(np.hstack(cols).astype(np.float32))
    mtz.update_reso()
    mtz.write_to_file(str(path))


# ---------------------------------------------------------------------------------------------
def test_self_match_with_continuous_origin_shift_recovers_shift():
    pl, hkl, f = _p1_fragment()
    t = np.random.default_rng(3).uniform(0, 1, 3)
    moved = f * np.exp(-2j * np.pi * (hkl @ t))  # the structure moved by -t
    m = match_phases(hkl, f, moved, pl.cell)
    assert m.weighted_error < 1e-6 and m.unweighted_error < 1e-6
    assert m.map_cc == pytest.approx(1.0, abs=1e-9)
    assert not m.inverted
    assert np.allclose(((m.shift - t + 0.5) % 1.0) - 0.5, 0.0, atol=1e-7)
    assert m.fraction_under[15] == 1.0
    assert len(m.bins) == 10 and sum(b["n"] for b in m.bins) == len(hkl)
    assert all(b["d_low"] >= b["d_high"] for b in m.bins)
    json.dumps(m.to_dict())


def test_inverted_copy_is_matched_with_other_hand():
    pl, hkl, f = _p1_fragment(seed=1)
    frac = pl.frac * -1.0 + np.array([0.13, 0.71, 0.42])  # x -> -x, then moved
    f_inv = sim.structure_factors(frac, ELEMENTS, 15.0, pl.cell, hkl)
    m = match_phases(hkl, f, f_inv, pl.cell)
    assert m.inverted
    assert m.weighted_error < 1e-5 and m.map_cc == pytest.approx(1.0, abs=1e-9)
    # not allowed to invert: a large error remains
    m_same = match_phases(hkl, f, f_inv, pl.cell, allow_hand=False)
    assert not m_same.inverted and m_same.weighted_error > 40.0


def test_random_phase_floor_dipeptide_10A():
    pl, hkl, f = _p1_fragment()
    floor = random_phase_floor(hkl, f, pl.cell, np.random.default_rng(0), trials=5)
    assert 74.0 < floor.weighted_error < 84.0
    assert 0.12 < floor.map_cc < 0.40
    assert len(floor.extra["weighted_errors"]) == 5


def test_permitted_shifts_p21():
    pts = np.array([[0.5, 0.37, 0.0], [0.0, 0.9, 0.5], [0.23, 0.37, 0.0], [0.5, 0.1, 0.25]])
    assert permitted_shift_mask(pts, P21).tolist() == [True, True, False, False]
    assert permitted_shift_mask(pts, "P 1").all()
    assert other_hand_allowed(P21) and other_hand_allowed("P 1")
    assert not other_hand_allowed("P 31") and not other_hand_allowed("P 41 21 2")
    assert other_hand_allowed("I 41")  # the other hand exists with an extra origin shift


def _brute_force_in_group(sg, cell, d_min=2.2):
    """ASU and P1 half-sphere F of the fragment and all its symmetry copies."""
    cart = ALA_ALA - ALA_ALA.mean(0) + np.array([2.0, 1.5, 1.0])
    frac0 = np.array([cell.fractionalize(gemmi.Position(*x)).tolist() for x in cart])
    frac = np.vstack([[op.apply_to_xyz(list(x)) for x in frac0] for op in sg.operations()])
    elements = ELEMENTS * len(list(sg.operations()))
    full = fourier.miller_sphere(cell, d_min, half=False)
    asu, ops = gemmi.ReciprocalAsu(sg), sg.operations()
    hkl_asu = np.array([h for h in full if asu.is_in(list(map(int, h)))
                        and not ops.is_systematically_absent(list(map(int, h)))])
    hkl_p1 = np.array([h for h in fourier.miller_sphere(cell, d_min)
                       if not ops.is_systematically_absent(list(map(int, h)))])
    f_asu = sim.structure_factors(frac, elements, 15.0, cell, hkl_asu)
    return hkl_asu, f_asu, hkl_p1, sim.structure_factors(frac, elements, 15.0, cell, hkl_p1)


@pytest.mark.parametrize("name, cell", [
    ("P 1 21 1", (11.0, 12.0, 10.0, 90.0, 103.0, 90.0)),
    ("P 31", (12.0, 12.0, 9.0, 90.0, 90.0, 120.0)),
    ("P 41 21 2", (10.0, 10.0, 13.0, 90.0, 90.0, 90.0)),
])
def test_expansion_to_p1_matches_brute_force(name, cell):
    sg, uc = gemmi.SpaceGroup(name), gemmi.UnitCell(*cell)
    hkl_asu, f_asu, hkl_p1, f_p1 = _brute_force_in_group(sg, uc)
    assert len(hkl_asu) < len(hkl_p1)
    hkl, f = expand_to_p1(hkl_asu, f_asu, sg)
    assert np.array_equal(hkl, hkl_p1)
    assert np.allclose(f, f_p1, atol=1e-9 * np.abs(f_p1).max())


def test_p21_allowed_origin_found_and_forbidden_rejected():
    _, _, hkl, f = _p21_structure_factors()
    t_ok = np.array([0.5, 0.37, 0.0])
    m = match_phases(hkl, f, f * np.exp(-2j * np.pi * (hkl @ t_ok)), P21_CELL, P21)
    assert m.weighted_error < 1e-5 and not m.inverted
    assert np.allclose(((m.shift - t_ok + 0.5) % 1.0) - 0.5, 0.0, atol=1e-7)
    t_bad = np.array([0.23, 0.37, 0.11])
    bad = f * np.exp(-2j * np.pi * (hkl @ t_bad))
    assert match_phases(hkl, f, bad, P21_CELL, "P 1").weighted_error < 1e-5
    m_bad = match_phases(hkl, f, bad, P21_CELL, P21)
    assert m_bad.weighted_error > 30.0
    assert permitted_shift_mask(m_bad.shift[None], P21)[0]


def test_read_map_coefficients_label_choice(tmp_path):
    hkl_asu, f_asu, hkl_p1, f_p1 = _p21_structure_factors()
    path = tmp_path / "two.mtz"
    _write_mtz(path, hkl_asu, f_asu, P21_CELL, P21, labels=("FC", "PHIC"),
               extra_pair=("FWT", "PHWT"))
    cell, sg, hkl, f = read_map_coefficients(path)  # FWT/PHWT wins by priority
    assert sg.number == 4 and cell.a == pytest.approx(11.0)
    assert np.array_equal(hkl, hkl_p1)
    assert np.allclose(f, f_p1, atol=1e-5 * np.abs(f_p1).max(), rtol=1e-5)
    amb = tmp_path / "amb.mtz"
    _write_mtz(amb, hkl_asu, f_asu, P21_CELL, P21, labels=("FA", "PA"), extra_pair=("FB", "PB"))
    with pytest.raises(PattersolveError, match="ambiguous.*FA, FB"):
        read_map_coefficients(amb)
    assert read_map_coefficients(amb, "FB", "PB")[2].shape == hkl_p1.shape


def test_cli_reports_zero_and_writes_json_and_png(tmp_path):
    hkl_asu, f_asu, _, _ = _p21_structure_factors()
    t = np.array([0.5, 0.21, 0.5])
    ref, test = tmp_path / "ref.mtz", tmp_path / "test.mtz"
    _write_mtz(ref, hkl_asu, f_asu, P21_CELL, P21, labels=("FC", "PHIC"))
    _write_mtz(test, hkl_asu, f_asu * np.exp(-2j * np.pi * (hkl_asu @ t)), P21_CELL, P21)
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    res = CliRunner().invoke(main, [str(ref), str(test), "--bins", "5", "--json",
                                    str(out_json), "--plot", str(out_png)])
    assert res.exit_code == 0, res.output
    assert "origin shift" in res.output and "random phases" in res.output
    doc = json.loads(out_json.read_text())
    assert doc["result"]["weighted_error"] < 0.05  # float32 MTZ storage
    assert len(doc["result"]["bins"]) == 5
    assert np.allclose(((np.array(doc["result"]["shift"]) - t + 0.5) % 1) - 0.5, 0, atol=1e-4)
    assert doc["random_phase_floor"]["weighted_error"] > 50.0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_missing_file_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pattersolve.cli_phasematch", str(tmp_path / "nope.mtz"),
         str(tmp_path / "nope2.mtz")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pattersolve-phasematch: error: ")
    assert "nope.mtz" in lines[0] and "Traceback" not in proc.stderr


def test_cli_refuses_to_overwrite_outputs(tmp_path, alaala_mtz):
    from pattersolve.cli_phasematch import main as pm_main

    _, truth = alaala_mtz
    out = tmp_path / "r.json"
    out.write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        pm_main([str(truth), str(truth), "--json", str(out)])
    assert exc.value.code == 9
    assert out.read_text() == "keep me"
    with pytest.raises(SystemExit) as exc:
        pm_main([str(truth), str(truth), "--json", str(out), "--overwrite"])
    assert exc.value.code == 0
    assert '"weighted_error"' in out.read_text()


# ---------------------------------------------------------------------------------------------
# a P1 file (pattersolve's output when a solution fails the symmetry check) against a file in
# the crystal's space group: the higher-symmetry file is expanded to P1 and the origin searched
# in P1
# ---------------------------------------------------------------------------------------------
def _p1_and_p21_files(tmp_path, t=(0.23, 0.37, 0.11), p1_cell=P21_CELL):
    """(P2(1) file with ASU data, P1 file with the whole half sphere moved by ``t``)."""
    hkl_asu, f_asu, _, _ = _p21_structure_factors()
    hkl_p1 = fourier.miller_sphere(P21_CELL, 2.0)  # systematic absences included, as written
    frac, elements = _p21_model()
    f_p1 = sim.structure_factors(frac + np.asarray(t), elements, 15.0, P21_CELL, hkl_p1)
    sym, p1 = tmp_path / "p21.mtz", tmp_path / "p1.mtz"
    _write_mtz(sym, hkl_asu, f_asu, P21_CELL, P21, labels=("FC", "PHIC"))
    _write_mtz(p1, hkl_p1, f_p1, p1_cell, gemmi.SpaceGroup("P 1"))
    return sym, p1


@pytest.mark.parametrize("p1_is_test", [True, False])
def test_cli_p1_against_p21_expands_the_other_to_p1(tmp_path, p1_is_test):
    sym, p1 = _p1_and_p21_files(tmp_path)  # t is not a P2(1) origin shift: P1 rules needed
    ref, test = (sym, p1) if p1_is_test else (p1, sym)
    out_json = tmp_path / "out.json"
    res = CliRunner().invoke(main, [str(ref), str(test), "--bins", "4", "--json", str(out_json)])
    assert res.exit_code == 0, res.output
    expanded = sym
    line = [x for x in res.output.splitlines() if x.startswith("expanded to P1")]
    assert len(line) == 1 and str(expanded) in line[0] and "P 1 21 1" in line[0], res.output
    doc = json.loads(out_json.read_text())
    assert doc["result"]["weighted_error"] < 0.05  # float32 MTZ storage
    assert doc["result"]["spacegroup"] == "P 1"
    note = doc["expanded_to_p1"]
    assert note["file"] == ("reference" if p1_is_test else "test")
    assert note["path"] == str(expanded) and note["from"] == "P 1 21 1"
    assert doc["result"]["n"] > 200


def test_cli_same_group_writes_no_expansion_note(tmp_path):
    sym, _ = _p1_and_p21_files(tmp_path)
    out_json = tmp_path / "out.json"
    res = CliRunner().invoke(main, [str(sym), str(sym), "--bins", "4", "--json", str(out_json)])
    assert res.exit_code == 0, res.output
    assert "expanded to P1" not in res.output
    assert json.loads(out_json.read_text())["expanded_to_p1"] is None


def test_cli_p1_with_another_cell_is_refused(tmp_path):
    other = gemmi.UnitCell(11.0, 12.0, 10.5, 90.0, 103.0, 90.0)
    sym, p1 = _p1_and_p21_files(tmp_path, p1_cell=other)
    res = CliRunner().invoke(main, [str(sym), str(p1)])
    assert res.exit_code == 6
    lines = [x for x in res.output.splitlines() if "error:" in x]
    assert len(lines) == 1 and "cells differ" in lines[0] and "Traceback" not in res.output


def test_cli_two_other_groups_still_refused(tmp_path):
    sym, _ = _p1_and_p21_files(tmp_path)
    hkl_asu, f_asu, _, _ = _p21_structure_factors()
    p2 = tmp_path / "p2.mtz"
    _write_mtz(p2, hkl_asu, f_asu, P21_CELL, gemmi.SpaceGroup("P 1 2 1"))
    res = CliRunner().invoke(main, [str(sym), str(p2)])
    assert res.exit_code == 6 and "space groups differ" in res.output


def test_expand_to_p1_agrees_with_gemmi_mtz_expand_to_p1(tmp_path):
    """Our expansion (phase shifts of the screw axis) against gemmi's own on the same MTZ."""
    sym, _ = _p1_and_p21_files(tmp_path)
    _, _, hkl, f = read_map_coefficients(sym)
    mtz = gemmi.read_mtz_file(str(sym))
    mtz.expand_to_p1()
    data = np.asarray(mtz.array, dtype=np.float64)
    g_hkl, g_f = fourier.to_half_sphere(data[:, :3].astype(np.int64),
                                    data[:, 3] * np.exp(1j * np.radians(data[:, 4])))
    table = {tuple(h): v for h, v in zip(g_hkl.tolist(), g_f, strict=True)}
    assert len(table) == len(hkl)
    g = np.array([table[tuple(h)] for h in hkl.tolist()])
    assert np.allclose(g, f, atol=1e-5 * np.abs(f).max())


def test_cli_outputs_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    """A failure while drawing the plot leaves the old JSON and plot as they were."""
    import pattersolve.cli_phasematch as cpm
    from pattersolve.errors import ExitCode

    sym, _ = _p1_and_p21_files(tmp_path)
    out_json, out_png = tmp_path / "old.json", tmp_path / "old.png"
    out_json.write_text("old json")
    out_png.write_bytes(b"old png")

    def broken_plot(*args, **kwargs):
        raise PattersolveError("cannot draw", "none", ExitCode.OUTPUT)

    monkeypatch.setattr(cpm, "_plot", broken_plot)
    res = CliRunner().invoke(main, [str(sym), str(sym), "--bins", "3", "--json", str(out_json),
                                    "--plot", str(out_png), "--overwrite"])
    assert res.exit_code == 9, res.output
    assert out_json.read_text() == "old json" and out_png.read_bytes() == b"old png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json", "old.png", "p1.mtz",
                                                           "p21.mtz"]


def _edit_record(data: bytes, key: bytes, text: bytes) -> bytes:
    """Replace the 80-byte header record starting with ``key`` by ``text`` (padded)."""
    start = data.index(key, data.index(b"VERS"))
    return data[:start] + text.ljust(80) + data[start + 80:]


@pytest.mark.parametrize("key, text, code", [
    (b"COLUMN FWT", b"COLUMN F\xffT F 0 100 1", None),  # a label that is not UTF-8
    (b"CELL", b"CELL nan nan 10 90 90 90", 6),
    (b"CELL", b"CELL 0 0 10 90 90 90", 6),
    (b"SYMINF", b"SYMINF 1000000000 1000000000 P 1000000000 'P 7' PG1", 4),
])
def test_read_map_coefficients_corrupt_header_is_one_error(tmp_path, key, text, code):
    """Damaged MTZ headers: a PattersolveError with a documented code, never a traceback."""
    hkl_asu, f_asu, _, _ = _p21_structure_factors()
    path = tmp_path / "map.mtz"
    _write_mtz(path, hkl_asu, f_asu, P21_CELL, P21)
    path.write_bytes(_edit_record(path.read_bytes(), key, text))
    if code is None:  # still readable: the label is made safe, the pair found by type
        cell, sg, hkl, f = read_map_coefficients(path)
        assert len(hkl) > 0 and sg.number == 4
        return
    with pytest.raises(PattersolveError) as exc:
        read_map_coefficients(path)
    assert int(exc.value.exit_code) == code
