"""Simulated data sets written as MTZ files: for the tests, the example and the benchmarks.

The structure factors come from :mod:`pattersolve.simulate` (the one implementation).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import gemmi
import numpy as np

from .fourier import density_map, miller_sphere, reciprocal_s2
from .simulate import Placement, place_fragment, scale_to_unit_range, structure_factors

#: An Ala-Ala dipeptide (residues 113-114 of PDB 1AKZ, a test-split entry, truncated at CB):
#: element, Cartesian x, y, z (A). Used as a small fixed example; real fragments come from
#: ``pattersolve-train prepare``.
ALA_ALA_1AKZ: tuple[tuple[str, float, float, float], ...] = (
    ("N", 6.385, -25.407, -6.948), ("C", 6.227, -26.863, -6.968), ("C", 7.176, -27.587, -5.981),
    ("O", 7.001, -28.763, -5.684), ("C", 6.432, -27.401, -8.388), ("N", 8.188, -26.889, -5.491),
    ("C", 9.092, -27.476, -4.504), ("C", 8.423, -27.498, -3.139), ("O", 8.622, -28.414, -2.342),
    ("C", 10.385, -26.654, -4.404),
)


#: The tripeptide Asp-Ala-Val of PDB 1AKZ (residues 227-229, heavy atoms): the size of the
#: hard regime's fragments (tripeptides in packed cells), for tests that need one without shards.
ASP_ALA_VAL_1AKZ: tuple[tuple[str, float, float, float], ...] = (
    ("N", -2.054, -12.754, -22.687), ("C", -2.332, -11.553, -23.500),
    ("C", -1.569, -11.642, -24.816), ("O", -2.073, -11.263, -25.872),
    ("C", -1.932, -10.257, -22.781), ("C", -2.951, -9.779, -21.757),
    ("O", -4.120, -10.200, -21.822), ("O", -2.583, -8.963, -20.890),
    ("N", -0.339, -12.171, -24.750), ("C", 0.477, -12.367, -25.953),
    ("C", -0.173, -13.404, -26.879), ("O", -0.151, -13.254, -28.111),
    ("C", 1.890, -12.802, -25.564), ("N", -0.760, -14.461, -26.298),
    ("C", -1.446, -15.463, -27.115), ("C", -2.681, -14.849, -27.788),
    ("O", -2.892, -15.043, -28.991), ("C", -1.859, -16.718, -26.301),
    ("C", -2.631, -17.695, -27.188), ("C", -0.619, -17.395, -25.736),
)


def _split(rows: Sequence[tuple[str, float, float, float]]) -> tuple[list[str], np.ndarray]:
    return [r[0] for r in rows], np.array([r[1:] for r in rows], dtype=np.float64)


def ala_ala() -> tuple[list[str], np.ndarray]:
    """Elements and Cartesian coordinates of :data:`ALA_ALA_1AKZ`."""
    return _split(ALA_ALA_1AKZ)


def asp_ala_val() -> tuple[list[str], np.ndarray]:
    """Elements and Cartesian coordinates of :data:`ASP_ALA_VAL_1AKZ`."""
    return _split(ASP_ALA_VAL_1AKZ)


@dataclass
class SimulatedData:
    """Exact structure factors of a fragment placed in a P1 cell."""

    placement: Placement
    elements: list[str]
    b_iso: np.ndarray
    hkl: np.ndarray  # P1 half-sphere
    f: np.ndarray  # complex, exact


def simulate_fragment(elements: Sequence[str], xyz: np.ndarray, d_min: float,
                      cell_lengths: Sequence[float] | None = (10.0, 10.0, 10.0),
                      padding: float | None = None, b_iso: float | np.ndarray = 15.0,
                      rotation: np.ndarray | None = None) -> SimulatedData:
    """Place a fragment (centre of mass at the cell centre) and compute its F to ``d_min``."""
    pl = place_fragment(xyz, elements, cell_lengths=None if padding else cell_lengths,
                        rotation=rotation, padding=padding)
    hkl = miller_sphere(pl.cell, d_min, half=True)
    b = np.broadcast_to(np.asarray(b_iso, dtype=np.float64), (len(elements),)).copy()
    f = structure_factors(pl.frac, list(elements), b, pl.cell, hkl)
    return SimulatedData(placement=pl, elements=list(elements), b_iso=b, hkl=hkl, f=f)


def _new_mtz(cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup, name: str) -> gemmi.Mtz:
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = spacegroup
    mtz.set_cell_for_all(cell)
    ds = mtz.add_dataset(name)
    ds.project_name = "pattersolve"
    ds.crystal_name = name
    ds.wavelength = 1.0
    ds.cell = cell
    mtz.datasets[0].wavelength = 1.0  # one wavelength: rs warns otherwise
    return mtz


def write_data_mtz(path: str | os.PathLike[str], cell: gemmi.UnitCell, hkl: np.ndarray,
                   columns: Sequence[tuple[str, str, np.ndarray]],
                   spacegroup: gemmi.SpaceGroup | None = None, name: str = "simulated") -> None:
    """Write an MTZ with ``columns`` = ``[(label, mtz_type, values), ...]``."""
    mtz = _new_mtz(cell, spacegroup or gemmi.SpaceGroup("P 1"), name)
    for label, typ, _ in columns:
        mtz.add_column(label, typ)
    data = np.column_stack([np.asarray(hkl, dtype=np.float64)]
                           + [np.asarray(v, dtype=np.float64) for _, _, v in columns])
    mtz.set_data(data.astype(np.float32))
    mtz.update_reso()
    mtz.history = ["simulated by pattersolve.synthetic"]
    mtz.write_to_file(str(path))


def measured_columns(f: np.ndarray, rng: np.random.Generator, noise: float = 0.0,
                     free_fraction: float = 0.05, sigma_fraction: float = 0.02
                     ) -> list[tuple[str, str, np.ndarray]]:
    """FP/SIGFP/FreeR_flag columns from exact F, with optional relative amplitude noise."""
    amp = np.abs(f)
    if noise > 0:
        amp = np.abs(amp * (1.0 + noise * rng.standard_normal(len(amp))))
    sig = np.maximum(sigma_fraction, noise) * amp + 1e-3 * amp.max()
    free = (rng.random(len(amp)) < free_fraction).astype(np.float64)
    return [("FP", "F", amp), ("SIGFP", "Q", sig), ("FreeR_flag", "I", free)]


def phase_columns(f: np.ndarray, labels: tuple[str, str] = ("FC", "PHIC")
                  ) -> list[tuple[str, str, np.ndarray]]:
    """Amplitude/phase columns of complex F (phases in degrees)."""
    return [(labels[0], "F", np.abs(f)), (labels[1], "P", np.degrees(np.angle(f)))]


def degraded_prediction(cell: gemmi.UnitCell, hkl: np.ndarray, f: np.ndarray,
                        shape: Sequence[int], rng: np.random.Generator, b_blur: float = 40.0,
                        max_phase_error: float = 120.0, noise: float = 0.1
                        ) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in for an imperfect network prediction, for tests and benchmarks of refinement.

    The true structure factors blurred by ``b_blur`` (A^2), each phase moved by a uniform
    error in ``+-max_phase_error`` degrees (60 deg on average for 120), Gaussian map noise of
    ``noise`` times the map's r.m.s., scaled to [-1, 1] like the network's output.

    Returns
    -------
    density, f_degraded
        The map on ``shape`` and the degraded structure factors on ``hkl``.
    """
    s2 = reciprocal_s2(cell, hkl)
    dphi = rng.uniform(-np.radians(max_phase_error), np.radians(max_phase_error), len(hkl))
    f_bad = f * np.exp(-b_blur * s2 / 4.0) * np.exp(1j * dphi)
    rho = density_map(hkl, f_bad, shape, cell.volume)
    rho += rng.normal(0.0, noise * rho.std(), rho.shape)
    return scale_to_unit_range(rho), f_bad
