"""Rotations of a cell onto itself, and the network's prediction averaged over them.

A Patterson map of a P1 cell whose lattice has more symmetry than the data (a cubic cell
holds 24 proper rotations, an orthorhombic one 4) can be turned by any of those rotations and
still be a valid input of the same model: the Patterson of the turned structure. The network
is not exactly equivariant, so each turned input gives a slightly different density; turned
back and averaged, they give a better one (the ensemble over rotations that test-time
augmentation uses in image models). Only proper rotations are used: an improper one would
also swap the hand, which a network trained on L-amino acids has learned.

Rotations act on fractional coordinates as signed permutation matrices ``R`` (``x -> R x``,
grid index ``i -> R i mod n``); one is a symmetry of the cell when it keeps the metric
(``R^T G R = G``) and of the grid when the permuted axes have the same number of points.
On a grid with even sizes ``R`` also maps the cell centre (grid point ``n/2``) onto itself,
so the frame of the prediction, the centred structure of training, is kept.

Each turned-back prediction is put into the hand of the first one (the structure or its
enantiomorph ``rho(-x)``, whichever correlates better), averaged, and the average is put into
the hand most of the predictions had.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gemmi
import numpy as np

from . import settings


def _signed_permutations() -> list[np.ndarray]:
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            r = np.zeros((3, 3), dtype=np.int64)
            for k, p in enumerate(perm):
                r[k, p] = signs[k]
            if round(np.linalg.det(r)) == 1:
                out.append(r)
    # the identity first
    out.sort(key=lambda r: (not np.array_equal(r, np.eye(3, dtype=np.int64)),))
    return out


_PROPER = _signed_permutations()


def metric_tensor(cell: gemmi.UnitCell) -> np.ndarray:
    """``G = O^T O`` of the cell (``O``: the orthogonalization matrix), in A^2."""
    o = np.array(cell.orth.mat.tolist())
    return o.T @ o


def grid_rotations(cell: gemmi.UnitCell, shape: Sequence[int]) -> list[np.ndarray]:
    """The proper rotations that map the cell's lattice and the grid onto themselves.

    Parameters
    ----------
    cell
        The unit cell.
    shape
        Grid points along a, b, c.

    Returns
    -------
    list of numpy.ndarray
        Integer ``3x3`` signed permutation matrices with determinant +1 acting on fractional
        coordinates (and grid indices), the identity first: 24 for a cubic cell on a cubic
        grid, 8 for a tetragonal one, 4 for an orthorhombic one, 2 for a monoclinic one (the
        twofold axis along b), 1 for a triclinic one.
    """
    g = metric_tensor(cell)
    scale = float(np.abs(g).max())
    n = np.asarray(shape)
    out = []
    for r in _PROPER:
        perm = np.abs(r).argmax(axis=1)
        if not np.array_equal(n[perm], n):
            continue
        if np.allclose(r.T @ g @ r, g, atol=settings.ROTATION_METRIC_TOLERANCE * scale, rtol=0.0):
            out.append(r.copy())
    return out


def rotate_map(rho: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The periodic map turned by ``r``: ``out[R i mod n] = rho[i]``.

    ``r`` is a signed permutation matrix (:func:`grid_rotations`); the result is
    ``rho(R^-1 x)``, the density of the structure whose atoms moved from ``x`` to ``R x``.
    """
    r = np.asarray(r)
    perm = np.abs(r).argmax(axis=1)
    out = np.transpose(np.asarray(rho), perm)
    for axis in range(3):
        if r[axis, perm[axis]] < 0:
            out = np.roll(np.flip(out, axis), 1, axis)  # i -> -i mod n
    return np.ascontiguousarray(out)


def invert_map(rho: np.ndarray) -> np.ndarray:
    """The enantiomorph ``rho(-x)`` (grid index ``i -> -i mod n``) in the same frame."""
    return np.ascontiguousarray(np.roll(np.flip(rho), 1, axis=(0, 1, 2)))


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    den = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / den if den > 0 else 0.0


@dataclass
class RotationAverage:
    """A prediction averaged over rotations of its input (:func:`rotation_averaged`).

    Attributes
    ----------
    density
        The average, same shape and scale as one prediction.
    n_rotations
        Distinct rotated inputs predicted (1: nothing to average over).
    agreement
        Mean CC of the single (turned-back, hand-aligned) predictions with their average.
    inverted
        How many of them were put into the other hand before averaging.
    """

    density: np.ndarray
    n_rotations: int
    agreement: float
    inverted: int


def distinct_rotations(patterson: np.ndarray, rotations: Sequence[np.ndarray]
                       ) -> list[np.ndarray]:
    """The rotations that turn ``patterson`` into maps different from each other.

    A rotation of the data's own Laue symmetry gives back the same map: it adds nothing, and
    averaging its turned-back prediction would superpose the structure on a copy of itself
    turned about the prediction's origin, which the crystal's axes need not pass through.
    """
    p = np.asarray(patterson, dtype=np.float64)
    tol = settings.ROTATION_SAME_MAP_TOLERANCE * max(float(p.max() - p.min()), 1e-30)
    kept: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    for r in rotations:
        m = rotate_map(p, r)
        if any(float(np.abs(m - q).max()) <= tol for q in maps):
            continue
        kept.append(r)
        maps.append(m)
    return kept


def rotation_averaged(patterson: np.ndarray, rotations: Sequence[np.ndarray],
                      predict: Callable[[np.ndarray], np.ndarray]) -> RotationAverage:
    """The network's prediction averaged over rotations of its input.

    Parameters
    ----------
    patterson
        The scaled Patterson map ``(nu, nv, nw)`` (even sizes).
    rotations
        Rotations from :func:`grid_rotations`, the identity first; those that map the
        Patterson onto itself or onto an earlier rotation's map are skipped
        (:func:`distinct_rotations`).
    predict
        ``(batch, nu, nv, nw) -> (batch, nu, nv, nw)``, e.g.
        :meth:`pattersolve.runtime.Predictor.predict`.

    Returns
    -------
    RotationAverage
    """
    x = np.asarray(patterson, dtype=np.float32)
    rots = distinct_rotations(x, rotations) if len(rotations) > 1 else list(rotations)
    if not rots:
        rots = [np.eye(3, dtype=np.int64)]
    back = []
    for k in range(0, len(rots), settings.ROTATION_BATCH):
        chunk = rots[k: k + settings.ROTATION_BATCH]
        y = predict(np.stack([rotate_map(x, r) for r in chunk]))
        back += [rotate_map(y[j].astype(np.float64), r.T) for j, r in enumerate(chunk)]
    if len(back) == 1:
        return RotationAverage(density=back[0].astype(np.float32), n_rotations=1,
                               agreement=1.0, inverted=0)
    ref = back[0]
    flips = [_cc(invert_map(b), ref) > _cc(b, ref) for b in back]
    aligned = [invert_map(b) if f else b for b, f in zip(back, flips, strict=True)]
    mean = np.mean(aligned, axis=0)
    inverted = int(sum(flips))
    if inverted > len(back) / 2:  # the first prediction had the minority's hand
        mean = invert_map(mean)
        aligned = [invert_map(a) for a in aligned]
        inverted = len(back) - inverted
    agreement = float(np.mean([_cc(a, mean) for a in aligned]))
    return RotationAverage(density=mean.astype(np.float32), n_rotations=len(back),
                           agreement=agreement, inverted=inverted)
