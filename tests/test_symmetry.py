"""Space-group operators, origin shifts and origin location (pattersolve.symmetry)."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from pattersolve.fourier import density_map, miller_sphere
from pattersolve.simulate import structure_factors
from pattersolve.symmetry import (
    grid_for_chargeflip,
    locate_origin,
    shift_phases,
    space_group_ops,
    symmetrise_map,
    symmetry_agreement,
    symmetry_images,
)


@pytest.mark.parametrize("name", ["P 1", "P 1 21 1", "P 21 21 21", "C 1 2 1", "R 3 c:H",
                                  "F d -3 m:2"])
def test_operators_match_gemmi(name):
    sg = gemmi.SpaceGroup(name)
    ops = space_group_ops(sg)
    gops = list(sg.operations())
    assert len(ops) == len(gops)
    assert np.array_equal(ops[0][0], np.eye(3)) and not ops[0][1].any()
    x = np.array([0.123, 0.456, 0.789])
    for (rot, tran), op in zip(ops, gops, strict=True):
        assert np.allclose(rot @ x + tran, op.apply_to_xyz(list(x)), atol=1e-12)
    assert space_group_ops(sg) is ops  # converted once
    assert len(space_group_ops(None)) == 1


def test_symmetry_images_of_a_point():
    sg = gemmi.SpaceGroup("P 1 21 1")
    images = symmetry_images(np.array([[0.1, 0.2, 0.3]]), sg)
    assert images.shape == (2, 1, 3)
    assert np.allclose(images[1, 0], [0.9, 0.7, 0.7])


def test_shift_phases_moves_the_density():
    """``shift_phases(F, s)`` are the structure factors of ``rho(x + s)``: atoms at ``x - s``."""
    cell = gemmi.UnitCell(8, 9, 10, 90, 100, 90)
    frac = np.array([[0.1, 0.2, 0.3], [0.4, 0.7, 0.6]])
    hkl = miller_sphere(cell, 2.0)
    f = structure_factors(frac, ["C", "O"], 10.0, cell, hkl)
    s = np.array([0.13, -0.21, 0.05])
    moved = structure_factors(frac - s, ["C", "O"], 10.0, cell, hkl)
    assert np.allclose(shift_phases(hkl, f, s), moved, atol=1e-9 * np.abs(f).max())


def test_locate_origin_finds_a_shifted_p21_structure():
    sg = gemmi.SpaceGroup("P 1 21 1")
    cell = gemmi.UnitCell(7.1, 6.3, 8.2, 90, 97, 90)
    rng = np.random.default_rng(0)
    asu = rng.random((5, 3))
    frac = symmetry_images(asu, sg).reshape(-1, 3)
    els = ["C", "N", "O", "C", "S"] * 2
    hkl = miller_sphere(cell, 1.0)
    f = structure_factors(frac, els, 3.0, cell, hkl)
    shape = grid_for_chargeflip(cell, hkl, sg)
    assert symmetry_agreement(density_map(hkl, f, shape, cell.volume), sg)[0] > 0.999
    wrong = shift_phases(hkl, f, [0.23, 0.31, 0.17])  # a P1 solution at another origin
    assert symmetry_agreement(density_map(hkl, wrong, shape, cell.volume), sg)[0] < 0.5
    found = locate_origin(hkl, wrong, cell, sg, shape)
    assert found.mean_agreement > 0.99
    # P2(1) origins: x and z in {0, 1/2}, y free (polar axis)
    back = (np.array([0.23, 0.31, 0.17]) + found.shift) * 2
    assert np.allclose((back[[0, 2]] + 0.02) % 1.0, 0.02, atol=0.01)
    rho = density_map(hkl, found.f, shape, cell.volume)
    assert np.corrcoef(symmetrise_map(rho, sg).ravel(), rho.ravel())[0, 1] > 0.99
