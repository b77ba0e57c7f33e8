"""Structure factors and maps from coordinates: the physics, implemented once.

Form factors (IT92), structure factors of atoms by direct summation, fragments placed in
cells, molecular envelopes, and :class:`TorchMapMaker`, which makes batches of density and
Patterson maps in torch. The Fourier core these build on (reciprocal geometry, grids, maps
<-> structure factors) and its conventions are in :mod:`pattersolve.fourier`:

* ``F(h) = sum_j occ_j f_j(s) exp(-B_j s^2 / 4) exp(+2 pi i h.x_j)``, IT92 form factors,
  ``s = 1/d`` (gemmi's sign convention).

Used by the training tree (maps from PDB fragments, numpy and batched torch), the tests, the
benchmarks and the example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import gemmi
import numpy as np

from .fourier import check_grid_holds, miller_sphere, reciprocal_s2

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Elements a coordinate shard may hold; shards store indices into this table.
ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "S", "Se", "P", "Fe", "Zn", "Cl", "Br", "I")


# ---------------------------------------------------------------------------------------------
# form factors
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _it92(symbol: str) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    coef = gemmi.Element(symbol).it92
    return tuple(coef.a), tuple(coef.b), float(coef.c)


def it92_coefficients(elements: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IT92 Gaussian coefficients for each element.

    Parameters
    ----------
    elements
        Element symbols (``"C"``, ``"N"``, ...).

    Returns
    -------
    a, b, c
        Arrays of shape ``(n, 4)``, ``(n, 4)`` and ``(n,)`` with
        ``f(s) = sum_i a_i exp(-b_i s^2 / 4) + c``.
    """
    rows = [_it92(e) for e in elements]
    a = np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4)
    b = np.array([r[1] for r in rows], dtype=np.float64).reshape(-1, 4)
    c = np.array([r[2] for r in rows], dtype=np.float64)
    return a, b, c


def form_factors(elements: Sequence[str], s2: np.ndarray) -> np.ndarray:
    """Atomic form factors ``f(s)`` of shape ``(len(elements), len(s2))`` for ``s2 = 1/d^2``."""
    a, b, c = it92_coefficients(elements)
    stol2 = np.asarray(s2, dtype=np.float64)[None, None, :] / 4.0
    return (a[:, :, None] * np.exp(-b[:, :, None] * stol2)).sum(axis=1) + c[:, None]



# ---------------------------------------------------------------------------------------------
# structure factors by direct summation (numpy)
# ---------------------------------------------------------------------------------------------
def structure_factors(
    frac: np.ndarray,
    elements: Sequence[str],
    b_iso: np.ndarray | float,
    cell: gemmi.UnitCell,
    hkl: np.ndarray,
    occupancy: np.ndarray | float = 1.0,
    chunk: int = 4096,
) -> np.ndarray:
    """Structure factors by direct summation with IT92 form factors.

    Parameters
    ----------
    frac
        Fractional coordinates, shape ``(n_atoms, 3)``.
    elements
        Element symbol per atom.
    b_iso
        Isotropic B per atom (or one value), Angstrom^2.
    cell
        Unit cell the coordinates are fractional in.
    hkl
        Miller indices, shape ``(n_refl, 3)``.
    occupancy
        Occupancy per atom (or one value).
    chunk
        Reflections per block (bounds memory).

    Returns
    -------
    numpy.ndarray
        complex128 ``F(h)``, gemmi's sign convention (``exp(+2 pi i h.x)``).
    """
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    n = len(frac)
    b_iso = np.broadcast_to(np.asarray(b_iso, dtype=np.float64), (n,))
    occ = np.broadcast_to(np.asarray(occupancy, dtype=np.float64), (n,))
    hkl = np.asarray(hkl, dtype=np.float64).reshape(-1, 3)
    uniq, inverse = np.unique(np.asarray(elements), return_inverse=True)
    out = np.empty(len(hkl), dtype=np.complex128)
    for start in range(0, len(hkl), chunk):
        h = hkl[start : start + chunk]
        s2 = reciprocal_s2(cell, h)
        f_el = form_factors(list(uniq), s2)[inverse]  # (n_atoms, m)
        weight = occ[:, None] * f_el * np.exp(-b_iso[:, None] * s2[None, :] / 4.0)
        phase = 2.0 * np.pi * (frac @ h.T)  # (n_atoms, m)
        out[start : start + chunk] = (weight * np.exp(1j * phase)).sum(axis=0)
    return out


def f000(elements: Sequence[str], occupancy: np.ndarray | float = 1.0) -> float:
    """``F(000)``: the number of electrons in the cell (sum of ``f(0)``)."""
    f0 = form_factors(elements, np.zeros(1))[:, 0]
    occ = np.broadcast_to(np.asarray(occupancy, dtype=np.float64), f0.shape)
    return float((f0 * occ).sum())


# ---------------------------------------------------------------------------------------------
# envelopes and map scaling (numpy)
# ---------------------------------------------------------------------------------------------
def envelope_mask(cell: gemmi.UnitCell, frac: np.ndarray, shape: Sequence[int],
                  radius: float) -> np.ndarray:
    """The molecular envelope on a grid: points within ``radius`` of any atom.

    Parameters
    ----------
    cell
        The unit cell (any; distances are Cartesian, images across the cell's faces count).
    frac
        ``(n, 3)`` fractional coordinates of the atoms.
    shape
        Grid ``(nu, nv, nw)`` over the cell.
    radius
        Sphere radius (A): 1.6 gives the "true envelope" of PHASING_NOTES.md, the support an
        oracle refinement uses.

    Returns
    -------
    numpy.ndarray
        bool array of ``shape``.
    """
    grid = gemmi.FloatGrid(*(int(n) for n in shape))
    grid.set_unit_cell(cell)
    for f in np.asarray(frac, dtype=np.float64).reshape(-1, 3):
        grid.set_points_around(cell.orthogonalize(gemmi.Fractional(*f)), float(radius), 1.0)
    return np.array(grid, copy=True) > 0


def scale_to_unit_range(x: np.ndarray) -> np.ndarray:
    """Scale a map to ``[-1, 1]`` by its own minimum and maximum (the paper's normalisation)."""
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 0:
        return np.zeros_like(x)
    return (2.0 * (x - lo) / (hi - lo) - 1.0).astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# fragments in cells
# ---------------------------------------------------------------------------------------------
def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (from a random unit quaternion)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def atomic_masses(elements: Sequence[str]) -> np.ndarray:
    """Atomic weights from gemmi."""
    return np.array([gemmi.Element(e).weight for e in elements], dtype=np.float64)


@dataclass(frozen=True)
class Placement:
    """A fragment placed in a P1 cell."""

    cell: gemmi.UnitCell
    frac: np.ndarray  # (n, 3) fractional coordinates
    cart: np.ndarray  # (n, 3) Cartesian coordinates in the cell


def orthorhombic_cell(lengths: Sequence[float]) -> gemmi.UnitCell:
    """A P1 cell with 90 degree angles."""
    a, b, c = (float(x) for x in lengths)
    return gemmi.UnitCell(a, b, c, 90.0, 90.0, 90.0)


def place_fragment(
    xyz: np.ndarray,
    elements: Sequence[str],
    cell_lengths: Sequence[float] | None = None,
    rotation: np.ndarray | None = None,
    padding: float | None = None,
) -> Placement:
    """Centre a fragment by its centre of mass in an orthorhombic P1 cell.

    Parameters
    ----------
    xyz
        Cartesian coordinates, shape ``(n, 3)``.
    elements
        Element per atom (for the masses).
    cell_lengths
        Fixed cell edges (the paper's cubes: 10, 12, 20 A). Exclusive with ``padding``.
    rotation
        Optional 3x3 rotation applied about the centre of mass first.
    padding
        Packed cells: each edge is the fragment's extent along that axis plus ``padding``
        (periodic images come within about ``padding`` Angstrom of each other).
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    com = (atomic_masses(elements)[:, None] * xyz).sum(0) / atomic_masses(elements).sum()
    centred = xyz - com
    if rotation is not None:
        centred = centred @ np.asarray(rotation).T
    if padding is not None:
        extent = centred.max(0) - centred.min(0)
        lengths = extent + padding
        centred = centred - (centred.max(0) + centred.min(0)) / 2.0
    elif cell_lengths is not None:
        lengths = np.asarray(cell_lengths, dtype=np.float64)
    else:
        raise ValueError("give cell_lengths or padding")
    cell = orthorhombic_cell(lengths)
    cart = centred + lengths / 2.0
    frac = cart / lengths
    return Placement(cell=cell, frac=frac, cart=cart)


def min_image_distance(placement: Placement) -> float:
    """Shortest distance between an atom and any atom of a neighbouring cell's copy."""
    lengths = np.array([placement.cell.a, placement.cell.b, placement.cell.c])
    cart = placement.cart
    best = np.inf
    for shift in np.ndindex(3, 3, 3):
        t = (np.array(shift) - 1) * lengths
        if not t.any():
            continue
        d = np.linalg.norm(cart[:, None, :] - (cart[None, :, :] + t), axis=-1)
        best = min(best, float(d.min()))
    return best


def clashes(placement: Placement, min_distance: float = 2.0) -> bool:
    """True when the fragment comes closer than ``min_distance`` A to a periodic image."""
    return min_image_distance(placement) < min_distance


# ---------------------------------------------------------------------------------------------
# batched torch path (CPU or GPU): training generates maps on the fly with this
# ---------------------------------------------------------------------------------------------
class TorchMapMaker:
    """Batched structure factors, density and Patterson maps in torch.

    One instance serves one cell, one resolution and one grid: the Miller indices, the
    form-factor table and the scatter indices are computed once.

    Parameters
    ----------
    cell
        The P1 cell (orthorhombic or not).
    d_min
        Resolution of the structure factors.
    shape
        Grid shape of the output maps.
    device, dtype
        Torch device and real dtype (float32 by default; float64 for tests).
    """

    def __init__(self, cell: gemmi.UnitCell, d_min: float, shape: Sequence[int],
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> None:
        import torch

        self.torch = torch
        self.cell = cell
        self.shape = tuple(int(n) for n in shape)
        self.volume = float(cell.volume)
        self.dtype = dtype or torch.float32
        self.device = torch.device(device)
        hkl = miller_sphere(cell, d_min, half=True)
        check_grid_holds(hkl, self.shape)
        self.hkl_np = hkl
        s2 = reciprocal_s2(cell, hkl)
        ff = form_factors(list(ELEMENTS), s2)  # (n_elements, m)
        kw = {"device": self.device, "dtype": self.dtype}
        self.hkl = torch.as_tensor(hkl, **kw)
        self.s2 = torch.as_tensor(s2, **kw)
        self.ff = torch.as_tensor(ff, **kw)
        self.f0 = torch.as_tensor(form_factors(list(ELEMENTS), np.zeros(1))[:, 0], **kw)
        shape_t = np.asarray(self.shape)
        flat = np.ravel_multi_index(tuple((hkl % shape_t).T), self.shape)
        mate = np.ravel_multi_index(tuple(((-hkl) % shape_t).T), self.shape)
        self.flat = torch.as_tensor(flat, device=self.device, dtype=torch.long)
        self.mate = torch.as_tensor(mate, device=self.device, dtype=torch.long)

    def structure_factors(self, frac: torch.Tensor, element: torch.Tensor, b_iso: torch.Tensor,
                          occupancy: torch.Tensor) -> torch.Tensor:
        """Complex ``F`` of shape ``(batch, n_refl)`` for padded atom batches.

        ``frac (B, n, 3)``, ``element (B, n)`` long indices into :data:`ELEMENTS`,
        ``b_iso`` and ``occupancy (B, n)``; padding atoms carry occupancy 0.
        """
        torch = self.torch
        phase = 2.0 * torch.pi * torch.einsum("bnk,mk->bnm", frac.to(self.dtype), self.hkl)
        f = self.ff[element]  # (B, n, m)
        weight = occupancy[..., None] * f * torch.exp(-b_iso[..., None] * self.s2 / 4.0)
        re = (weight * torch.cos(phase)).sum(1)
        im = (weight * torch.sin(phase)).sum(1)
        return torch.complex(re, im)

    def _grid(self, values: torch.Tensor, mate_values: torch.Tensor, f000: torch.Tensor
              ) -> torch.Tensor:
        torch = self.torch
        batch = values.shape[0]
        n = int(np.prod(self.shape))
        grid = torch.zeros(batch, n, dtype=values.dtype, device=values.device)
        grid[:, self.mate] = mate_values
        grid[:, self.flat] = values
        grid[:, 0] = f000.to(values.dtype)
        return grid.reshape(batch, *self.shape)

    def maps(self, frac: torch.Tensor, element: torch.Tensor, b_iso: torch.Tensor,
             occupancy: torch.Tensor, with_f000: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Density, Patterson and ``F`` for a batch (maps unscaled, in e/A^3 and e^2/A^3)."""
        torch = self.torch
        f = self.structure_factors(frac, element, b_iso, occupancy)
        if with_f000:
            f000_val = (self.f0[element] * occupancy).sum(1)
        else:
            f000_val = torch.zeros(f.shape[0], device=self.device, dtype=self.dtype)
        rho = torch.fft.fftn(self._grid(f, f.conj(), f000_val), dim=(1, 2, 3)).real / self.volume
        pat = self.patterson(f.real**2 + f.imag**2, f000_val)
        return rho, pat, f

    def patterson(self, intensity: torch.Tensor, f000: torch.Tensor) -> torch.Tensor:
        """Patterson maps ``(batch, *shape)`` from intensities ``(batch, n_refl)`` on this
        maker's reflections (``0`` = unmeasured) and ``F(000)`` per example."""
        torch = self.torch
        inten = intensity.to(self.dtype).to(torch.complex64 if self.dtype == torch.float32
                                            else torch.complex128)
        return torch.fft.fftn(self._grid(inten, inten, f000**2), dim=(1, 2, 3)).real / self.volume


def scale_to_unit_range_torch(x: torch.Tensor) -> torch.Tensor:
    """Per-example ``[-1, 1]`` scaling of a batch of maps ``(B, ...)``."""
    flat = x.reshape(x.shape[0], -1)
    lo = flat.min(1).values.view(-1, *([1] * (x.dim() - 1)))
    hi = flat.max(1).values.view(-1, *([1] * (x.dim() - 1)))
    return 2.0 * (x - lo) / (hi - lo).clamp_min(1e-12) - 1.0
