"""The Fourier core: reciprocal geometry, grid sizes, and maps <-> structure factors.

Conventions (docs/conventions.md, same as gemmi):

* ``F(h) = sum_j occ_j f_j(s) exp(-B_j s^2 / 4) exp(+2 pi i h.x_j)``, ``s = 1/d``.
* Maps are numpy arrays of shape ``(nu, nv, nw)`` indexed ``[u, v, w]`` for the fractional
  point ``(u/nu, v/nv, w/nw)`` (gemmi's ``grid.array`` layout).
* ``rho = fftn(F_grid).real / V`` and ``F_grid = V * ifftn(rho)``; ``fftn(rho)`` would give
  ``F*`` (the other hand).
* The Patterson is ``P(u) = (1/V) sum_h |F(h)|^2 cos(2 pi h.u)``, the autocorrelation of
  the density.
* Reflection lists are P1 half-spheres (:func:`miller_sphere`, :func:`is_half_sphere`): one of
  each Friedel pair, 000 excluded.

Grid sizes are computed here rather than by gemmi's ``Mtz.get_size_for_hkl``: gemmi samples
along the reciprocal axes (``1 / a*``, not the edge ``a``, in oblique cells) and does not
force even sizes, so its grids differ (e.g. 16 instead of 12 points for a 10 A cube at
2.5 A, sample rate 3).

Used by every method (maps from measured data), by :mod:`pattersolve.simulate` (maps from
coordinates), the training tree, the tests and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import gemmi
import numpy as np

from .errors import PattersolveError
from .settings import D_MIN_EPS


# ---------------------------------------------------------------------------------------------
# reciprocal geometry
# ---------------------------------------------------------------------------------------------
def reciprocal_s2(cell: gemmi.UnitCell, hkl: np.ndarray) -> np.ndarray:
    """``1/d^2`` for each Miller index (vectorised ``cell.calculate_1_d2``)."""
    frac = np.array(cell.frac.mat, dtype=np.float64)  # cart -> frac
    s = np.asarray(hkl, dtype=np.float64) @ frac  # rows: (M^T h)^T
    return np.einsum("ij,ij->i", s, s)


def d_spacings(cell: gemmi.UnitCell, hkl: np.ndarray) -> np.ndarray:
    """Resolution ``d`` in Angstrom of each Miller index (inf for 000)."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(reciprocal_s2(cell, hkl))


def miller_sphere(cell: gemmi.UnitCell, d_min: float, half: bool = True) -> np.ndarray:
    """All P1 Miller indices with ``d >= d_min`` (000 excluded).

    Parameters
    ----------
    cell
        The unit cell (any metric).
    d_min
        High-resolution limit in Angstrom.
    half
        Keep one of each Friedel pair (``h > 0``, or ``h = 0, k > 0``, or ``h = k = 0, l > 0``).

    Returns
    -------
    numpy.ndarray
        Integer array of shape ``(n, 3)``, sorted by h, k, l.
    """
    if d_min <= 0:
        raise PattersolveError(f"d_min must be positive, got {d_min}", "give a d_min in Angstrom")
    lim = [int(np.floor(length / (d_min - D_MIN_EPS))) for length in (cell.a, cell.b, cell.c)]
    axes = [np.arange(-m, m + 1) for m in lim]
    hkl = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    s2 = reciprocal_s2(cell, hkl)
    keep = (s2 > 0) & (s2 <= 1.0 / (d_min - D_MIN_EPS) ** 2)
    if half:
        h, k, l = hkl.T
        keep &= (h > 0) | ((h == 0) & (k > 0)) | ((h == 0) & (k == 0) & (l > 0))
    return hkl[keep].astype(np.int64)


def is_half_sphere(hkl: np.ndarray) -> np.ndarray:
    """Boolean mask: True where ``hkl`` lies in the half-sphere :func:`miller_sphere` keeps."""
    h, k, l = np.asarray(hkl).T
    return (h > 0) | ((h == 0) & (k > 0)) | ((h == 0) & (k == 0) & (l > 0))


def to_half_sphere(hkl: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map reflections onto the half-sphere, conjugating complex values that move (Friedel)."""
    hkl = np.asarray(hkl, dtype=np.int64)
    keep = is_half_sphere(hkl)
    out_hkl = np.where(keep[:, None], hkl, -hkl)
    vals = np.asarray(values)
    if np.iscomplexobj(vals):
        vals = np.where(keep, vals, np.conj(vals))
    return out_hkl, vals


# ---------------------------------------------------------------------------------------------
# grid sizes, reciprocal grids and maps
# ---------------------------------------------------------------------------------------------
def grid_shape_for_spacing(
    cell: gemmi.UnitCell, spacing: float, multiple: int = 2
) -> tuple[int, int, int]:
    """Grid with about ``spacing`` Angstrom between points, each size a multiple of ``multiple``."""
    sizes = []
    for length in (cell.a, cell.b, cell.c):
        n = max(multiple, int(round(length / spacing)))
        n = int(np.ceil(n / multiple) * multiple)
        sizes.append(n)
    return (sizes[0], sizes[1], sizes[2])


def _smooth(n: int) -> bool:
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


def good_grid_size(minimum: int, factor: int = 1) -> int:
    """Smallest size >= ``minimum`` with prime factors 2, 3, 5 only and divisible by ``factor``
    (and even, so the network can pool it)."""
    n = max(int(minimum), 2)
    step = int(np.lcm(factor, 2))
    n = int(np.ceil(n / step) * step)
    while not _smooth(n):
        n += step
    return n


def sampled_grid_shape(cell: gemmi.UnitCell, hkl: np.ndarray, d_min: float, sample_rate: float,
                       factors: Sequence[int] = (1, 1, 1)) -> tuple[int, int, int]:
    """Grid with about ``d_min / sample_rate`` spacing that holds every index of ``hkl``.

    Each size is at least ``2 |h|max + 1`` and ``ceil(edge * sample_rate / d_min)``, rounded up
    by :func:`good_grid_size` to an FFT-friendly multiple of its ``factors`` entry (the space
    group's translations: ``GroupOps.find_grid_factors``).
    """
    hmax = np.abs(np.asarray(hkl)).max(axis=0)
    shape = []
    for length, m, f in zip((cell.a, cell.b, cell.c), hmax, factors, strict=True):
        need = max(int(np.ceil(length * sample_rate / d_min)), 2 * int(m) + 1)
        shape.append(good_grid_size(need, f))
    return (shape[0], shape[1], shape[2])


def check_grid_holds(hkl: np.ndarray, shape: Sequence[int]) -> None:
    """Raise if any ``|h_i| >= n_i / 2`` (the grid would alias or hit the Nyquist plane)."""
    hmax = np.abs(np.asarray(hkl)).max(axis=0) if len(hkl) else np.zeros(3)
    for i, (m, n) in enumerate(zip(hmax, shape, strict=True)):
        if 2 * m >= n:
            raise PattersolveError(
                f"grid size {n} along axis {'abc'[i]} cannot hold |index| {int(m)} "
                f"(needs > {2 * int(m)})",
                "cut the data with a larger d_min or use a finer grid",
            )


def f_on_grid(hkl: np.ndarray, values: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Place half-sphere values and their Friedel mates on a full reciprocal grid.

    ``values`` may be complex (structure factors: mates get the conjugate) or real
    (intensities: mates get the same value). Indices must fit (see :func:`check_grid_holds`).
    """
    hkl = np.asarray(hkl, dtype=np.int64)
    values = np.asarray(values)
    check_grid_holds(hkl, shape)
    dtype = np.complex128 if np.iscomplexobj(values) else np.float64
    grid = np.zeros(tuple(shape), dtype=dtype)
    idx = tuple((hkl % np.asarray(shape)).T)
    midx = tuple(((-hkl) % np.asarray(shape)).T)
    grid[midx] = np.conj(values) if np.iscomplexobj(values) else values
    grid[idx] = values
    return grid


class HalfGrid:
    """Scatter/gather between half-sphere reflection lists and numpy's ``rfftn`` half grid.

    The half grid has shape ``(nu, nv, nw // 2 + 1)``: the points with last index
    ``l >= 0`` of the full reciprocal grid (``numpy.fft.rfftn`` / ``irfftn`` layout). A
    half-sphere reflection ``h`` is stored at ``h mod n`` when ``l > 0``, as its Friedel
    mate ``-h`` (value conjugated) when ``l < 0``, and at both places when ``l = 0``.

    For a real map ``rho``: ``rfftn(rho)`` holds ``G = N/V conj(F)`` and
    ``rho = irfftn(G) * N / V`` when the grid holds ``conj(F)`` (see :func:`density_map`).

    Parameters
    ----------
    hkl
        Half-sphere Miller indices ``(n, 3)`` (at most one of each Friedel pair, no 000).
    shape
        The full grid ``(nu, nv, nw)``; must hold the indices (:func:`check_grid_holds`).

    Attributes
    ----------
    shape
        The full grid ``(nu, nv, nw)``.
    rshape
        The half grid ``(nu, nv, nw // 2 + 1)``.
    index
        Half-grid position ``(iu, iv, iw)`` of each reflection (of its mate where ``l < 0``).
    conj
        True where the value stored at :attr:`index` is the conjugate (``l < 0``).
    mate_rows
        Rows of ``hkl`` with ``l = 0``, whose Friedel mate lies on the half grid too.
    mate_index
        Half-grid position of those mates (the stored value there is the conjugate).
    """

    def __init__(self, hkl: np.ndarray, shape: Sequence[int]) -> None:
        hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
        check_grid_holds(hkl, shape)
        self.shape: tuple[int, int, int] = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.rshape: tuple[int, int, int] = (self.shape[0], self.shape[1],
                                             self.shape[2] // 2 + 1)
        n = np.asarray(self.shape, dtype=np.int64)
        self.conj: np.ndarray = hkl[:, 2] < 0
        h = np.where(self.conj[:, None], -hkl, hkl) % n
        self.index: tuple[np.ndarray, np.ndarray, np.ndarray] = (h[:, 0], h[:, 1], h[:, 2])
        self.mate_rows: np.ndarray = np.flatnonzero(hkl[:, 2] == 0)
        m = (-hkl[self.mate_rows]) % n
        self.mate_index: tuple[np.ndarray, np.ndarray, np.ndarray] = (m[:, 0], m[:, 1], m[:, 2])
        self._flat = np.ravel_multi_index(self.index, self.rshape)
        self._mate_flat = np.ravel_multi_index(self.mate_index, self.rshape)

    def __len__(self) -> int:
        return len(self.conj)

    @property
    def grid_hkl(self) -> np.ndarray:
        """Miller index of every half-grid point, integer array ``(*rshape, 3)``."""
        nu, nv, nw = self.shape
        fu = np.fft.fftfreq(nu, 1.0 / nu).round().astype(np.int64)
        fv = np.fft.fftfreq(nv, 1.0 / nv).round().astype(np.int64)
        fw = np.arange(nw // 2 + 1, dtype=np.int64)
        return np.stack(np.meshgrid(fu, fv, fw, indexing="ij"), axis=-1)

    def scatter(self, values: np.ndarray) -> np.ndarray:
        """Half-sphere values -> complex half grid ``rshape`` (mates conjugated, rest 0)."""
        values = np.asarray(values, dtype=np.complex128)
        grid = np.zeros(int(np.prod(self.rshape)), dtype=np.complex128)
        grid[self._mate_flat] = np.conj(values[self.mate_rows])
        grid[self._flat] = np.where(self.conj, np.conj(values), values)
        return grid.reshape(self.rshape)

    def gather(self, grid: np.ndarray) -> np.ndarray:
        """Half grid -> values on the reflections (inverse of :meth:`scatter`).

        ``grid`` has shape ``rshape`` or ``(batch, *rshape)``; the result has shape
        ``(n,)`` or ``(batch, n)``.
        """
        vals = grid[(Ellipsis, *self.index)]
        return np.where(self.conj, np.conj(vals), vals)


def density_map(
    hkl: np.ndarray,
    f: np.ndarray,
    shape: Sequence[int],
    volume: float,
    f000_value: float = 0.0,
) -> np.ndarray:
    """Electron density (e/A^3) on a grid from half-sphere structure factors.

    ``rho(x) = (1/V) sum_h F(h) exp(-2 pi i h.x)`` over ``hkl``, their Friedel mates and
    ``F(000) = f000_value`` (``fftn(F_grid).real / V``), computed by ``irfftn`` on the half
    grid holding ``conj(F)``.
    """
    hg = HalfGrid(hkl, shape)
    grid = hg.scatter(np.conj(np.asarray(f, dtype=np.complex128)))
    grid[0, 0, 0] = f000_value
    n = float(np.prod(hg.shape))
    return np.fft.irfftn(grid, s=hg.shape, axes=(0, 1, 2)) * n / volume


def patterson_map(
    hkl: np.ndarray,
    intensity: np.ndarray,
    shape: Sequence[int],
    volume: float,
    f000_sq: float = 0.0,
) -> np.ndarray:
    """Patterson function on a grid from half-sphere intensities ``|F|^2``."""
    grid = f_on_grid(hkl, np.asarray(intensity, dtype=np.float64), shape)
    grid[0, 0, 0] = f000_sq
    return np.fft.fftn(grid).real / volume


def structure_factors_from_map(rho: np.ndarray, hkl: np.ndarray, volume: float) -> np.ndarray:
    """Sample ``F(h) = V * ifftn(rho)`` at the given Miller indices."""
    grid = np.fft.ifftn(rho) * volume
    idx = tuple((np.asarray(hkl, dtype=np.int64) % np.asarray(rho.shape)).T)
    return grid[idx]


def estimate_f000_sq(hkl: np.ndarray, intensity: np.ndarray, shape: Sequence[int],
                     volume: float) -> float:
    """Estimate ``|F(000)|^2`` as the constant that makes the Patterson non-negative.

    F000 is never measured; PHASING_NOTES.md found this estimate within 0.90-1.07 of the
    truth on clean data.
    """
    p0 = patterson_map(hkl, intensity, shape, volume)
    return float(max(0.0, -p0.min()) * volume)
