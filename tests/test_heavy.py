"""The Patterson method for heavy atoms (pattersolve.heavy)."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from pattersolve import heavy
from pattersolve.api import load
from pattersolve.fourier import miller_sphere, sampled_grid_shape
from pattersolve.phasematch import match_phases
from pattersolve.simulate import structure_factors
from pattersolve.symmetry import grid_factors, symmetry_images

P21 = gemmi.SpaceGroup("P 1 21 1")
P212121 = gemmi.SpaceGroup("P 21 21 21")


def _same_mod1(a: np.ndarray, b: np.ndarray) -> bool:
    d = (np.asarray(a) - np.asarray(b) + 0.5) % 1.0 - 0.5
    return bool(np.abs(d).max() < 1e-9)


def _equivalent_under_inversion(u: np.ndarray, v: np.ndarray) -> bool:
    """The Patterson is centrosymmetric: ``u`` and ``-u`` are the same vector."""
    return _same_mod1(u, v) or _same_mod1(u, -np.asarray(v))


def test_harker_vectors_p21():
    x = np.array([0.1, 0.3, 0.2])
    hv = heavy.harker_vectors(x, P21)
    assert hv.shape == (1, 3)
    assert _same_mod1(hv[0], [0.2, 0.5, 0.4])  # (2x, 1/2, 2z)


def test_harker_vectors_p212121():
    x, y, z = 0.1, 0.3, 0.2
    hv = heavy.harker_vectors(np.array([x, y, z]), P212121)
    expected = [[0.5 - 2 * x, -2 * y, 0.5],  # -x+1/2, -y, z+1/2
                [0.5, 0.5 - 2 * y, -2 * z],  # x+1/2, -y+1/2, -z
                [-2 * x, 0.5, 0.5 - 2 * z]]  # -x, y+1/2, -z+1/2
    assert len(hv) == 3
    for want in expected:
        assert any(_equivalent_under_inversion(v, want) for v in hv), (want, hv)


def test_harker_vectors_leave_out_pure_translations():
    """C2: the centring's vector (1/2, 1/2, 0) is the same for every site: left out."""
    hv = heavy.harker_vectors(np.array([0.1, 0.3, 0.2]), gemmi.SpaceGroup("C 1 2 1"))
    assert len(hv) == 2
    assert _same_mod1(hv[0], [0.2, 0.0, 0.4])


def _exact_patterson(frac: np.ndarray, elements: list[str], cell: gemmi.UnitCell,
                     sg: gemmi.SpaceGroup, d_min: float) -> np.ndarray:
    hkl = miller_sphere(cell, d_min)
    images = symmetry_images(frac, sg).reshape(-1, 3)
    f = structure_factors(images, elements * len(sg.operations()), 2.0, cell, hkl)
    shape = sampled_grid_shape(cell, hkl, d_min, 3.0, grid_factors(sg))
    return heavy.sharpened_patterson(hkl, np.abs(f), cell, sg, shape)


@pytest.mark.parametrize("hm", ["P 1 21 1", "P 21 21 21"])
def test_vector_search_finds_one_heavy_atom(hm):
    """One Pd among nothing else: the best first site has the true Harker vectors."""
    sg = gemmi.SpaceGroup(hm)
    cell = gemmi.UnitCell(8.0, 9.0, 10.0, 90, 90 if hm != "P 1 21 1" else 100, 90)
    site = np.array([[0.13, 0.08, 0.36]])
    pmap = _exact_patterson(site, ["Pd"], cell, sg, 1.2)
    found = heavy.locate_heavy_atoms(pmap, cell, sg, n_sites=1)[0][0]
    from pattersolve.patterson import patterson_group
    from pattersolve.peaks import min_distances

    true_v = heavy.harker_vectors(site[0], sg)
    got_v = heavy.harker_vectors(found[0], sg)
    assert min_distances(got_v, true_v, cell, patterson_group(sg)).max() < 0.25


def _heavy_atom_mtz(heavy_element: str = "Pd", d_min: float = 1.5, n_light: int = 15,
                    seed: int = 5) -> tuple[gemmi.Mtz, gemmi.SmallStructure]:
    """One heavy atom and ``n_light`` C/N/O in P2(1), 8 x 9 x 10 A, exact amplitudes to
    ``d_min`` (FP, SIGFP) and the true phases (FC, PHIC). Atoms at least 1.3 A apart, the
    heavy atom at least 1.9 A from the rest (symmetry images included)."""
    rng = np.random.default_rng(seed)
    ss = gemmi.SmallStructure()
    ss.cell = gemmi.UnitCell(8.0, 9.0, 10.0, 90, 100, 90)
    ss.spacegroup_hm = "P 1 21 1"
    ss.spacegroup = gemmi.SpaceGroup("P 1 21 1")  # gemmi 0.7.5 uses this, not the name
    ss.setup_cell_images()
    placed: list[np.ndarray] = []

    def dist(a: np.ndarray, b: np.ndarray, asu: gemmi.Asu) -> float:
        return ss.cell.find_nearest_image(ss.cell.orthogonalize(gemmi.Fractional(*a)),
                                          ss.cell.orthogonalize(gemmi.Fractional(*b)),
                                          asu).dist()

    while len(placed) < n_light + 1:
        x = rng.random(3)
        need = 1.9 if not placed else 1.3
        ok = all(dist(x, p, gemmi.Asu.Any) > (1.9 if i == 0 else need)
                 for i, p in enumerate(placed))
        if ok and dist(x, x, gemmi.Asu.Different) > need:
            placed.append(x)
    for i, x in enumerate(placed):
        site = gemmi.SmallStructure.Site()
        site.label = f"A{i}"
        site.type_symbol = heavy_element if i == 0 else "CNO"[i % 3]
        site.element = gemmi.Element(site.type_symbol)
        site.fract = gemmi.Fractional(*x)
        site.occ = 1.0
        site.u_iso = 0.03
        ss.add_site(site)
    hkl = gemmi.make_miller_array(ss.cell, ss.spacegroup, d_min)
    calc = gemmi.StructureFactorCalculatorX(ss.cell)
    f = np.array([calc.calculate_sf_from_small_structure(ss, list(h)) for h in hkl])
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = ss.spacegroup
    mtz.set_cell_for_all(ss.cell)
    mtz.add_dataset("synthetic")
    for label, typ in (("FP", "F"), ("SIGFP", "Q"), ("FC", "F"), ("PHIC", "P")):
        mtz.add_column(label, typ)
    amp = np.abs(f)
    mtz.set_data(np.column_stack([hkl, amp, 0.01 * amp + 0.01, amp,
                                  np.degrees(np.angle(f))]).astype(np.float32))
    return mtz, ss


def _phase_error(ss: gemmi.SmallStructure, sol, refl) -> float:
    """Weighted phase error (deg) of a solution on ``refl.hkl`` against the true structure,
    after the origin and hand search of the space group."""
    calc = gemmi.StructureFactorCalculatorX(ss.cell)
    ref = np.array([calc.calculate_sf_from_small_structure(ss, h) for h in refl.hkl.tolist()])
    return match_phases(refl.hkl, ref, sol.f, refl.cell,
                        spacegroup=refl.spacegroup).weighted_error


@pytest.mark.slow
def test_heavy_atom_structure_solved_at_1_5_angstrom():
    """Pd + 15 C/N/O in P2(1) from exact amplitudes to 1.5 A: solved, confident, in P2(1)."""
    mtz, ss = _heavy_atom_mtz("Pd")
    refl = load(mtz, f_label="FP", sigf_label="SIGFP")
    sol = heavy.solve_patterson(refl, formula="Pd C5 N5 O5")
    stage = sol.stages["patterson"]
    assert sol.symmetric and sol.method == "patterson"
    assert stage["heavy_element"] == "Pd" and len(stage["heavy_sites"]) == 1
    assert _phase_error(ss, sol, refl) < 30
    assert sol.confident is True, sol.warnings


@pytest.mark.slow
def test_no_heavy_atom_is_not_claimed():
    """The same kind of structure with carbon for the palladium: no confident solution."""
    mtz, ss = _heavy_atom_mtz("C")
    refl = load(mtz, f_label="FP", sigf_label="SIGFP")
    sol = heavy.solve_patterson(refl)
    assert sol.confident is False
    assert any("unreliable" in w for w in sol.warnings)
    assert _phase_error(ss, sol, refl) > 45  # the claim is withheld from a wrong map


def test_formula_gives_heavy_element_and_count():
    cell = gemmi.UnitCell(8.0, 9.0, 10.0, 90, 100, 90)  # 19.7 atoms per asymmetric unit
    hkl = miller_sphere(cell, 2.0)
    amp = np.ones(len(hkl))
    got = heavy.heavy_contents("Pd C20 H24 N2 O2", hkl, amp, cell, P21, (8, 8, 8))
    assert got.element == "Pd" and got.n_heavy == (1,) and got.n_light == 24
    got = heavy.heavy_contents("Br2 C4 O2", hkl, amp, cell, P21, (8, 8, 8))
    assert got.element == "Br" and got.n_heavy == (4,) and got.n_light == 12


@pytest.mark.slow
def test_phase_method_patterson_through_the_api():
    """``pattersolve.phase(..., method="patterson")``: the solution in P2(1), confident."""
    from pattersolve import memory, phase

    if "patterson" not in memory.METHODS:
        pytest.skip("pattersolve.memory has no estimate for the patterson method yet")
    mtz, _ = _heavy_atom_mtz("Pd")
    s = phase(mtz, method="patterson", f_label="FP", sigf_label="SIGFP",
              formula="Pd C5 N5 O5")
    assert s.method == "patterson" and s.spacegroup.hm == "P 1 21 1"
    assert s.confident is True, s.warnings
    assert s.stages["patterson"]["heavy_element"] == "Pd"
