"""The free origin of a P1 solution: the structure is put whole into the cell."""

from __future__ import annotations

import dataclasses

import numpy as np

from pattersolve.fourier import density_map
from pattersolve.phasematch import match_phases
from pattersolve.solve import Solution, place_in_cell


def _solution(alaala, t):
    cell, hkl = alaala.placement.cell, alaala.hkl
    f = alaala.f * np.exp(2j * np.pi * (hkl @ np.asarray(t)))  # the molecule moved by +t
    shape = (20, 20, 20)
    rho = density_map(hkl, f, shape, cell.volume)
    return Solution(f=f, fom=np.ones(len(hkl)), density=rho, shape=shape, method="classical")


def _face_fraction(rho):
    """Largest positive density on a cell face, as a fraction of the densest plane's."""
    pos = np.clip(rho, 0.0, None)
    out = []
    for axis in range(3):
        profile = pos.sum(axis=tuple(a for a in range(3) if a != axis))
        out.append(profile[0] / profile.max())
    return max(out)


def test_molecule_cut_by_the_faces_is_put_whole_in_the_middle(alaala):
    from pattersolve.reflections import Reflections

    refl = Reflections.from_arrays(alaala.placement.cell, alaala.hkl, np.abs(alaala.f))
    sol = _solution(alaala, (0.5, 0.45, 0.52))  # the centred dipeptide moved onto the corners
    assert _face_fraction(sol.density) > 0.5
    placed = place_in_cell(refl, sol)
    assert _face_fraction(placed.density) < 0.05
    # map and coefficients moved together, in the program's sign convention
    np.testing.assert_allclose(placed.density,
                               density_map(refl.hkl, placed.f, sol.shape, refl.cell.volume),
                               atol=1e-9 * np.abs(sol.density).max())
    np.testing.assert_allclose(np.abs(placed.f), np.abs(sol.f))
    m = match_phases(refl.hkl, alaala.f, placed.f, refl.cell)
    assert m.weighted_error < 1e-6 and not m.inverted
    # the widest empty gap is centred on the faces: the dipeptide (centred in the truth)
    # comes back within a grid step of the middle
    assert np.all(np.abs(((m.shift + 0.5) % 1.0) - 0.5) <= 0.05 + 1e-9), m.shift
    assert placed.stages["origin"]["shift"] and placed.peaks is None


def test_solution_with_a_space_group_origin_is_left_alone(alaala):
    from pattersolve.reflections import Reflections

    refl = Reflections.from_arrays(alaala.placement.cell, alaala.hkl, np.abs(alaala.f))
    sol = dataclasses.replace(_solution(alaala, (0.5, 0.5, 0.5)), symmetric=True)
    assert place_in_cell(refl, sol) is sol
