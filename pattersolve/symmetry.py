"""Space-group symmetry in one place: operators, grids they map onto themselves, origins.

* :func:`space_group_ops`: every operator (centring included) as ``(R, t)`` acting on
  fractional column vectors, ``x -> R x + t``, converted from gemmi's integer Seitz matrices
  once per space group (``rot / DEN``; gemmi's own ``Op.float_seitz()`` multiplies by
  ``1 / DEN`` instead, which differs in the last bit for some translations such as 5/6).
* :func:`symmetry_images` of points, :func:`grid_factors` and :func:`grid_for_chargeflip`
  (grids whose points the operators permute).
* One sign convention for origin shifts: :func:`shift_phases` gives the structure factors
  of ``rho(x + s)``, ``F(h) exp(-2 pi i h.s)``.
* :func:`symmetrise_map`, :func:`symmetry_agreement` and :func:`locate_origin`
  (Palatinus & Chapuis 2007, as in Superflip): every method's P1 solution is placed at the
  space group's origin with it. For every shift ``s`` on a grid twice as fine as the working
  grid the summed correlation of ``rho(x + s)`` with ``rho(Rx + t + s)`` over the space
  group's operators is computed by FFT cross-correlation; the maximum, refined to sub-grid
  precision by parabolic interpolation, gives the shift that places the P1 map at the space
  group's origin. The normalised correlation per operator is the symmetry agreement
  (1 = perfect).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gemmi
import numpy as np

from .errors import ExitCode, PattersolveError
from .fourier import density_map, reciprocal_s2, sampled_grid_shape
from .settings import CF_SAMPLE_RATE

#: (R, t) pairs per space group (Hall symbol), converted once.
_OPS: dict[str, tuple[tuple[np.ndarray, np.ndarray], ...]] = {}
_IDENTITY = ((np.eye(3), np.zeros(3)),)


# ---------------------------------------------------------------------------------------------
# operators, images and grids
# ---------------------------------------------------------------------------------------------
def space_group_ops(spacegroup: gemmi.SpaceGroup | None
                    ) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """All operators (centring included, identity first) as ``(R, t)`` in fractional
    coordinates, in gemmi's order; ``None`` means P1. The arrays are shared: do not modify."""
    if spacegroup is None:
        return _IDENTITY
    ops = _OPS.get(spacegroup.hall)
    if ops is None:
        ops = tuple((np.array(op.rot, dtype=np.float64) / op.DEN,
                     np.array(op.tran, dtype=np.float64) / op.DEN)
                    for op in spacegroup.operations())
        for rot, tran in ops:
            rot.flags.writeable = False
            tran.flags.writeable = False
        _OPS[spacegroup.hall] = ops
    return ops


def symmetry_images(frac: np.ndarray, spacegroup: gemmi.SpaceGroup | None) -> np.ndarray:
    """All symmetry images ``R x + t`` (mod 1) of fractional points: shape (n_ops, n, 3)."""
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    return np.stack([(frac @ rot.T + tran) % 1.0 for rot, tran in space_group_ops(spacegroup)])


def grid_factors(spacegroup: gemmi.SpaceGroup | None) -> tuple[int, int, int]:
    """What each grid size must be a multiple of for the operators to map grid points onto
    grid points (gemmi's ``GroupOps.find_grid_factors``; 1 for P1)."""
    if spacegroup is None:
        return (1, 1, 1)
    f = spacegroup.operations().find_grid_factors()
    return (int(f[0]), int(f[1]), int(f[2]))


def grid_for_chargeflip(cell: gemmi.UnitCell, hkl: np.ndarray,
                        spacegroup: gemmi.SpaceGroup | None = None,
                        sample: float = CF_SAMPLE_RATE) -> tuple[int, int, int]:
    """Grid that holds ``hkl`` (|h| < n/2), about ``d_min / sample`` spacing, FFT-friendly
    sizes compatible with the space group's translations."""
    d_min = float(1.0 / np.sqrt(reciprocal_s2(cell, hkl).max()))
    return sampled_grid_shape(cell, hkl, d_min, sample, grid_factors(spacegroup))


# ---------------------------------------------------------------------------------------------
# maps under the operators, origin shifts and origin location
# ---------------------------------------------------------------------------------------------
def _grid_indices(shape: Sequence[int]) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"),
                    axis=-1).reshape(-1, 3)


def _map_index(rot: np.ndarray, tran: np.ndarray, idx: np.ndarray, shape: np.ndarray
               ) -> tuple[np.ndarray, ...]:
    """Grid index of ``R x + t`` for grid points ``x = idx / shape``."""
    frac = idx / shape
    new = (frac @ rot.T + tran) * shape
    out = np.rint(new).astype(np.int64)
    if np.abs(new - out).max() > 1e-6:
        raise PattersolveError(
            f"grid {tuple(shape)} is not compatible with the symmetry operators",
            "use a grid whose sizes the space group allows (grid_for_chargeflip)",
            ExitCode.INTERNAL,
        )
    out %= shape
    return out[:, 0], out[:, 1], out[:, 2]


def symmetrise_map(rho: np.ndarray, spacegroup: gemmi.SpaceGroup) -> np.ndarray:
    """Average ``rho(R x + t)`` over the space group's operators (grid must allow them)."""
    shape = np.asarray(rho.shape)
    idx = _grid_indices(rho.shape)
    acc = np.zeros(rho.size)
    ops = space_group_ops(spacegroup)
    for rot, tran in ops:
        acc += rho[_map_index(rot, tran, idx, shape)]
    return (acc / len(ops)).reshape(rho.shape)


def symmetry_agreement(rho: np.ndarray, spacegroup: gemmi.SpaceGroup) -> list[float]:
    """Correlation of ``rho(x)`` with ``rho(Rx + t)`` for each non-identity operator."""
    shape = np.asarray(rho.shape)
    idx = _grid_indices(rho.shape)
    a = rho.reshape(-1) - rho.mean()
    out = []
    for rot, tran in space_group_ops(spacegroup)[1:]:
        b = rho[_map_index(rot, tran, idx, shape)] - rho.mean()
        out.append(float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())))
    return out


def shift_phases(hkl: np.ndarray, f: np.ndarray, shift: Sequence[float]) -> np.ndarray:
    """Structure factors of ``rho(x + shift)``: ``F(h) exp(-2 pi i h.shift)``."""
    return np.asarray(f) * np.exp(-2j * np.pi * (np.asarray(hkl) @ np.asarray(shift, float)))


@dataclass
class OriginResult:
    """Outcome of :func:`locate_origin`."""

    shift: np.ndarray  # fractional s: rho(x + s) is the located map
    agreement: list[float]  # per non-identity operator, correlation after the shift (grid)
    mean_agreement: float
    f: np.ndarray  # shifted structure factors on the input hkl
    operators: list[str]


def _parabolic_offset(fm: float, f0: float, fp: float) -> float:
    den = fm - 2.0 * f0 + fp
    if den >= -1e-12 * max(abs(f0), 1e-30):
        return 0.0  # flat (polar direction) or not a maximum
    return float(np.clip(0.5 * (fm - fp) / den, -0.5, 0.5))


def locate_origin(hkl: np.ndarray, f: np.ndarray, cell: gemmi.UnitCell,
                  spacegroup: gemmi.SpaceGroup, shape: Sequence[int] | None = None,
                  oversample: int = 2) -> OriginResult:
    """Find the shift that makes a P1 solution agree best with the space-group symmetry.

    ``C(s) = sum_ops sum_x rho(x + s) rho(R x + t + s)`` for every grid shift ``s`` through
    one FFT cross-correlation per operator: with ``r_R(y) = rho(R y)`` and
    ``xc(v) = sum_y rho(y) r_R(y + v)``, ``C(s) = sum_ops xc(R^-1 t + (R^-1 - 1) s)``.
    The grid is ``oversample`` times finer than ``shape`` and the maximum is refined by
    parabolic interpolation along each axis.
    """
    hkl = np.asarray(hkl, dtype=np.int64)
    ops = space_group_ops(spacegroup)
    names = [op.triplet() for op in spacegroup.operations()][1:]
    if shape is None:
        shape = grid_for_chargeflip(cell, hkl, spacegroup)
    fine = tuple(int(n) * oversample for n in shape)
    fine_np = np.asarray(fine)
    rho = density_map(hkl, f, fine, cell.volume)
    if len(ops) == 1:
        return OriginResult(shift=np.zeros(3), agreement=[], mean_agreement=1.0,
                            f=np.asarray(f, dtype=np.complex128).copy(), operators=[])
    idx = _grid_indices(fine)
    rho_ft_conj = np.conj(np.fft.rfftn(rho))
    total = np.zeros(fine, dtype=np.float64)
    for rot, tran in ops[1:]:
        r_r = rho[_map_index(rot, np.zeros(3), idx, fine_np)].reshape(fine)
        xc = np.fft.irfftn(rho_ft_conj * np.fft.rfftn(r_r), s=fine, axes=(0, 1, 2))
        rinv = np.rint(np.linalg.inv(rot)).astype(np.int64)
        base = rinv @ tran * fine_np
        base_i = np.rint(base).astype(np.int64)
        if np.abs(base - base_i).max() > 1e-6:
            raise PattersolveError(f"grid {fine} does not hold the translations of "
                                   f"{spacegroup.xhm()}", "use grid_for_chargeflip",
                                   ExitCode.INTERNAL)
        v = (base_i[None, :] + idx @ (rinv - np.eye(3, dtype=np.int64)).T) % fine_np
        total += xc[v[:, 0], v[:, 1], v[:, 2]].reshape(fine)
    best = np.array(np.unravel_index(int(np.argmax(total)), fine))
    offset = np.zeros(3)
    for axis in range(3):
        step = np.zeros(3, dtype=np.int64)
        step[axis] = 1
        fm = total[tuple((best - step) % fine_np)]
        fp = total[tuple((best + step) % fine_np)]
        offset[axis] = _parabolic_offset(fm, total[tuple(best)], fp)
    shift = (best + offset) / fine_np
    shift = (shift + 0.5) % 1.0 - 0.5
    f_shift = shift_phases(hkl, f, shift)
    rho_s = density_map(hkl, f_shift, shape, cell.volume)
    agreement = symmetry_agreement(rho_s, spacegroup)
    return OriginResult(shift=shift, agreement=agreement,
                        mean_agreement=float(np.mean(agreement)), f=f_shift, operators=names)
