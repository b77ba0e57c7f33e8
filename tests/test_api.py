"""The Python API: every input kind, the errors, and Solution's round trips.

Includes a synthetic atomic-resolution structure in P2(1) solved by charge flipping through
``pattersolve.phase`` (no ../shared needed).
"""

from __future__ import annotations

import sys
import warnings

import gemmi
import numpy as np
import pytest

import pattersolve
from pattersolve import PattersolveError, Reflections, phase
from pattersolve.errors import ExitCode
from pattersolve.phasematch import match_phases

CHEAP = {"method": "classical", "cycles": 20, "starts": 1}


def test_public_names():
    assert set(pattersolve.__all__) >= {"phase", "Solution", "Reflections", "PattersolveError"}
    for name in pattersolve.__all__:
        assert hasattr(pattersolve, name)


@pytest.fixture()
def solved(alaala_mtz):
    data, _ = alaala_mtz
    return phase(data, **CHEAP)


def test_phase_from_a_path_is_solved(solved, alaala):
    s = solved
    assert s.method == "classical" and s.method_reason == "chosen by the caller"
    assert s.spacegroup.hm == "P 1" and s.confident is None
    assert s.density.shape == (20, 20, 20) and len(s.hkl) == len(s.f) == len(s.fom)
    assert s.hl.shape == (4, len(s.hkl))
    match = match_phases(alaala.hkl, alaala.f, np.asarray(s.f), s.cell)
    assert match.weighted_error < 15


@pytest.mark.parametrize("kind", ["mtz", "dataset", "arrays"])
def test_every_input_kind_gives_the_same_answer(kind, alaala_mtz, solved):
    data, _ = alaala_mtz
    mtz = gemmi.read_mtz_file(str(data))
    if kind == "mtz":
        source = mtz
    elif kind == "dataset":
        rs = pytest.importorskip("reciprocalspaceship")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # one wavelength in a simulated MTZ: no rs warning
            source = rs.io.from_gemmi(mtz)
    else:
        hkl = mtz.make_miller_array()
        source = Reflections.from_arrays(
            mtz.cell, hkl, np.array(mtz.column_with_label("FP"), dtype=float),
            sigma=np.array(mtz.column_with_label("SIGFP"), dtype=float))
    s = phase(source, **CHEAP)
    assert np.allclose(s.density, solved.density, atol=1e-6 * np.abs(solved.density).max())


def test_unknown_method_lists_the_valid_ones(alaala_mtz):
    data, _ = alaala_mtz
    with pytest.raises(PattersolveError) as err:
        phase(data, method="hybird")
    assert err.value.exit_code == ExitCode.USAGE
    for m in pattersolve.METHODS:
        assert m in str(err.value)


def test_library_errors_name_parameters(tmp_path, alaala_mtz):
    data, _ = alaala_mtz
    with pytest.raises(PattersolveError) as err:
        phase(data, f_label="NOPE")
    assert "f_label" in str(err.value) and "--f-label" not in str(err.value)
    assert "--f-label" in err.value.one_line()  # what the command prints


def test_unreadable_object_is_a_usage_error():
    with pytest.raises(PattersolveError) as err:
        phase(42)
    assert err.value.exit_code == ExitCode.USAGE


def test_solution_round_trips_through_gemmi(tmp_path, solved):
    s = solved
    mtz = s.to_mtz()
    assert {"FP", "FWT", "PHWT", "PHIB", "FOM", "HLA", "HLD"} <= set(mtz.column_labels())
    phib = np.radians(np.array(mtz.column_with_label("PHIB")))
    assert np.allclose(np.exp(1j * phib), np.exp(1j * np.angle(s.f)), atol=1e-4)
    path = s.write_map(tmp_path / "s.map")
    grid = gemmi.read_ccp4_map(str(path)).grid
    assert np.allclose(np.array(grid), s.density, atol=1e-5 * np.abs(s.density).max())
    assert np.allclose(np.array(s.ccp4_map().grid), s.density, atol=1e-5)


def test_solution_round_trips_through_reciprocalspaceship(solved):
    pytest.importorskip("reciprocalspaceship")
    table = solved.to_dataset()
    assert len(table) == len(solved.hkl)
    assert np.allclose(table["FOM"].to_numpy(), solved.fom, atol=1e-6)


def test_write_is_all_or_nothing(tmp_path, solved):
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    (tmp_path / "s.json").write_text("old")
    with pytest.raises(PattersolveError) as err:  # s.json exists, no overwrite
        solved.write(tmp_path / "s.map", json_path=tmp_path / "s.json")
    assert err.value.exit_code == ExitCode.OUTPUT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]
    written = solved.write(tmp_path / "s.map", json_path=tmp_path / "s.json", overwrite=True)
    assert sorted(p.name for p in written.values()) == ["s.json", "s.map", "s.mtz"]
    assert '"method": "classical"' in (tmp_path / "s.json").read_text()


def test_import_stays_light():
    import subprocess

    code = "import sys, pattersolve; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False False", out.stderr


# --- a synthetic small molecule at atomic resolution (no shared data) ---------------------------
def _small_molecule_mtz(d_min: float = 0.8, symmetric: bool = True
                        ) -> tuple[gemmi.Mtz, gemmi.SmallStructure]:
    """Fourteen atoms (one S) in P2(1), 7 x 8 x 9 A, exact amplitudes to d_min.

    ``symmetric=False``: amplitudes of the fourteen atoms without their 2(1) copies, labelled
    P2(1) all the same (data no P2(1) structure explains).
    """
    rng = np.random.default_rng(3)
    ss = gemmi.SmallStructure()
    ss.cell = gemmi.UnitCell(7.0, 8.0, 9.0, 90, 104, 90)
    ss.spacegroup_hm = "P 1 21 1"
    if symmetric:
        ss.spacegroup = gemmi.SpaceGroup("P 1 21 1")  # gemmi 0.7 uses this, not the name
    ss.setup_cell_images()
    placed: list[np.ndarray] = []
    while len(placed) < 14:
        x = rng.random(3)
        pos = ss.cell.orthogonalize(gemmi.Fractional(*x))
        ok = all(ss.cell.find_nearest_image(pos, ss.cell.orthogonalize(gemmi.Fractional(*p)),
                                            gemmi.Asu.Any).dist() > 1.3 for p in placed)
        if ok and ss.cell.find_nearest_image(pos, pos, gemmi.Asu.Different).dist() > 1.3:
            placed.append(x)
    for i, x in enumerate(placed):
        site = gemmi.SmallStructure.Site()
        site.label = f"A{i}"
        site.type_symbol = "S" if i == 0 else ("O" if i % 4 == 1 else "C")
        site.element = gemmi.Element(site.type_symbol)
        site.fract = gemmi.Fractional(*x)
        site.occ = 1.0
        site.u_iso = 0.02
        ss.add_site(site)
    sg = gemmi.SpaceGroup("P 1 21 1")
    hkl = gemmi.make_miller_array(ss.cell, sg, d_min)
    calc = gemmi.StructureFactorCalculatorX(ss.cell)
    f = np.array([calc.calculate_sf_from_small_structure(ss, list(h)) for h in hkl])
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = sg
    mtz.set_cell_for_all(ss.cell)
    mtz.add_dataset("synthetic")
    for label, typ in (("FP", "F"), ("SIGFP", "Q"), ("FC", "F"), ("PHIC", "P")):
        mtz.add_column(label, typ)
    amp = np.abs(f)
    mtz.set_data(np.column_stack([hkl, amp, 0.01 * amp + 0.01, amp,
                                  np.degrees(np.angle(f))]).astype(np.float32))
    return mtz, ss


@pytest.mark.slow
def test_synthetic_small_molecule_by_charge_flipping():
    mtz, _ = _small_molecule_mtz()
    s = phase(mtz, f_label="FP", sigf_label="SIGFP")
    assert s.method == "chargeflip", s.method_reason
    assert s.spacegroup.hm == "P 1 21 1"
    assert s.confident is True, s.warnings
    truth = np.array(mtz.column_with_label("FC")) * np.exp(
        1j * np.radians(np.array(mtz.column_with_label("PHIC"))))
    hkl = mtz.make_miller_array()
    lookup = {tuple(h): v for h, v in zip(hkl.tolist(), truth, strict=True)}
    ref = np.array([lookup[tuple(h)] for h in s.hkl.tolist()])
    match = match_phases(s.hkl, ref, s.f, s.cell, spacegroup=s.spacegroup)
    assert match.weighted_error < 20, match.weighted_error


@pytest.mark.slow
def test_data_no_structure_explains_are_not_claimed():
    """Amplitudes that obey no P2(1) structure: whatever comes out is not called confident."""
    mtz, _ = _small_molecule_mtz(symmetric=False)
    s = phase(mtz, f_label="FP", sigf_label="SIGFP")
    assert s.method == "chargeflip"
    assert s.confident is False
    assert any("unreliable" in w for w in s.warnings)


@pytest.mark.slow
def test_first_model_as_res_from_the_api(tmp_path):
    """The solved synthetic molecule as a .res: every atom, elements from the formula."""
    from pattersolve.shelx import read_res

    mtz, ss = _small_molecule_mtz()
    s = phase(mtz, f_label="FP", sigf_label="SIGFP", formula="C9 O4 S")
    res = read_res(s.res_text())
    assert set(res.sfac) >= {"C", "O", "S"}
    elements = sorted(a.element for a in res.atoms)
    assert elements == sorted(["S"] + ["O"] * 4 + ["C"] * 9)
    assert res.latt == -1 and res.symm == ["-X, 1/2+Y, -Z"]
    path = s.write_res(tmp_path / "m.res")
    assert read_res(path).atoms == res.atoms


def test_bad_formula_fails_before_the_work(alaala_mtz):
    data, _ = alaala_mtz
    with pytest.raises(PattersolveError) as err:
        phase(data, formula="C12 Xx3", **CHEAP)
    assert err.value.exit_code == ExitCode.USAGE


@pytest.mark.slow
def test_command_writes_res_beside_shelx_data_never_over_its_res(tmp_path, capsys):
    """SHELX data with their symmetry in a .res of the same name: the model goes to
    NAME_model.res, the input .res stays as it was."""
    from pattersolve.cli import main
    from pattersolve.shelx import read_res

    mtz, _ = _small_molecule_mtz()
    hkl = mtz.make_miller_array()
    amp = np.array(mtz.column_with_label("FP"))
    lines = [f"{h:4d}{k:4d}{l:4d}{a * a:8.2f}{0.02 * a * a + 0.1:8.2f}"
             for (h, k, l), a in zip(hkl.tolist(), amp, strict=True)]
    (tmp_path / "x.hkl").write_text("\n".join(lines + ["   0   0   0    0.00    0.00"]) + "\n")
    ins = ("TITL x\nCELL 0.71073 7.0 8.0 9.0 90 104 90\nZERR 2 0 0 0 0 0 0\nLATT -1\n"
           "SYMM -X, 1/2+Y, -Z\nSFAC C O S\nUNIT 18 8 2\nHKLF 4\nEND\n")
    (tmp_path / "x.res").write_text(ins)
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "x.hkl"), "-o", str(tmp_path / "x.map"), "--peaks",
              str(tmp_path / "p.pdb")])
    err = capsys.readouterr().err
    assert exc.value.code == 0, err
    assert (tmp_path / "x.res").read_text() == ins
    model = read_res(tmp_path / "x_model.res")
    assert sorted(a.element for a in model.atoms) == sorted(["S"] + ["O"] * 4 + ["C"] * 9)
    st = gemmi.read_structure(str(tmp_path / "p.pdb"))
    assert {a.element.name for r in st[0]["A"] for a in r} >= {"C", "O", "S"}
