"""Readers for SHELX HKLF4 and mmCIF structure factors (synthetic files), peaks, domain."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.formats import read_sf_cif, read_shelx_hkl, symmetry_from_file

INS = """TITL test in P2(1)/c
CELL 0.71073 7.000 8.000 9.000 90.000 100.000 90.000
ZERR 4 0.001 0.001 0.001 0 0.01 0
LATT 1
SYMM -X, 0.5+Y, 0.5-Z
SFAC C O
UNIT 8 4
HKLF 4
END
"""


def _line(h: int, k: int, l: int, i: float, s: float) -> str:
    return f"{h:4d}{k:4d}{l:4d}{i:8.2f}{s:8.2f}\n"


def _write_hkl(path, rows) -> None:
    path.write_text("".join(_line(*r) for r in rows) + _line(0, 0, 0, 0.0, 0.0)
                    + "this trailer is ignored\n")


def test_hklf4_with_ins_merges_equivalents(tmp_path):
    hkl = tmp_path / "x.hkl"
    # (1 2 3) and its P2(1)/c equivalents (-1 2 -3), (1 -2 3), (-1 -2 -3): one unique reflection
    rows = [(1, 2, 3, 100.0, 10.0), (-1, 2, -3, 200.0, 10.0), (1, -2, 3, 150.0, 5.0),
            (2, 0, 0, 50.0, 2.0), (2, 0, 0, 70.0, 2.0),
            (0, 1, 0, 5.0, 1.0),  # 0k0 with k odd: systematically absent in P 1 21/c 1
            (3, 1, 1, 9.0, 0.0)]  # sigma 0: dropped
    _write_hkl(hkl, rows)
    (tmp_path / "x.ins").write_text(INS)  # found beside the .hkl by its stem
    mtz = read_shelx_hkl(hkl)
    assert mtz.spacegroup.hm == "P 1 21/c 1"
    assert mtz.cell.approx(gemmi.UnitCell(7, 8, 9, 90, 100, 90), 1e-6)
    assert mtz.column_labels() == ["H", "K", "L", "I", "SIGI"]
    assert [c.type for c in mtz.columns] == ["H", "H", "H", "J", "Q"]
    assert mtz.nreflections == 2
    data = {tuple(int(v) for v in row[:3]): row[3:] for row in np.asarray(mtz.array)}
    w = np.array([1 / 100, 1 / 100, 1 / 25])
    merged = [v for k, v in data.items() if sorted(map(abs, k)) == [1, 2, 3]][0]
    assert merged[0] == pytest.approx((w * [100, 200, 150]).sum() / w.sum(), rel=1e-5)
    assert merged[1] == pytest.approx(1 / np.sqrt(w.sum()), rel=1e-5)
    assert data[(2, 0, 0)][0] == pytest.approx(60.0)
    assert not np.isnan(mtz.resolution_high())


def test_hklf4_explicit_cell_and_spacegroup_and_cif(tmp_path):
    hkl = tmp_path / "y.hkl"
    _write_hkl(hkl, [(1, 1, 1, 10.0, 1.0), (-1, -1, -1, 12.0, 1.0), (1, 0, 2, 3.0, 1.0)])
    mtz = read_shelx_hkl(hkl, cell=(5, 6, 7, 90, 90, 90), spacegroup="P 21 21 21")
    assert mtz.spacegroup.hm == "P 21 21 21"
    assert mtz.nreflections == 2  # Friedel mates merged
    cif = tmp_path / "model.cif"
    cif.write_text("data_m\n_cell_length_a 5.0(1)\n_cell_length_b 6\n_cell_length_c 7\n"
                   "_cell_angle_alpha 90\n_cell_angle_beta 95.5(2)\n_cell_angle_gamma 90\n"
                   "_space_group_name_H-M_alt 'P 1 21 1'\n")
    mtz = read_shelx_hkl(hkl, ins=cif)
    assert mtz.spacegroup.hm == "P 1 21 1" and mtz.cell.beta == pytest.approx(95.5)
    cell, sg = symmetry_from_file(cif)
    assert cell.a == pytest.approx(5.0) and sg.number == 4


def test_hklf4_without_symmetry_is_one_error_with_fix(tmp_path):
    hkl = tmp_path / "lonely.hkl"
    _write_hkl(hkl, [(1, 1, 1, 10.0, 1.0)])
    with pytest.raises(PattersolveError) as info:
        read_shelx_hkl(hkl)
    assert info.value.exit_code == ExitCode.DATA
    assert "--cell" in info.value.fix and "--spacegroup" in info.value.fix
    with pytest.raises(PattersolveError, match="cell"):
        read_shelx_hkl(hkl, spacegroup="P 1")  # a space group alone is not enough


def test_hklf4_malformed_line(tmp_path):
    hkl = tmp_path / "bad.hkl"
    hkl.write_text(_line(1, 1, 1, 10.0, 1.0) + "   1   2 garbage here\n")
    with pytest.raises(PattersolveError) as info:
        read_shelx_hkl(hkl, cell=(5, 6, 7, 90, 90, 90), spacegroup="P 1")
    assert info.value.exit_code == ExitCode.INPUT_FORMAT
    assert "line 2" in info.value.message
    with pytest.raises(PattersolveError) as info:
        read_shelx_hkl(tmp_path / "missing.hkl", cell=(5, 6, 7, 90, 90, 90), spacegroup="P 1")
    assert info.value.exit_code == ExitCode.INPUT_MISSING


def test_sf_cif_round_trip(tmp_path):
    """MTZ -> mmCIF (gemmi's MtzToCif) -> read_sf_cif gives the same data and free flags."""
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = gemmi.SpaceGroup("P 1 21 1")
    mtz.cell = gemmi.UnitCell(10, 11, 12, 90, 100, 90)
    mtz.add_dataset("d")
    for label, kind in (("FP", "F"), ("SIGFP", "Q"), ("FREE", "I")):
        mtz.add_column(label, kind)
    rows = np.array([[1, 0, 1, 10.5, 1.0, 0], [1, 1, 1, 20.25, 2.0, 1], [2, 1, -1, 5.0, 0.5, 0],
                     [0, 2, 1, 7.0, 0.7, 3]], dtype=np.float32)
    mtz.set_data(rows)
    cif = tmp_path / "x-sf.cif"
    cif.write_text(gemmi.MtzToCif().write_cif_to_string(mtz))
    back = read_sf_cif(cif)
    assert back.spacegroup.hm == "P 1 21 1"
    assert back.cell.approx(mtz.cell, 1e-4)
    fp = back.column_with_label("FP")
    assert fp is not None and fp.type == "F"
    got = {tuple(int(v) for v in r[:3]): r for r in np.asarray(back.array)}
    labels = back.column_labels()
    for r in rows:
        row = got[tuple(int(v) for v in r[:3])]
        assert row[labels.index("FP")] == pytest.approx(r[3], abs=1e-3)
        assert row[labels.index("SIGFP")] == pytest.approx(r[4], abs=1e-3)
    free = [c for c in back.columns if c.type == "I"]
    assert free, "the free flag survives"


def test_sf_cif_errors(tmp_path):
    bad = tmp_path / "bad-sf.cif"
    bad.write_text("this is not { a cif\n")
    with pytest.raises(PattersolveError) as info:
        read_sf_cif(bad)
    assert info.value.exit_code == ExitCode.INPUT_FORMAT
    empty = tmp_path / "noref-sf.cif"
    empty.write_text("data_x\n_cell.length_a 10\n")
    with pytest.raises(PattersolveError) as info:
        read_sf_cif(empty)
    assert info.value.exit_code in (ExitCode.INPUT_FORMAT, ExitCode.DATA)


def test_peaks_symmetry_merge_and_pdb(tmp_path):
    from pattersolve.fourier import density_map, miller_sphere
    from pattersolve.peaks import find_peaks, write_peaks_pdb
    from pattersolve.simulate import structure_factors

    cell = gemmi.UnitCell(6, 7, 8, 90, 95, 90)
    sg = gemmi.SpaceGroup("P 1 21 1")
    xyz = np.array([[0.1, 0.2, 0.3], [0.4, 0.15, 0.7]])
    full = np.concatenate([xyz, xyz * [-1, 1, -1] + [0, 0.5, 0]]) % 1.0
    hkl = miller_sphere(cell, 0.7)
    f = structure_factors(full, ["O"] * 4, 2.0, cell, hkl)
    rho = density_map(hkl, f, (30, 36, 40), cell.volume)
    peaks = find_peaks(rho, cell, sg, n_max=10, min_sigma=3.0)
    assert len(peaks) == 2  # four atoms in the cell, two unique
    from pattersolve.peaks import min_distances
    assert min_distances(xyz, peaks.frac, cell, sg).max() < 0.05
    out = write_peaks_pdb(tmp_path / "peaks.pdb", peaks, cell, sg)
    st = gemmi.read_structure(str(out))
    assert st.cell.approx(cell, 1e-3) and st.spacegroup_hm.replace(" ", "") == "P1211"
    assert sum(1 for _ in st[0].all()) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_domain_warnings_and_method_choice():
    from pattersolve.domain import domain_warnings
    from pattersolve.solve import choose_method

    small = gemmi.UnitCell(7.8, 8.7, 10.9, 90, 103, 90)
    assert choose_method(small, 0.73)[0] == "chargeflip"
    method, reason = choose_method(small, 1.7)
    assert method == "hybrid" and "1.70" in reason
    assert domain_warnings(small, 0.73, 2000, gemmi.SpaceGroup("P 1 21 1"),
                           method="chargeflip") == []
    big = gemmi.UnitCell(60, 70, 80, 90, 90, 90)
    text = " ".join(domain_warnings(big, 2.5, 20000, gemmi.SpaceGroup("P 21 21 21")))
    assert "larger than" in text and "lower resolution" in text


def test_no_atom_count_warning_in_the_models_own_cell():
    """The packed-crystal atom count (18 A^3 per atom) is not applied to the training cell."""
    import gemmi

    from pattersolve.domain import domain_warnings

    cube = gemmi.UnitCell(10, 10, 10, 90, 90, 90)
    model = {"cell": [10.0, 10.0, 10.0], "d_min": 1.5}
    w = domain_warnings(cube, 1.5, 618, gemmi.SpaceGroup("P 1"), model_info=model,
                        method="hybrid")
    assert not any("non-hydrogen atoms" in x for x in w), w
    big = gemmi.UnitCell(22, 5, 24, 90, 107, 90)
    w = domain_warnings(big, 1.8, 495, gemmi.SpaceGroup("P 1 21 1"), model_info=model,
                        method="hybrid")
    assert any("non-hydrogen atoms" in x for x in w), w


def test_cif_with_embedded_shelx_hkl_file(tmp_path):
    """An IUCr CIF carrying its reflections (_shelx_hkl_file) reads like the .hkl + .ins."""
    from pattersolve.reflections import read_reflections

    rows = [(1, 0, 0, 100.0, 2.0), (0, 1, 0, 50.0, 1.5), (0, 2, 0, 40.0, 1.0),
            (0, 0, 1, 30.0, 1.0), (1, 1, 1, 20.0, 1.0), (-1, 1, 2, 10.0, 0.5),
            (2, 0, -1, 5.0, 0.5)]
    hkl = "\n".join(f"{h:4d}{k:4d}{l:4d}{i:8.2f}{s:8.2f}" for h, k, l, i, s in rows)
    hkl += "\n   0   0   0    0.00    0.00\n"
    (tmp_path / "x.hkl").write_text(hkl)
    (tmp_path / "x.ins").write_text(
        "TITL x\nCELL 0.71073 7 8 9 90 104 90\nZERR 2 0 0 0 0 0 0\n"
        "LATT -1\nSYMM -X, 1/2+Y, -Z\nSFAC C O\nUNIT 20 8\nHKLF 4\nEND\n")
    cif = ("data_x\n_cell_length_a 7\n_cell_length_b 8\n_cell_length_c 9\n"
           "_cell_angle_alpha 90\n_cell_angle_beta 104\n_cell_angle_gamma 90\n"
           "_space_group_name_H-M_alt 'P 1 21 1'\n"
           "loop_\n_space_group_symop_operation_xyz\n'x, y, z'\n'-x, y+1/2, -z'\n"
           "_chemical_formula_sum 'C10 O4'\n_shelx_hkl_file\n;\n" + hkl + ";\n")
    (tmp_path / "y.cif").write_text(cif)
    a = read_reflections(tmp_path / "x.hkl")
    b = read_reflections(tmp_path / "y.cif")
    assert b.summary["format"] == "shelx (in CIF)"
    assert b.spacegroup.hm == a.spacegroup.hm == "P 1 21 1"
    assert np.array_equal(a.hkl, b.hkl) and np.allclose(a.intensity, b.intensity)
    assert b.summary["observations"]["symmetry_from"] == str(tmp_path / "y.cif")
