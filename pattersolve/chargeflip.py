"""Charge flipping (Oszlanyi & Suto 2004, 2005).

The algorithm works in P1 on the expanded data and needs atomic resolution (d_min <~ 1.2 A):
the density of resolved atoms is positive and sparse, so flipping the sign of every grid
value below a small threshold ``delta`` and re-imposing the measured amplitudes converges to
a map of atoms at an arbitrary origin.

What is done here (and why):

* **E values.** Amplitudes are normalised per resolution shell, ``E^2 = |F|^2 / (eps <|F|^2>)``
  (equal-count shells in ``1/d^2``, ``eps`` the space group's epsilon factor), which sharpens
  the atoms and makes ``delta`` transferable between data sets (Palatinus 2013 uses the same).
  ``|E|`` is capped at :data:`~pattersolve.settings.CF_E_MAX` against outliers.
* **F000 floats.** The flipped map decides it: ``F000`` is taken from the transform of the
  flipped map each cycle (as in the original algorithm), never from the data.
* **delta** defaults to :data:`~pattersolve.settings.CF_DELTA_SIGMA` times the r.m.s. of the
  E-map (fixed by Parseval from the amplitudes), the usual 1.1-1.3 sigma rule.
* **Weak reflections** (the :data:`~pattersolve.settings.CF_WEAK_FRACTION` smallest E, as in
  Oszlanyi & Suto 2005) keep the modulus the flipped map gives them and have their phase
  shifted by 90 degrees; reflections not measured are set to zero.
* **Random starts until one converges.** Convergence shows as a sudden drop of R
  (``sum ||E| - |G|| / sum |E|`` over the strong reflections) from its plateau; a converged
  start runs a few more cycles and ends the search. With heavy atoms the drop can go only part
  of the way: a start whose R stalled well below its plateau has converged too. Without a
  converged start the lowest final R wins.

The P1 solution sits at a random origin: :func:`pattersolve.symmetry.locate_origin` places it
at the space group's origin (Superflip-style), :func:`pattersolve.symmetry.symmetrise_map`
averages the shifted map over the operators.

Conventions as everywhere in pattersolve: ``F(h) = sum f exp(+2 pi i h.x)``,
``rho = fftn(F_grid).real / V``. Internally the algorithm runs on ``Q = conj(F)`` in numpy's
``rfftn`` layout (``rho ~ irfftn(Q)``, ``Q ~ rfftn(rho)``), which halves the FFT cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gemmi
import numpy as np

from . import progress
from .errors import ExitCode, PattersolveError
from .fourier import HalfGrid, density_map, reciprocal_s2
from .phases import unit_phase
from .settings import (
    CF_CONVERGED_RATIO,
    CF_CYCLES,
    CF_DELTA_SIGMA,
    CF_E_MAX,
    CF_MIN_CYCLES,
    CF_N_SHELLS,
    CF_STALL_GAIN,
    CF_STALL_WINDOW,
    CF_STALLED_CONVERGED_RATIO,
    CF_STARTS,
    CF_STOP_AFTER_CONVERGED,
    CF_WEAK_FRACTION,
)
from .symmetry import grid_for_chargeflip

__all__ = ["ChargeFlipResult", "charge_flip", "normalise_amplitudes"]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def normalise_amplitudes(hkl: np.ndarray, amplitude: np.ndarray, cell: gemmi.UnitCell,
                         spacegroup: gemmi.SpaceGroup | None = None,
                         n_shells: int = CF_N_SHELLS, e_max: float = CF_E_MAX) -> np.ndarray:
    """Normalised structure-factor magnitudes ``|E|`` per resolution shell.

    Shells hold equal numbers of reflections in ``1/d^2``; ``<|F|^2>`` is interpolated
    linearly between shell centres so that ``|E|`` has no steps. With a space group, the
    epsilon factor of each (P1-expanded) reflection divides ``|F|^2`` as well.
    """
    amplitude = np.asarray(amplitude, dtype=np.float64)
    s2 = reciprocal_s2(cell, hkl)
    f2 = amplitude**2
    if spacegroup is not None:
        eps = np.asarray(spacegroup.operations().epsilon_factor_without_centering_array(
            np.asarray(hkl, dtype=np.int32)), dtype=np.float64)
        eps = np.maximum(eps, 1.0)
        f2 = f2 / eps
    order = np.argsort(s2)
    n_shells = int(max(1, min(n_shells, len(hkl) // 20)))
    chunks = np.array_split(order, n_shells)
    centres = np.array([s2[c].mean() for c in chunks])
    means = np.array([max(f2[c].mean(), 1e-30) for c in chunks])
    mean_at = np.interp(s2, centres, means)
    e = np.sqrt(f2 / mean_at)
    return np.minimum(e, e_max)


# ---------------------------------------------------------------------------------------------
# charge flipping
# ---------------------------------------------------------------------------------------------
@dataclass
class ChargeFlipResult:
    """Outcome of :func:`charge_flip` (P1, arbitrary origin)."""

    phases: np.ndarray  # (n,) radians, for the input hkl
    f: np.ndarray  # (n,) complex: input amplitude x solution phase
    density: np.ndarray  # (nu, nv, nw) e/A^3 up to F000 (F000 = 0: mean zero)
    shape: tuple[int, int, int]
    r_factor: float  # final R on |E| of the strong reflections of the chosen start
    r_start: float  # R on the plateau before convergence (after the first cycles)
    converged: bool  # R dropped clearly below its plateau
    cycles_run: int
    start_index: int
    delta: float  # threshold in units of the E-map r.m.s.
    r_factors: list[float] = field(default_factory=list)  # final R of every start
    seconds: float = 0.0


def _no_progress(n: int = 1) -> None:
    """No progress report."""


@dataclass
class _Flipping:
    """One charge-flipping problem: E values, weak/strong split, threshold, half grid."""

    e: np.ndarray  # |E| (or |F|) per reflection
    weak: np.ndarray  # bool: the smallest E, whose phases are shifted by 90 deg
    threshold: float  # flip grid values below this (map units of irfftn(Q))
    grid: HalfGrid
    shape: tuple[int, int, int]

    @classmethod
    def make(cls, hkl: np.ndarray, e: np.ndarray, shape: tuple[int, int, int],
             delta_sigma: float, weak_fraction: float) -> _Flipping:
        npts = float(np.prod(shape))
        # r.m.s. of the map irfftn(Q) without F000, by Parseval: sum over the full sphere of |E|^2
        rms = np.sqrt(2.0 * np.sum(e**2)) / npts
        n_weak = int(round(weak_fraction * len(e)))
        weak = np.zeros(len(e), dtype=bool)
        if n_weak > 0:
            weak[np.argsort(e)[:n_weak]] = True
        return cls(e=e, weak=weak, threshold=delta_sigma * rms, grid=HalfGrid(hkl, shape),
                   shape=shape)

    def run(self, q: np.ndarray, cycles: int, min_cycles: int, stop_after_converged: int,
            advance: Callable[..., None] = _no_progress) -> _Start:
        """Flip from ``q`` (``conj(F)`` on the reflections) for at most ``cycles`` cycles.

        A start ends ``stop_after_converged`` cycles after R first fell below
        ``CF_CONVERGED_RATIO`` of its plateau (cycles 10-20), or when R has stalled
        (:func:`_stalled`) part of the way down (:func:`_partial`), but not before
        ``min_cycles``. ``advance()`` is called once a
        cycle (:mod:`pattersolve.progress`)."""
        e, weak, hg, shape = self.e, self.weak, self.grid, self.shape
        strong = ~weak
        e_strong_sum = e[strong].sum()
        grid = hg.scatter(q)
        r_hist: list[float] = []
        plateau = None
        converged_at = None
        for cycle in range(cycles):
            rho = np.fft.irfftn(grid, s=shape, axes=(0, 1, 2))
            rho = np.where(rho > self.threshold, rho, -rho)
            g_grid = np.fft.rfftn(rho)
            g = hg.gather(g_grid)
            mod = np.abs(g)
            r_hist.append(float(np.abs(e[strong] - mod[strong]).sum() / e_strong_sum))
            phase = g / np.maximum(mod, 1e-30)
            q = np.where(weak, g * 1j, e * phase)
            grid = hg.scatter(q)
            grid[0, 0, 0] = g_grid[0, 0, 0]
            advance()
            if cycle == 20:
                plateau = float(np.mean(r_hist[10:21]))
            if (plateau is not None and converged_at is None
                    and r_hist[-1] < CF_CONVERGED_RATIO * plateau):
                converged_at = cycle
            if cycle + 1 < min_cycles:
                continue
            if converged_at is not None:
                if cycle - converged_at >= stop_after_converged:
                    break
            elif _partial(r_hist, plateau) and _stalled(r_hist):
                break
        return _Start.make(q, r_hist, plateau, converged_at)


def _partial(r_hist: list[float], plateau: float | None) -> bool:
    """R of the last cycles below ``CF_STALLED_CONVERGED_RATIO`` of the plateau."""
    return plateau is not None and float(np.mean(r_hist[-5:])) < (
        CF_STALLED_CONVERGED_RATIO * plateau)


def _stalled(r_hist: list[float]) -> bool:
    """R of the last ``CF_STALL_WINDOW`` cycles no better than the window before, by
    ``CF_STALL_GAIN`` (relative)."""
    w = CF_STALL_WINDOW
    if len(r_hist) < 2 * w:
        return False
    last, before = float(np.mean(r_hist[-w:])), float(np.mean(r_hist[-2 * w:-w]))
    return last > (1.0 - CF_STALL_GAIN) * before


@dataclass
class _Start:
    """One random start's outcome."""

    q: np.ndarray  # conj(F) after the last cycle
    r_final: float  # mean R of the last 5 cycles
    plateau: float  # mean R of cycles 10-20 (the first R when the start was shorter)
    converged: bool
    cycles: int

    @classmethod
    def make(cls, q: np.ndarray, r_hist: list[float], plateau: float | None,
             converged_at: int | None) -> _Start:
        """Converged: R fell below ``CF_CONVERGED_RATIO`` of its plateau, or it ended below
        ``CF_STALLED_CONVERGED_RATIO`` of it."""
        plateau = plateau if plateau is not None else r_hist[0]
        r_final = float(np.mean(r_hist[-5:]))
        converged = converged_at is not None or r_final < CF_STALLED_CONVERGED_RATIO * plateau
        return cls(q=q, r_final=r_final, plateau=plateau, converged=converged,
                   cycles=len(r_hist))


def _flip_starts(flip: _Flipping, e: np.ndarray, n_starts: int, cycles: int, min_cycles: int,
                 stop_after_converged: int, rng: np.random.Generator,
                 advance: Callable[..., None]) -> tuple[int, _Start, list[float]]:
    """Flip from random phases until a start converges or ``n_starts`` are spent.

    Returns the index and outcome of the chosen start (the converged one, else the lowest
    final R) and the final R of every start."""
    best: tuple[int, _Start] | None = None
    r_all: list[float] = []
    for start in range(n_starts):
        q = e * np.exp(1j * rng.uniform(0, 2 * np.pi, len(e)))
        outcome = flip.run(q, cycles, min_cycles, stop_after_converged, advance)
        r_all.append(outcome.r_final)
        if best is None or outcome.converged or outcome.r_final < best[1].r_final:
            best = (start, outcome)
        if outcome.converged:
            break
    assert best is not None
    return best[0], best[1], r_all


def charge_flip(
    hkl: np.ndarray,
    amplitude: np.ndarray,
    cell: gemmi.UnitCell,
    shape: Sequence[int] | None = None,
    *,
    spacegroup: gemmi.SpaceGroup | None = None,
    delta: float | None = None,
    cycles: int = CF_CYCLES,
    n_starts: int = CF_STARTS,
    rng: np.random.Generator | None = None,
    weak_fraction: float = CF_WEAK_FRACTION,
    normalise: bool = True,
    min_cycles: int = CF_MIN_CYCLES,
    stop_after_converged: int = CF_STOP_AFTER_CONVERGED,
) -> ChargeFlipResult:
    """Solve phases of P1 half-sphere data by charge flipping.

    Parameters
    ----------
    hkl
        P1 half-sphere Miller indices ``(n, 3)``.
    amplitude
        ``|F|`` per reflection (>= 0).
    cell
        Unit cell.
    shape
        Working grid; default :func:`grid_for_chargeflip`.
    spacegroup
        Only for epsilon factors in the E normalisation and the default grid; the
        algorithm itself runs in P1.
    delta
        Flipping threshold in units of the r.m.s. of the (E-)map;
        default :data:`~pattersolve.settings.CF_DELTA_SIGMA`.
    cycles
        Maximum cycles per start.
    n_starts
        At most this many starts of at most ``cycles`` each; new starts are made until one
        converges (it is kept) or they are spent (the lowest final R is kept).
    rng
        Random generator for the starting phases.
    weak_fraction
        Fraction of reflections (smallest E) treated as weak (phase + 90 degrees).
    normalise
        Use E values (recommended) instead of the raw amplitudes.
    min_cycles, stop_after_converged
        A start stops ``stop_after_converged`` cycles after R first fell below
        ``CF_CONVERGED_RATIO`` of its plateau, or when R has stalled below
        ``CF_STALLED_CONVERGED_RATIO`` of it, but not before ``min_cycles``.

    Returns
    -------
    ChargeFlipResult
    """
    t0 = time.perf_counter()
    hkl = np.asarray(hkl, dtype=np.int64)
    amplitude = np.asarray(amplitude, dtype=np.float64)
    if len(hkl) == 0 or not np.isfinite(amplitude).all():
        raise PattersolveError("charge flipping got no (finite) amplitudes",
                               "check the input reflections", ExitCode.DATA)
    rng = rng if rng is not None else np.random.default_rng()
    if shape is None:
        shape = grid_for_chargeflip(cell, hkl, spacegroup)
    shape = tuple(int(n) for n in shape)
    delta_sigma = CF_DELTA_SIGMA if delta is None else float(delta)
    e = normalise_amplitudes(hkl, amplitude, cell, spacegroup) if normalise else amplitude.copy()
    flip = _Flipping.make(hkl, e, shape, delta_sigma, weak_fraction)
    with progress.task("charge flipping", n_starts * cycles, "cycles") as advance:
        start_index, best, r_all = _flip_starts(flip, e, n_starts, cycles, min_cycles,
                                                stop_after_converged, rng, advance)
    f_phase = unit_phase(np.conj(best.q))
    f = amplitude * f_phase
    phases = np.angle(f_phase)
    density = density_map(hkl, f, shape, cell.volume)
    return ChargeFlipResult(
        phases=phases, f=f, density=density, shape=shape, r_factor=best.r_final,
        r_start=best.plateau, converged=best.converged, cycles_run=best.cycles,
        start_index=start_index,
        delta=delta_sigma, r_factors=r_all, seconds=time.perf_counter() - t0,
    )
