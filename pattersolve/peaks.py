"""Peak search in a density map and a PDB file of the peaks.

:func:`find_peaks` finds local maxima on the full-cell P1 grid, refines each to sub-grid
precision by a parabola through its neighbours along each grid axis, and keeps one peak per
symmetry orbit of the crystal's space group (a peak within ``min_distance`` of a symmetry
image of a higher peak is dropped). :func:`write_peaks_pdb` writes them as atoms (element O,
residue ``PEK``, B-factor column = peak height in map r.m.s. units, occupancy 1) with a
CRYST1 record, atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from .errors import ExitCode, PattersolveError
from .settings import PEAK_MIN_DISTANCE
from .symmetry import symmetry_images
from .transaction import write_atomic

__all__ = ["Peaks", "find_peaks", "write_peaks_pdb", "min_distances"]


@dataclass
class Peaks:
    """Peaks, highest first, one per symmetry orbit."""

    frac: np.ndarray  # (n, 3) fractional coordinates in [0, 1)
    cart: np.ndarray  # (n, 3) Cartesian coordinates, Angstrom
    height: np.ndarray  # (n,) map value at the peak (map units)
    sigma: np.ndarray  # (n,) height / r.m.s. of the map

    def __len__(self) -> int:
        return len(self.height)


def min_distances(frac_a: np.ndarray, frac_b: np.ndarray, cell: gemmi.UnitCell,
                  spacegroup: gemmi.SpaceGroup | None = None) -> np.ndarray:
    """For each point of ``a``, the shortest distance (A) to any symmetry/lattice image of any
    point of ``b``. Shape ``(len(a),)``; inf when ``b`` is empty."""
    frac_a = np.asarray(frac_a, dtype=np.float64).reshape(-1, 3)
    if len(np.asarray(frac_b).reshape(-1, 3)) == 0:
        return np.full(len(frac_a), np.inf)
    images = symmetry_images(frac_b, spacegroup).reshape(-1, 3)
    orth = np.array(cell.orth.mat, dtype=np.float64)
    diff = frac_a[:, None, :] - images[None, :, :]
    diff -= np.rint(diff)
    # the nearest lattice image of a wrapped difference is within +-1 cell in oblique cells
    best = np.full(len(frac_a), np.inf)
    for shift in np.ndindex(3, 3, 3):
        t = np.array(shift, dtype=np.float64) - 1.0
        d = np.linalg.norm((diff + t) @ orth.T, axis=-1).min(axis=1)
        best = np.minimum(best, d)
    return best


def find_peaks(rho: np.ndarray, cell: gemmi.UnitCell,
               spacegroup: gemmi.SpaceGroup | None = None, n_max: int = 100,
               min_distance: float = PEAK_MIN_DISTANCE, min_sigma: float = 0.0) -> Peaks:
    """Local maxima of a full-cell map, sub-grid refined, unique under the space group.

    Parameters
    ----------
    rho
        Map on the full P1 cell, shape ``(nu, nv, nw)``, point ``[u, v, w]`` at fractional
        ``(u/nu, v/nv, w/nw)``.
    cell
        Unit cell.
    spacegroup
        Crystal space group; peaks related by its operators (and lattice translations) count
        once. None means P1.
    n_max
        Keep at most this many peaks.
    min_distance
        Peaks closer than this (A) to a symmetry image of a higher peak are dropped.
    min_sigma
        Ignore maxima below this many r.m.s. of the map.

    Returns
    -------
    Peaks
        Highest first.
    """
    rho = np.asarray(rho, dtype=np.float64)
    if rho.ndim != 3 or min(rho.shape) < 3:
        raise PattersolveError(f"peak search needs a 3D map of at least 3 points per axis, got "
                               f"shape {rho.shape}", "use a finer map grid", ExitCode.DATA)
    shape = np.asarray(rho.shape)
    rms = float(np.sqrt(np.mean((rho - rho.mean()) ** 2))) or 1.0
    is_max = np.ones(rho.shape, dtype=bool)
    for shift in np.ndindex(3, 3, 3):
        if shift == (1, 1, 1):
            continue
        nb = np.roll(rho, tuple(1 - s for s in shift), axis=(0, 1, 2))
        # ">" towards half of the neighbours and ">=" to the other half breaks plateau ties
        is_max &= (rho > nb) if shift < (1, 1, 1) else (rho >= nb)
    is_max &= rho > rho.mean() + min_sigma * rms
    idx = np.argwhere(is_max)
    heights = rho[tuple(idx.T)]
    order = np.argsort(-heights)
    idx, heights = idx[order], heights[order]
    # parabolic refinement along each axis
    offset = np.zeros(idx.shape, dtype=np.float64)
    peak_h = heights.copy()
    for axis in range(3):
        step = np.zeros(3, dtype=np.int64)
        step[axis] = 1
        fm = rho[tuple(((idx - step) % shape).T)]
        fp = rho[tuple(((idx + step) % shape).T)]
        den = fm - 2.0 * heights + fp
        with np.errstate(divide="ignore", invalid="ignore"):
            off = np.where(den < 0, 0.5 * (fm - fp) / den, 0.0)
        off = np.clip(off, -0.5, 0.5)
        offset[:, axis] = off
        peak_h += np.where(den < 0, -0.25 * (fm - fp) * off, 0.0)
    frac = ((idx + offset) / shape) % 1.0
    kept: list[int] = []
    kept_frac = np.zeros((0, 3))
    for i in range(len(frac)):
        if len(kept) >= n_max:
            break
        # distance to symmetry images of itself is irrelevant (special positions allowed)
        if len(kept) and min_distances(frac[i:i + 1], kept_frac, cell, spacegroup)[0] \
                < min_distance:
            continue
        kept.append(i)
        kept_frac = frac[kept]
    kept_arr = np.array(kept, dtype=np.int64)
    frac_k = frac[kept_arr] if len(kept_arr) else np.zeros((0, 3))
    orth = np.array(cell.orth.mat, dtype=np.float64)
    h = peak_h[kept_arr] if len(kept_arr) else np.zeros(0)
    return Peaks(frac=frac_k, cart=frac_k @ orth.T, height=h, sigma=(h - rho.mean()) / rms)


def peaks_structure(peaks: Peaks, cell: gemmi.UnitCell,
                    spacegroup: gemmi.SpaceGroup | None = None, element: str = "O"
                    ) -> gemmi.Structure:
    """Peaks as a :class:`gemmi.Structure`: HETATM records (residue PEK, chain A), CRYST1.

    The B-factor column holds the peak height in r.m.s. units (capped at 999.99), the
    occupancy 1.00.
    """
    st = gemmi.Structure()
    st.cell = cell
    st.spacegroup_hm = spacegroup.xhm() if spacegroup is not None else "P 1"
    model = gemmi.Model(1)
    chain = gemmi.Chain("A")
    for i in range(len(peaks)):
        res = gemmi.Residue()
        res.name = "PEK"
        res.seqid = gemmi.SeqId(i + 1, " ")
        res.het_flag = "H"
        atom = gemmi.Atom()
        atom.name = element
        atom.element = gemmi.Element(element)
        atom.pos = gemmi.Position(*peaks.cart[i])
        atom.occ = 1.0
        atom.b_iso = float(np.clip(peaks.sigma[i], -99.99, 999.99))
        atom.serial = i + 1
        res.add_atom(atom)
        chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    return st


def write_peaks_pdb(path: str | Path, peaks: Peaks, cell: gemmi.UnitCell,
                    spacegroup: gemmi.SpaceGroup | None = None, element: str = "O",
                    overwrite: bool = True) -> Path:
    """Write :func:`peaks_structure` as a PDB file, atomically."""
    st = peaks_structure(peaks, cell, spacegroup, element)
    return write_atomic(path, st.write_pdb, overwrite)
