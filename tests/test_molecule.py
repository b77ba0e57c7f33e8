"""Model building from peaks: elements from a formula, molecules assembled by symmetry.

Synthetic crystals only (no ../shared needed): a molecule is cut into its symmetry copies and
lattice translations, its atoms given as peaks in scattered positions, and the model built
from them must be the molecule again, whole, with the right elements.
"""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from pattersolve.molecule import (
    asu_counts,
    build_model,
    formula_units,
    model_res_text,
    model_structure,
    write_model_mmcif,
)
from pattersolve.peaks import Peaks
from pattersolve.shelx import Formula, read_res

# 4-chlorobenzoic acid (non-H atoms) in P2(1)/c, Z = 4: fractional coordinates of one whole
# molecule (it crosses the cell's faces), packed with no intermolecular contact under 3.2 A
CELL = gemmi.UnitCell(7.4, 6.2, 16.3, 90, 97.0, 90)
SG = gemmi.SpaceGroup("P 1 21/c 1")
FRAC = np.array([[0.24897, 1.09178, 0.44483], [0.33552, 1.16664, 0.51991],
                 [0.33777, 1.04076, 0.59060], [0.25348, 0.84004, 0.58620],
                 [0.16693, 0.76518, 0.51113], [0.16468, 0.89106, 0.44044],
                 [0.24615, 1.24935, 0.35635], [0.25590, 0.70511, 0.66197],
                 [0.33210, 0.77120, 0.72798], [0.17677, 0.51690, 0.65773]])
ELEMENTS = ["C"] * 6 + ["Cl", "C", "O", "O"]
FORMULA = "C7 H5 Cl O2"


def _ops(sg: gemmi.SpaceGroup) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.array(op.rot) / op.DEN, np.array(op.tran) / op.DEN) for op in sg.operations()]


def _scattered_peaks(frac: np.ndarray, elements: list[str], sg: gemmi.SpaceGroup,
                     cell: gemmi.UnitCell, seed: int = 0, noise: int = 5,
                     heights: np.ndarray | None = None) -> Peaks:
    """Each atom by a random symmetry operator, wrapped into the cell; heights ~ Z (+-5 %)
    unless given; ``noise`` weak peaks at random places."""
    rng = np.random.default_rng(seed)
    ops = _ops(sg)
    moved = []
    for x in frac:
        rot, tran = ops[rng.integers(len(ops))]
        moved.append((rot @ x + tran) % 1.0)
    z = np.array([gemmi.Element(e).atomic_number for e in elements], dtype=float)
    h = z * rng.uniform(0.95, 1.05, len(z)) if heights is None else np.asarray(heights)
    extra = rng.uniform(0, 1, (noise, 3))
    all_frac = np.vstack([np.array(moved), extra])
    all_h = np.concatenate([h, rng.uniform(0.8, 1.2, noise)])
    order = np.argsort(-all_h)
    orth = np.array(cell.orth.mat)
    return Peaks(frac=all_frac[order], cart=all_frac[order] @ orth.T, height=all_h[order],
                 sigma=all_h[order])


def _distances(frac: np.ndarray, cell: gemmi.UnitCell) -> np.ndarray:
    cart = frac @ np.array(cell.orth.mat).T
    return np.linalg.norm(cart[:, None] - cart[None], axis=-1)


def _element_of_site(x: np.ndarray, cell=CELL, sg=SG) -> str:
    """The element of the molecule's atom that ``x`` is a symmetry image of (within 0.05 A)."""
    orth = np.array(cell.orth.mat)
    for rot, tran in _ops(sg):
        d = rot @ x + tran - FRAC
        d -= np.rint(d)
        k = np.linalg.norm(d @ orth.T, axis=1).argmin()
        if np.linalg.norm(orth @ d[k]) < 0.05:
            return ELEMENTS[k]
    raise AssertionError(f"{x} is no image of a molecule's atom")


def test_molecule_reassembled_with_elements_from_the_formula():
    peaks = _scattered_peaks(FRAC, ELEMENTS, SG, CELL)
    model = build_model(peaks, CELL, SG, formula=FORMULA)
    assert model.z == 4  # from the cell volume: 742 A^3 / (18 A^3 x 10 atoms) ~ 4
    assert len(model.atoms) == 10 and len(model.qpeaks) == 5
    assert len(model.fragments) == 1
    got = model.frac()
    assert [a.element for a in model.atoms] == [_element_of_site(x) for x in got]
    # whole: the same shape as the molecule (every interatomic distance), not pieces
    np.testing.assert_allclose(np.sort(_distances(got, CELL).ravel()),
                               np.sort(_distances(FRAC, CELL).ravel()), atol=1e-6)
    # its centre inside the cell, the heaviest atom named first
    assert ((got.mean(axis=0) > 0) & (got.mean(axis=0) < 1)).all()
    assert model.atoms[0].label == "Cl1"
    assert sorted(a.label for a in model.atoms if a.element == "O") == ["O1", "O2"]


def test_bonding_overrules_peak_height():
    """A ring carbon with three neighbours whose peak is as strong as an oxygen's (and an
    oxygen as weak as a carbon) is still carbon: oxygen has at most two neighbours."""
    z = np.array([gemmi.Element(e).atomic_number for e in ELEMENTS], dtype=float)
    heights = z.copy()
    heights[3] = 8.3  # C4, bonded to C3, C5 and the carboxyl C8
    heights[9] = 6.1  # O10 (single neighbour)
    peaks = _scattered_peaks(FRAC, ELEMENTS, SG, CELL, heights=heights, noise=0)
    by_rank = build_model(peaks, CELL, SG, formula=FORMULA)
    assert [a.element for a in by_rank.atoms] == [_element_of_site(x) for x in by_rank.frac()]


def test_largest_fragment_first_and_counter_ion_near_it():
    """The molecule and a chloride ion 3.5 A beyond its chlorine (P-1, a cell with room):
    the molecule is the first fragment, the ion the second, put next to it (not anywhere)."""
    cell, sg = gemmi.UnitCell(13.0, 14.0, 15.0, 90, 90, 90), gemmi.SpaceGroup("P -1")
    cart = FRAC @ np.array(CELL.orth.mat).T
    cart -= cart.mean(axis=0)
    bond = (cart[6] - cart[0]) / np.linalg.norm(cart[6] - cart[0])
    to_frac = np.array(cell.frac.mat)
    frac = np.vstack([cart, cart[6] + 3.5 * bond]) @ to_frac.T + 0.25
    peaks = _scattered_peaks(frac, [*ELEMENTS, "Cl"], sg, cell, seed=3, noise=0)
    model = build_model(peaks, cell, sg, formula=Formula({"C": 7, "Cl": 2, "O": 2}, z=2))
    assert [len(f) for f in model.fragments] == [10, 1]
    ion = model.frac()[model.fragments[1][0]]
    d = np.linalg.norm((model.frac()[model.fragments[0]] - ion) @ np.array(cell.orth.mat).T,
                       axis=1)
    assert d.min() == pytest.approx(3.5, abs=1e-6)


def test_special_position_snapped_and_counted():
    """Mg(H2O)6 on an inversion centre of P-1 (Z = 1): the Mg peak 0.1 A off the centre is put
    on it, occupancy 1/2, bonded to its three waters in one fragment; UNIT says Mg 1, O 6."""
    cell = gemmi.UnitCell(6.0, 6.5, 7.0, 80, 85, 75)
    sg = gemmi.SpaceGroup("P -1")
    orth = np.array(cell.orth.mat)
    frac_of = np.array(cell.frac.mat)
    mg = np.array([0.5, 0.5, 0.5])
    waters = np.array([mg + frac_of @ v for v in ([2.07, 0, 0], [0, 2.07, 0], [0, 0, 2.07])])
    frac = np.vstack([mg + frac_of @ np.array([0.1, 0, 0]), waters])
    peaks = _scattered_peaks(frac, ["Mg", "O", "O", "O"], sg, cell, noise=0)
    model = build_model(peaks, cell, sg, formula=Formula({"Mg": 1, "H": 12, "O": 6}, z=1))
    assert asu_counts(model.formula, cell, sg) == {"Mg": 0.5, "O": 3.0}
    mg_atom = next(a for a in model.atoms if a.element == "Mg")
    assert mg_atom.occupancy == 0.5
    d = (mg_atom.frac - mg) - np.rint(mg_atom.frac - mg)
    assert np.linalg.norm(orth @ d) < 1e-9
    assert len(model.fragments) == 1
    res = read_res(model_res_text(model))
    assert dict(zip(res.sfac, res.unit, strict=True)) == {"Mg": 1, "H": 12, "O": 6}
    assert next(a for a in res.atoms if a.element == "Mg").occupancy == pytest.approx(0.5)


def test_without_formula_light_atoms_guessed_and_said():
    light = [e for e in ELEMENTS if e != "Cl"]
    z = [gemmi.Element(e).atomic_number for e in light]
    peaks = _scattered_peaks(FRAC[[0, 1, 2, 3, 4, 5, 7, 8, 9]], light, SG, CELL, heights=z)
    model = build_model(peaks, CELL, SG)
    assert len(model.atoms) == 9 and len(model.fragments) == 1
    assert {a.element for a in model.atoms} <= {"C", "N", "O"}
    assert [a.element for a in model.atoms].count("O") == 2
    assert any("no formula" in n for n in model.notes)
    assert model.z == 4  # one formula unit (the asymmetric unit) per operator


def test_formula_units_from_volume():
    sucrose = gemmi.UnitCell(7.7727, 8.7216, 10.8637, 90, 102.983, 90)
    p21 = gemmi.SpaceGroup("P 1 21 1")
    assert formula_units(Formula({"C": 12, "H": 22, "O": 11}), sucrose, p21) == 2
    assert formula_units(Formula({"C": 12, "H": 22, "O": 11}, z=4), sucrose, p21) == 4
    assert asu_counts(Formula({"C": 12, "H": 22, "O": 11}), sucrose, p21) == {"C": 12, "O": 11}


def test_structure_and_mmcif(tmp_path):
    model = build_model(_scattered_peaks(FRAC, ELEMENTS, SG, CELL), CELL, SG, formula=FORMULA)
    st = model_structure(model)
    atoms = [cra.atom for cra in st[0].all()]
    assert [a.name for a in atoms] == [a.label for a in model.atoms]
    assert [a.element.name for a in atoms] == [a.element for a in model.atoms]
    assert {cra.residue.name for cra in st[0].all()} == {"UNL"}
    assert st[0][0].name == "A" and st.spacegroup_hm == "P 1 21/c 1"
    path = write_model_mmcif(tmp_path / "model.cif", model)
    back = gemmi.read_structure(str(path))
    assert [(c.atom.name, c.atom.element.name) for c in back[0].all()] == [
        (a.name, a.element.name) for a in atoms]
    np.testing.assert_allclose([list(c.atom.pos) for c in back[0].all()], model.cart(),
                               atol=1e-3)
    assert len(list(model_structure(model, qpeaks=True)[0].all())) == 15


def test_small_cif_read_by_gemmi_matches_the_res(tmp_path):
    """gemmi reads no .res: the same model as a coreCIF, read by gemmi, has the atoms (names,
    elements, coordinates) and space group the strict .res reader finds."""
    from pattersolve.molecule import model_small_cif_text

    model = build_model(_scattered_peaks(FRAC, ELEMENTS, SG, CELL), CELL, SG, formula=FORMULA)
    res = read_res(model_res_text(model))
    path = tmp_path / "model.cif"
    path.write_text(model_small_cif_text(model))
    ss = gemmi.read_small_structure(str(path))
    assert ss.spacegroup.xhm() == res.spacegroup.xhm() == SG.xhm()
    assert ss.cell.approx(CELL, 1e-4)
    assert [(s.label, s.element.name) for s in ss.sites] == [
        (a.name, a.element) for a in res.atoms]
    np.testing.assert_allclose([[s.fract.x, s.fract.y, s.fract.z] for s in ss.sites],
                               [a.frac for a in res.atoms], atol=1e-6)


def test_res_keeps_the_input_ins(tmp_path):
    """From the data's .ins: its SFAC/UNIT, wavelength and refinement cards (not its WGHT,
    FVAR or atoms), SHELXT-like defaults for the cards it lacks."""
    from types import SimpleNamespace

    from pattersolve.molecule import model_from_solution

    ins = tmp_path / "data.ins"
    ins.write_text("TITL x\nCELL 1.54184 7.4 6.2 16.3 90 97 90\nZERR 4 0 0 0 0 0 0\nLATT 1\n"
                   "SYMM -X, 1/2+Y, 1/2-Z\nSFAC C H O Cl\nUNIT 28 20 8 4\nTEMP -173\n"
                   "CGLS 5\nWGHT 0.05\nFVAR 0.8\nC1 1 0.1 0.2 0.3 11 0.02\nHKLF 4\nEND\n")
    solution = SimpleNamespace(find_peaks=lambda: _scattered_peaks(FRAC, ELEMENTS, SG, CELL),
                               cell=CELL, spacegroup=SG, density=None)
    model = model_from_solution(solution, ins=ins)  # the formula from SFAC/UNIT and ZERR
    assert model.formula.counts == {"C": 7, "H": 5, "O": 2, "Cl": 1} and model.z == 4
    res = read_res(model_res_text(model, ins=ins))
    assert res.sfac == ["C", "H", "O", "Cl"] and res.unit == [28, 20, 8, 4]
    assert res.wavelength == pytest.approx(1.54184)
    assert res.instructions[:2] == ["TEMP -173", "CGLS 5"]
    assert "L.S. 10" not in res.instructions and "PLAN 20" in res.instructions
    assert res.instructions[-2:] == ["WGHT 0.1", "FVAR 1.0"]
    assert sorted(a.element for a in res.atoms) == sorted(ELEMENTS)


@pytest.mark.parametrize("formula", [None, FORMULA])
def test_no_peaks_still_a_readable_res(formula):
    empty = np.zeros((0, 3))
    model = build_model(Peaks(empty, empty, np.zeros(0), np.zeros(0)), CELL, SG,
                        density=np.zeros((8, 8, 16)), formula=formula)
    assert model.atoms == [] and model.fragments == []
    res = read_res(model_res_text(model))
    assert res.atoms == [] and res.sfac and len(res.unit) == len(res.sfac)
