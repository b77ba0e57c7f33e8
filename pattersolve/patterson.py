"""Patterson maps from measured data: on the cell's own grid, or on a model's grid.

The data are P1 half-sphere intensities (:class:`~pattersolve.reflections.Reflections`), so
the map is correct in every space group: no symmetry expansion with phase shifts (the
pitfall in CONVENTIONS.md). The Patterson's own symmetry is the Patterson group: the
symmorphic group of the crystal's rotations plus an inversion centre.
"""

from __future__ import annotations

from collections.abc import Sequence

import gemmi
import numpy as np

from . import settings
from .fourier import check_grid_holds, estimate_f000_sq, patterson_map, sampled_grid_shape


def patterson_group(spacegroup: gemmi.SpaceGroup) -> gemmi.SpaceGroup:
    """The Patterson group: Pmmm for P2(1)2(1)2(1), P2/m for P2(1), C2/m for C2.

    Note: ``GroupOps.derive_symmorphic()`` returns a new object (gemmi 0.7.5); calling it for
    its side effect, as CONVENTIONS.md suggests, leaves the screw translations in place and
    gives e.g. "P b c a" for P2(1)2(1)2(1).
    """
    ops = spacegroup.operations().derive_symmorphic()
    ops.add_inversion()
    found = gemmi.find_spacegroup_by_ops(ops)
    if found is None:  # pragma: no cover - every symmorphic+inversion group is tabulated
        raise ValueError(f"no Patterson group found for {spacegroup.hm}")
    return found


def cell_grid_shape(cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup, hkl: np.ndarray,
                    d_min: float, sample_rate: float = settings.MAP_SAMPLE_RATE
                    ) -> tuple[int, int, int]:
    """Grid on the cell's own axes like CCP4's GRID SAMPLE ``sample_rate``.

    Spacing about ``d_min / sample_rate``, sizes with factors 2, 3, 5 that the space group
    allows, large enough to hold every Miller index without aliasing.
    """
    factors = spacegroup.operations().find_grid_factors()
    shape = sampled_grid_shape(cell, hkl, d_min, sample_rate, factors)
    return shape


def patterson(hkl: np.ndarray, intensity: np.ndarray, cell: gemmi.UnitCell,
              shape: Sequence[int], with_origin: bool = True) -> np.ndarray:
    """Patterson map ``P(u)`` on ``shape`` from P1 half-sphere intensities.

    With ``with_origin`` the unmeasured ``|F(000)|^2`` is estimated as the constant that
    makes the map non-negative (PHASING_NOTES.md); otherwise the map has zero mean.
    """
    check_grid_holds(hkl, shape)
    f000_sq = estimate_f000_sq(hkl, intensity, shape, cell.volume) if with_origin else 0.0
    return patterson_map(hkl, intensity, shape, cell.volume, f000_sq)
