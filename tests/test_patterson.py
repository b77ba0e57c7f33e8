"""Patterson maps against brute-force summation, in P1 and P2(1)2(1)2(1), and its group."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from pattersolve import synthetic
from pattersolve.fourier import good_grid_size, miller_sphere
from pattersolve.patterson import cell_grid_shape, patterson, patterson_group
from pattersolve.reflections import read_reflections
from pattersolve.simulate import structure_factors


def _brute_force(hkl_full, inten_full, cell, shape, points):
    """P(u) = 1/V sum_h I(h) cos(2 pi h.u) over the full sphere (both Friedel mates)."""
    out = []
    for u in points:
        frac = np.asarray(u) / np.asarray(shape)
        out.append((inten_full * np.cos(2 * np.pi * hkl_full @ frac)).sum() / cell.volume)
    return np.array(out)


def _check(r, cell, shape, hkl_full, inten_full):
    pmap = patterson(r.hkl, r.intensity, cell, shape, with_origin=False)
    pts = [(0, 0, 0), (1, 2, 3), (shape[0] // 2, 1, shape[2] - 2), (5, 7, 1)]
    ref = _brute_force(hkl_full, inten_full, cell, shape, pts)
    got = np.array([pmap[p] for p in pts])
    assert np.allclose(got, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_patterson_p1_oblique_cell(tmp_path):
    cell = gemmi.UnitCell(9.5, 11.0, 12.5, 75, 98, 110)
    hkl = miller_sphere(cell, 2.0)
    rng = np.random.default_rng(0)
    f = structure_factors(rng.random((8, 3)), ["C"] * 8, 10.0, cell, hkl)
    p = tmp_path / "p1.mtz"
    synthetic.write_data_mtz(p, cell, hkl, [("FP", "F", np.abs(f))])
    r = read_reflections(p)
    shape = cell_grid_shape(r.cell, r.spacegroup, r.hkl, r.d_min)
    full = np.concatenate([hkl, -hkl])
    inten = np.concatenate([np.abs(f) ** 2] * 2)
    _check(r, cell, shape, full, inten.astype(np.float32).astype(np.float64))


def test_patterson_p212121_from_asu_data(tmp_path):
    """The pitfall: data in the crystal's group. Brute force over all symmetry mates."""
    sg = gemmi.SpaceGroup("P 21 21 21")
    cell = gemmi.UnitCell(10, 12, 14, 90, 90, 90)
    rng = np.random.default_rng(1)
    xyz = rng.random((5, 3))
    frac = np.concatenate([np.array([op.apply_to_xyz(list(x)) for x in xyz])
                           for op in sg.operations()]) % 1.0
    full = miller_sphere(cell, 2.0, half=False)
    f_full = structure_factors(frac, ["N"] * len(frac), 12.0, cell, full)
    asu = gemmi.ReciprocalAsu(sg)
    in_asu = np.array([asu.is_in([int(x) for x in h]) for h in full])
    absent = sg.operations().systematic_absences(full.astype(np.int32))
    sel = in_asu & ~absent
    p = tmp_path / "p212121.mtz"
    synthetic.write_data_mtz(p, cell, full[sel], [("FP", "F", np.abs(f_full[sel]))], spacegroup=sg)
    r = read_reflections(p)
    shape = cell_grid_shape(r.cell, r.spacegroup, r.hkl, r.d_min)
    assert all(n % 2 == 0 for n in shape)
    inten = np.abs(f_full[~absent]) ** 2
    _check(r, cell, shape, full[~absent], inten)


@pytest.mark.parametrize("name,expected", [("P 21 21 21", "P m m m"), ("P 1 21 1", "P 1 2/m 1"),
                                           ("C 1 2 1", "C 1 2/m 1"), ("P 1", "P -1"),
                                           ("P 41 21 2", "P 4/m m m")])
def test_patterson_group(name, expected):
    assert patterson_group(gemmi.SpaceGroup(name)).hm == expected


def test_conventions_derive_symmorphic_is_not_in_place():
    """CONVENTIONS.md says `ops.derive_symmorphic(); ops.add_inversion()`: in gemmi 0.7.5
    derive_symmorphic() returns a new GroupOps, so that recipe keeps the screw axes and
    finds the wrong group. This test pins the behaviour our patterson_group works around."""
    ops = gemmi.SpaceGroup("P 21 21 21").operations()
    ops.derive_symmorphic()  # result discarded, as in the documented recipe
    ops.add_inversion()
    assert gemmi.find_spacegroup_by_ops(ops).hm != "P m m m"


def test_good_grid_size():
    assert good_grid_size(20) == 20
    assert good_grid_size(21) == 24
    assert good_grid_size(13, 4) == 16
    n = good_grid_size(97, 3)
    assert n % 6 == 0 and n >= 97
