"""Ab initio phasing at atomic resolution: the charge-flipping pipeline.

Whether the data suit it is :func:`pattersolve.solve.choose_method`'s call (``--method auto``).
:func:`solve_atomic` runs, on the P1-expanded data of a
:class:`~pattersolve.reflections.Reflections`:

1. charge flipping (:func:`pattersolve.chargeflip.charge_flip`) from random starts, at a few
   thresholds ``delta`` when the first does not converge;
2. origin location and symmetry check (:func:`pattersolve.symmetry.locate_origin`);
3. peak recycling: the symmetrised E-map's highest peaks (about one per 18 A^3 of the
   asymmetric unit, the volume of a non-hydrogen atom in organic crystals) become point
   atoms whose structure factors give new phases; repeated until the peak set is stable.
   This removes the bias of the charge-flipping fixed point (PHASING_NOTES.md: ~18 deg);
4. the candidate with the lowest R between ``|E|`` observed and from the peak model wins.

The hand of a non-centrosymmetric structure cannot be told from amplitudes without
anomalous signal: the result is one of the two enantiomorphs (``hand_determined`` False).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gemmi
import numpy as np

from .chargeflip import ChargeFlipResult, charge_flip, normalise_amplitudes
from .errors import ExitCode, PattersolveError
from .fourier import density_map
from .peaks import Peaks, find_peaks
from .phases import amplitude_residual, unit_phase
from .settings import (
    CF_CONFIDENT_R,
    CF_CYCLES,
    CF_DELTAS,
    CF_MAX_SECONDS,
    CF_STARTS,
    RECYCLE_ITERATIONS,
    RECYCLE_PEAK_DISTANCE,
    RECYCLE_PEAKS_PER_ATOM,
    SYMMETRY_MIN_AGREEMENT,
    VOLUME_PER_ATOM,
)
from .solve import choose_method
from .symmetry import (
    OriginResult,
    grid_for_chargeflip,
    locate_origin,
    space_group_ops,
    symmetrise_map,
    symmetry_agreement,
    symmetry_images,
)

__all__ = ["AtomicResult", "solve_atomic", "expected_atoms"]

def expected_atoms(cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup | None) -> float:
    """Expected non-hydrogen atoms per asymmetric unit by the 18 A^3 rule."""
    return cell.volume / (VOLUME_PER_ATOM * len(space_group_ops(spacegroup)))


@dataclass
class AtomicResult:
    """Outcome of :func:`solve_atomic`; arrays on the reflections' P1 half-sphere ``hkl``."""

    method: str
    density: np.ndarray  # (nu, nv, nw) e/A^3 (F000 = 0: mean zero), symmetrised
    shape: tuple[int, int, int]
    f: np.ndarray  # complex: measured |F| x solved phase
    phases: np.ndarray  # radians
    origin_shift: np.ndarray  # fractional shift applied to the P1 solution
    symmetry_agreement: list[float]  # per non-identity operator, before symmetrising
    peaks: Peaks  # of the final E-map, unique under the space group
    fom: dict[str, Any]  # figures of merit (see solve_atomic)
    confident: bool
    hand_determined: bool
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)


def peak_model_f(hkl: np.ndarray, peaks: Peaks, spacegroup: gemmi.SpaceGroup,
                       weights: np.ndarray | None = None) -> np.ndarray:
    """``S(h) = sum_j w_j exp(2 pi i h.x_j)`` over all symmetry images of the peaks.

    With equal atoms, the phase of ``S`` is the phase of the point-atom structure factors
    whatever the form factor and B.
    """
    images = symmetry_images(peaks.frac, spacegroup)  # (n_ops, n, 3)
    w = np.ones(len(peaks)) if weights is None else np.asarray(weights, dtype=np.float64)
    frac = images.reshape(-1, 3)
    ww = np.tile(w, images.shape[0])
    out = np.zeros(len(hkl), dtype=np.complex128)
    hkl_f = np.asarray(hkl, dtype=np.float64)
    for start in range(0, len(hkl), 8192):
        ph = 2.0 * np.pi * (hkl_f[start:start + 8192] @ frac.T)
        out[start:start + 8192] = (np.exp(1j * ph) * ww).sum(axis=1)
    return out


def _recycle(hkl: np.ndarray, e: np.ndarray, f_start: np.ndarray, cell: gemmi.UnitCell,
             sg: gemmi.SpaceGroup, shape: Sequence[int], n_peaks: int, n_iter: int
             ) -> tuple[np.ndarray, Peaks, float, int]:
    """Peak recycling from a located, space-group-origin solution. Returns phases as unit
    complex numbers, the last peaks, R(E) of the peak model and the iterations run."""
    phase = unit_phase(f_start)
    prev: np.ndarray | None = None
    r = 1.0
    peaks = None
    it = 0
    for _ in range(n_iter):
        it += 1
        emap = symmetrise_map(density_map(hkl, e * phase, shape, cell.volume), sg)
        peaks = find_peaks(emap, cell, sg, n_max=n_peaks, min_distance=RECYCLE_PEAK_DISTANCE)
        if len(peaks) == 0:
            break
        weights = np.clip(peaks.height / peaks.height[0], 0.2, 1.0)
        s = peak_model_f(hkl, peaks, sg, weights)
        e_calc = normalise_amplitudes(hkl, np.abs(s), cell, sg)
        r = amplitude_residual(e, e_calc)
        phase = unit_phase(s)
        if prev is not None and len(prev) == len(peaks.frac) and np.abs(
                ((prev - peaks.frac) + 0.5) % 1.0 - 0.5).max() < 1e-3:
            break
        prev = peaks.frac
    assert peaks is not None
    return phase, peaks, r, it


@dataclass
class _Job:
    """The usable data of one :func:`solve_atomic` call, its grid and its peak budget."""

    hkl: np.ndarray  # usable reflections only
    amp: np.ndarray
    e: np.ndarray  # normalised amplitudes
    cell: gemmi.UnitCell
    sg: gemmi.SpaceGroup
    shape: tuple[int, int, int]
    n_exp: float  # expected atoms per asymmetric unit
    n_peaks: int  # peaks of the recycled model

    @classmethod
    def make(cls, hkl: np.ndarray, amp: np.ndarray, cell: gemmi.UnitCell, sg: gemmi.SpaceGroup,
             shape: Sequence[int] | None) -> _Job:
        if shape is None:
            shape = grid_for_chargeflip(cell, hkl, sg)
        shape = tuple(int(n) for n in shape)
        e = normalise_amplitudes(hkl, amp, cell, sg)
        n_exp = expected_atoms(cell, sg)
        n_peaks = max(2, int(np.ceil(RECYCLE_PEAKS_PER_ATOM * n_exp)))
        return cls(hkl=hkl, amp=amp, e=e, cell=cell, sg=sg, shape=shape, n_exp=n_exp,
                   n_peaks=n_peaks)


@dataclass
class _Candidate:
    """One flipping threshold's solution, located and recycled."""

    delta: float
    cf: ChargeFlipResult
    origin: OriginResult
    phase: np.ndarray  # unit complex phases on the usable reflections
    r_model: float  # R(E) of the peak model
    n_it: int  # recycling iterations run


def _solve_at(job: _Job, delta: float, cycles: int, n_starts: int, rng: np.random.Generator,
              recycle_iterations: int, timing: dict[str, float]) -> _Candidate:
    """Charge flipping at one threshold, origin location and peak recycling (timed)."""
    t = time.perf_counter()
    cf = charge_flip(job.hkl, job.amp, job.cell, job.shape, spacegroup=job.sg, delta=delta,
                     cycles=cycles, n_starts=n_starts, rng=rng)
    timing["chargeflip"] += time.perf_counter() - t
    t = time.perf_counter()
    origin = locate_origin(job.hkl, cf.f, job.cell, job.sg, job.shape)
    timing["origin"] += time.perf_counter() - t
    t = time.perf_counter()
    if recycle_iterations > 0:
        phase, _, r_model, n_it = _recycle(job.hkl, job.e, origin.f, job.cell, job.sg,
                                          job.shape, job.n_peaks, recycle_iterations)
    else:
        phase = unit_phase(origin.f)
        emap = symmetrise_map(density_map(job.hkl, job.e * phase, job.shape, job.cell.volume),
                              job.sg)
        pk = find_peaks(emap, job.cell, job.sg, n_max=job.n_peaks,
                        min_distance=RECYCLE_PEAK_DISTANCE)
        s = peak_model_f(job.hkl, pk, job.sg)
        e_calc = normalise_amplitudes(job.hkl, np.abs(s), job.cell, job.sg)
        r_model = amplitude_residual(job.e, e_calc)
        n_it = 0
    timing["recycle"] += time.perf_counter() - t
    return _Candidate(delta=delta, cf=cf, origin=origin, phase=phase, r_model=r_model,
                      n_it=n_it)


def _confidence(best: _Candidate, method: str, warnings: list[str]) -> tuple[bool, float]:
    """Whether the solution is convincing (a warning when not), and the mean agreement."""
    agreement = best.origin.agreement
    mean_sym = float(np.mean(agreement)) if agreement else 1.0
    confident = bool(best.r_model < CF_CONFIDENT_R and mean_sym > SYMMETRY_MIN_AGREEMENT
                     and method == "chargeflip")
    if not confident:
        warnings.append(
            f"charge flipping found no convincing solution (R(E) of the peak model "
            f"{best.r_model:.2f}, want < {CF_CONFIDENT_R}; symmetry agreement {mean_sym:.2f}, "
            f"want > {SYMMETRY_MIN_AGREEMENT}): treat the map as unreliable")
    return confident, mean_sym


def solve_atomic(
    reflections: Any,
    *,
    rng: np.random.Generator | int | None = None,
    deltas: Sequence[float] = CF_DELTAS,
    cycles: int = CF_CYCLES,
    n_starts: int = CF_STARTS,
    recycle_iterations: int = RECYCLE_ITERATIONS,
    shape: Sequence[int] | None = None,
    max_seconds: float = CF_MAX_SECONDS,
) -> AtomicResult:
    """Charge flipping + origin location + symmetry check + peak recycling.

    Parameters
    ----------
    reflections
        A :class:`~pattersolve.reflections.Reflections` (uses ``hkl``, ``amplitude``,
        ``cell``, ``spacegroup``, ``d``).
    rng
        Random generator or seed for the starting phases.
    deltas
        Flipping thresholds tried in turn; the next is tried only when no start converged
        and the peak model fits badly (R(E) above :data:`~pattersolve.settings.CF_CONFIDENT_R`).
    cycles, n_starts
        Per threshold.
    recycle_iterations
        Peak-recycling iterations (0: keep the charge-flipping phases).
    shape
        Working grid (default: :func:`~pattersolve.symmetry.grid_for_chargeflip`).
    max_seconds
        Stop trying further thresholds after this much time.

    Returns
    -------
    AtomicResult
        ``fom`` holds ``r_flip`` (charge-flipping R on |E|), ``r_plateau``, ``converged``,
        ``r_model`` (R between |E| and the peak model), ``symmetry_agreement_mean``,
        ``delta``, ``n_peaks_model``, ``expected_atoms_asu``, ``recycle_iterations``.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(rng)
    hkl = np.asarray(reflections.hkl, dtype=np.int64)
    amp = np.asarray(reflections.amplitude, dtype=np.float64)
    cell, sg = reflections.cell, reflections.spacegroup
    ok = np.isfinite(amp) & (amp >= 0)
    if ok.sum() < 50:
        raise PattersolveError(f"only {int(ok.sum())} usable reflections for charge flipping",
                               "give more data, or use --method hybrid", ExitCode.DATA)
    d_min = float(np.min(np.asarray(reflections.d)[ok]))
    warnings: list[str] = []
    method, reason = choose_method(cell, d_min, spacegroup=sg)
    if method != "chargeflip":
        warnings.append(f"charge flipping outside its range: {reason}")
    job = _Job.make(hkl[ok], amp[ok], cell, sg, shape)
    timing = {"chargeflip": 0.0, "origin": 0.0, "recycle": 0.0}
    best: _Candidate | None = None
    for delta in deltas:
        cand = _solve_at(job, delta, cycles, n_starts, rng, recycle_iterations, timing)
        if best is None or cand.r_model < best.r_model:
            best = cand
        if (cand.cf.converged or best.r_model < CF_CONFIDENT_R
                or time.perf_counter() - t0 > max_seconds):
            break
    assert best is not None
    cf, origin, shape = best.cf, best.origin, job.shape
    f_u = job.amp * best.phase
    density = symmetrise_map(density_map(job.hkl, f_u, shape, cell.volume), sg)
    emap = symmetrise_map(density_map(job.hkl, job.e * best.phase, shape, cell.volume), sg)
    peaks = find_peaks(emap, cell, sg, n_max=max(job.n_peaks, int(np.ceil(2 * job.n_exp))),
                       min_distance=RECYCLE_PEAK_DISTANCE)
    agreement_final = symmetry_agreement(density_map(job.hkl, origin.f, shape, cell.volume),
                                         sg) if len(sg.operations()) > 1 else []
    f = np.zeros(len(hkl), dtype=np.complex128)
    f[ok] = f_u
    confident, mean_sym = _confidence(best, method, warnings)
    fom = {
        "r_flip": cf.r_factor, "r_plateau": cf.r_start, "converged": cf.converged,
        "cycles": cf.cycles_run, "delta": best.delta, "r_model": best.r_model,
        "symmetry_agreement_mean": mean_sym, "symmetry_agreement_located": agreement_final,
        "n_peaks_model": job.n_peaks, "expected_atoms_asu": job.n_exp,
        "recycle_iterations": best.n_it, "grid": list(shape), "d_min": d_min,
    }
    return AtomicResult(
        method="chargeflip", density=density, shape=shape, f=f, phases=np.angle(f),
        origin_shift=np.asarray(origin.shift), symmetry_agreement=list(origin.agreement),
        peaks=peaks, fom=fom, confident=confident,
        hand_determined=bool(sg.operations().is_centrosymmetric()),
        warnings=warnings, seconds=time.perf_counter() - t0, timing=timing,
    )
