"""SHELX files: formulas, LATT/SYMM from gemmi operators, the .res writer and strict reader."""

from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np
import pytest
from conftest import shared_path

from pattersolve.errors import PattersolveError
from pattersolve.formats import symmetry_from_file
from pattersolve.shelx import (
    Formula,
    ResAtom,
    _cards,
    format_formula,
    formula_from_file,
    kept_instructions,
    latt_symm,
    parse_formula,
    read_res,
    res_text,
    spacegroup_from_cards,
    wavelength_from_file,
)

SUCROSE_CELL = gemmi.UnitCell(7.7727, 8.7216, 10.8637, 90, 102.983, 90)
INS = """TITL test in P2(1)/c
CELL 1.54184 7.539 8.3736 28.5257 90 91.205 90
ZERR 4 0.0001 0.0001 0.0004 0 0.0012 0
LATT 1
SYMM -X,0.5+Y,0.5-Z
SFAC C H N O
UNIT 104 64 8 4
TEMP -173
L.S. 10
PLAN  80
WGHT 0.0593 0.2834
FVAR 7.12717
C1    1    0.123450    0.234560    0.345670    11.00000    0.02
HKLF 4
END
"""


# ---------------------------------------------------------------------------------------------
# formulas
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["C12 H22 O11", "C12H22O11", " C12 H22  O11 ",
                                  "H22 C12 O10 O"])
def test_parse_formula(text):
    assert parse_formula(text) == {"C": 12, "H": 22, "O": 11}


@pytest.mark.parametrize("text", ["", "C12 (H2O)2", "Xx3 C2", "C-2", "12C"])
def test_parse_formula_refuses(text):
    with pytest.raises(PattersolveError):
        parse_formula(text)


def test_format_formula_hill_order():
    assert format_formula({"O": 2, "Cl": 1, "H": 5, "C": 7}) == "C7 H5 Cl O2"


def test_formula_from_ins_and_cif(tmp_path):
    ins = tmp_path / "x.ins"
    ins.write_text(INS)
    f = formula_from_file(ins)
    assert f.counts == {"C": 26, "H": 16, "N": 2, "O": 1} and f.z == 4
    assert wavelength_from_file(ins) == pytest.approx(1.54184)
    cif = tmp_path / "x.cif"
    cif.write_text("data_x\n_chemical_formula_sum 'C10 H10 F2 N4'\n_cell_formula_units_Z 4\n"
                   "_diffrn_radiation_wavelength 0.71073\n")
    f = formula_from_file(cif)
    assert f.counts == {"C": 10, "H": 10, "F": 2, "N": 4} and f.z == 4
    assert wavelength_from_file(cif) == pytest.approx(0.71073)
    (tmp_path / "y.cif").write_text("data_y\n_cell_length_a 5\n")
    assert formula_from_file(tmp_path / "y.cif") is None


def test_formula_of_the_shared_sucrose_cif():
    f = formula_from_file(shared_path("data", "real", "sucrose_P21_smallmol", "sucrose.cif"))
    assert f.counts == {"C": 12, "H": 22, "O": 11} and f.z == 2


# ---------------------------------------------------------------------------------------------
# LATT and SYMM
# ---------------------------------------------------------------------------------------------
def _same(a: gemmi.SpaceGroup, b: gemmi.SpaceGroup) -> bool:
    """The same operators (gemmi's table holds a few settings twice under two names)."""
    return {op.triplet() for op in a.operations()} == {op.triplet() for op in b.operations()}


def test_latt_symm_generates_every_tabulated_group():
    """Every space-group setting gemmi tabulates with a SHELX centring comes back from its own
    LATT/SYMM cards; LATT > 0 exactly when -x,-y,-z is an operator."""
    n = 0
    for sg in gemmi.spacegroup_table():
        if sg.centring_type() not in "PIRFABC":
            continue
        latt, symm = latt_symm(sg)
        assert _same(spacegroup_from_cards(latt, symm), sg), sg.xhm()
        inversion = gemmi.Op("-x,-y,-z") in list(sg.operations())
        assert (latt > 0) == inversion, sg.xhm()
        n += 1
    assert n > 500


def test_latt_symm_examples():
    assert latt_symm(gemmi.SpaceGroup("P 1 21/c 1")) == (1, ["-X, 1/2+Y, 1/2-Z"])
    assert latt_symm(gemmi.SpaceGroup("P 1 21 1")) == (-1, ["-X, 1/2+Y, -Z"])
    assert latt_symm(gemmi.SpaceGroup("C 1 2/c 1")) == (7, ["-X, Y, 1/2-Z"])
    assert latt_symm(gemmi.SpaceGroup("P -1")) == (1, [])
    latt, symm = latt_symm(gemmi.SpaceGroup("F d -3 m:1"))  # inversion not at the origin
    assert latt == -4 and len(symm) == 47


def _shared_symmetry_files() -> list[Path]:
    small = sorted(shared_path("data", "real_small").glob("*/model.res"))
    real = sorted(shared_path("data", "real").glob("*/*.cif"))
    return small + [p for p in real if "-sf" not in p.name and
                    "_space_group_symop_operation_xyz" in p.read_text(errors="replace")]


def test_latt_symm_against_the_shared_files():
    """The cards written for each shared .res/.cif's space group match the file's own: the
    same LATT, as many SYMM cards, the same group; and the file's cards give that group."""
    files = _shared_symmetry_files()
    assert len(files) >= 10
    for path in files:
        cell, sg = symmetry_from_file(path)
        latt, symm = latt_symm(sg)
        assert spacegroup_from_cards(latt, symm).xhm() == sg.xhm(), path
        if path.suffix == ".res":
            cards = _cards(path.read_text(errors="replace"))
            file_latt = next(int(c[1]) for c in cards if c[0].upper() == "LATT")
            file_symm = [" ".join(c[1:]) for c in cards if c[0].upper() == "SYMM"]
            assert latt == file_latt and len(symm) == len(file_symm), path
            assert spacegroup_from_cards(file_latt, file_symm).xhm() == sg.xhm(), path


# ---------------------------------------------------------------------------------------------
# .res writing and strict reading
# ---------------------------------------------------------------------------------------------
def _example_text(**kwargs) -> str:
    atoms = [ResAtom("O1", "O", (0.1, 0.2, 0.3)), ResAtom("C1", "C", (-0.05, 0.25, 1.1)),
             ResAtom("Mg1", "Mg", (0.5, 0.5, 0.5), occupancy=0.5)]
    q = [ResAtom("Q1", None, (0.7, 0.8, 0.9), height=4.06),
         ResAtom("Q2", None, (0.3, 0.1, 0.2), height=1.8)]
    return res_text(SUCROSE_CELL, gemmi.SpaceGroup("P 1 21 1"), atoms, q, z=2, **kwargs)


def test_res_round_trip(tmp_path):
    text = _example_text(sfac=["C", "H", "O", "Mg"], unit=[24, 44, 22, 1])
    res = read_res(text)
    assert res.cell == pytest.approx(SUCROSE_CELL.parameters, abs=1e-4)
    assert res.wavelength == pytest.approx(0.71073) and res.z == 2
    assert res.spacegroup.xhm() == "P 1 21 1" and res.latt == -1
    assert res.sfac == ["C", "H", "O", "Mg"] and res.unit == [24, 44, 22, 1]
    assert [(a.name, a.element, a.occupancy) for a in res.atoms] == [
        ("O1", "O", 1.0), ("C1", "C", 1.0), ("Mg1", "Mg", 0.5)]
    np.testing.assert_allclose([a.frac for a in res.atoms],
                               [(0.1, 0.2, 0.3), (-0.05, 0.25, 1.1), (0.5, 0.5, 0.5)])
    assert [(q.name, q.height) for q in res.qpeaks] == [("Q1", 4.06), ("Q2", 1.8)]
    lines = text.splitlines()
    assert lines[0].startswith("TITL") and lines[-2:] == ["HKLF 4", "END"]
    assert "Q1     1   0.700000  0.800000  0.900000   11.00000    0.05000     4.06" in lines
    assert max(len(line) for line in lines) <= 80
    # the project's own .ins reader sees the same cell and space group
    path = tmp_path / "m.res"
    path.write_text(text)
    cell, sg = symmetry_from_file(path)
    assert sg.xhm() == "P 1 21 1" and cell.approx(SUCROSE_CELL, 1e-4)


def test_sfac_unit_from_atoms_when_not_given():
    res = read_res(_example_text())
    assert res.sfac == ["C", "Mg", "O"]
    assert res.unit == [2, 1, 2]  # 2 operators; Mg on a special position counts 1/2


@pytest.mark.parametrize("bad, message", [
    ("FOO 1 2", "atom FOO"),
    ("C2-X 1 0.1 0.2 0.3 11.0 0.05", "unknown instruction or bad atom name"),
    ("C2    9   0.1 0.2 0.3 11.0 0.05", "SFAC number"),
    ("C2    1   0.1 0.2 0.3 11.0", "want"),
    ("Q9    1   0.1 0.2 0.3 11.0 0.05", "want"),
    ("C2    1   20.1 0.2 0.3 11.0 0.05", "free variables"),
    ("CELL 0.7 1 2 3 90 90", "needs 7 numbers"),
])
def test_read_res_is_strict(bad, message):
    text = _example_text().replace("HKLF 4", f"{bad}\nHKLF 4")
    with pytest.raises(PattersolveError, match=message):
        read_res(text)


def test_read_res_needs_unit_for_every_sfac():
    text = _example_text()
    assert "UNIT 2 1 2\n" in text
    text = text.replace("UNIT 2 1 2\n", "UNIT 2 1\n")
    with pytest.raises(PattersolveError, match="UNIT"):
        read_res(text)


def test_kept_instructions(tmp_path):
    ins = tmp_path / "x.ins"
    ins.write_text(INS)
    assert kept_instructions(ins) == ["TEMP -173", "L.S. 10", "PLAN 80"]


def test_read_res_reads_shared_shelxl_files():
    """The strict reader takes SHELXL's own output (free variables in atoms aside)."""
    path = shared_path("data", "real_small", "shx_2240189", "model.res")
    text = "\n".join(ln for ln in path.read_text().splitlines()
                     if ln[:4].upper() in ("TITL", "CELL", "ZERR", "LATT", "SYMM", "SFAC",
                                           "UNIT", "HKLF", "END"))
    res = read_res(text)
    assert res.spacegroup.xhm() == symmetry_from_file(path)[1].xhm()
    assert res.sfac == ["Fe", "Cl", "O", "H"] and res.z == 6
    assert Formula(dict(zip(res.sfac, res.unit, strict=True))).counts["Fe"] == 6
