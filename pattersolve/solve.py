"""From measured reflections to phases: the network, the refinement, and their hand-over.

Methods (``--method``):

* ``network``: the network's prediction alone (phases of its structure factors);
* ``classical``: projection refinement (RAAR + shrink-wrap + ER) from random phases, support
  from the Patterson map, no network;
* ``hybrid``: the network's prediction gives the starting phases and the support, then the
  same refinement against the measured amplitudes, in packed cells with a first start guided
  toward the prediction (:mod:`pattersolve.refine`; what ``--method auto`` picks below atomic
  resolution);
* ``chargeflip``: charge flipping with origin location (:func:`solve_chargeflip`; what
  ``auto`` picks at atomic resolution in small cells).

Every P1 solution of data in another space group then goes through
:func:`locate_in_spacegroup`.

The hand: amplitudes cannot tell a structure from its mirror image, so refinement from random
phases and charge flipping return either enantiomorph. A network trained on L-amino acids with
a plain loss has learned their chirality; a hybrid solution is put into the prediction's hand
where the prediction commits to one and the solution stays near it (:func:`_network_hand`).
Each solution's ``stages["hand"]`` says which basis holds (``network``, ``prediction``,
``arbitrary`` or ``centrosymmetric``) and why.

The prediction is made on the model's grid (its recorded spacing), from the Patterson of the
reflections the model's resolution covers, normalised exactly as in training (per-map
min/max to [-1, 1]); its structure factors are taken back to the cell's own grid by Fourier
interpolation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gemmi
import numpy as np

from . import settings
from .errors import ExitCode, PattersolveError
from .fourier import (
    density_map,
    grid_shape_for_spacing,
    patterson_map,
    structure_factors_from_map,
)
from .phases import amplitude_residual, centrosymmetry, sigmaa_fom
from .reflections import Reflections
from .simulate import scale_to_unit_range
from .symmetry import shift_phases

if TYPE_CHECKING:  # pragma: no cover
    from .refine import RefineResult

log = logging.getLogger("pattersolve")

#: Methods :func:`solve` runs (charge flipping is :func:`solve_chargeflip`).
SOLVE_METHODS = ("network", "classical", "hybrid")


def choose_method(cell: gemmi.UnitCell, d_min: float, *, n_reflections: int | None = None,
                  spacegroup: gemmi.SpaceGroup | None = None,
                  completeness: float | None = None) -> tuple[str, str]:
    """Pick ``"chargeflip"`` or ``"hybrid"`` for ``--method auto``, with the reason.

    Charge flipping needs resolved atoms: ``d_min <= ATOMIC_D_MIN`` (1.2 A, Sheldrick's rule
    for direct methods), a cell of at most ``ATOMIC_MAX_VOLUME`` A^3 (time and memory on a
    laptop) and reasonably complete data (at least ``ATOMIC_MIN_COMPLETENESS`` when given),
    all three in :mod:`pattersolve.settings`.
    """
    max_volume, min_complete = settings.ATOMIC_MAX_VOLUME, settings.ATOMIC_MIN_COMPLETENESS
    if d_min > settings.ATOMIC_D_MIN:
        return "hybrid", (f"data to {d_min:.2f} A do not resolve atoms (charge flipping needs "
                          f"d_min <= {settings.ATOMIC_D_MIN} A): network prediction + refinement")
    if cell.volume > max_volume:
        return "hybrid", (f"cell volume {cell.volume:.0f} A^3 is above {max_volume:.0f} "
                          "A^3 for charge flipping here: network prediction + refinement")
    if completeness is not None and completeness < min_complete:
        return "hybrid", (f"data only {100 * completeness:.0f} % complete; charge flipping "
                          f"needs >= {100 * min_complete:.0f} %: network prediction + refinement")
    return "chargeflip", (f"atomic resolution ({d_min:.2f} A) in a small cell "
                          f"({cell.volume:.0f} A^3): charge flipping with origin location")


@dataclass
class Prediction:
    """The network's output for one data set."""

    density: np.ndarray  # on the model grid, scaled to [-1, 1]
    shape: tuple[int, int, int]
    f: np.ndarray  # complex F of the prediction on refl.hkl (0 where the grid cannot hold h)
    covered: np.ndarray  # bool: reflections the model grid holds
    seconds: float
    model: str
    backend: str
    rotations: int = 1  # Pattersons predicted and averaged (pattersolve.rotations)
    rotation_agreement: float = 1.0  # mean CC of the single predictions with the average


@dataclass
class Solution:
    """Phases and map for the data, plus what each stage achieved."""

    f: np.ndarray  # complex F on refl.hkl: measured amplitude x phase
    fom: np.ndarray
    density: np.ndarray  # on the cell grid (FWT = m|Fo| coefficients)
    shape: tuple[int, int, int]
    method: str
    stages: dict[str, Any] = field(default_factory=dict)
    symmetric: bool = False  # True: origin located, map obeys the crystal's space group
    confident: bool | None = None
    warnings: list[str] = field(default_factory=list)
    peaks: Any = None  # pattersolve.peaks.Peaks of the solution, when the method makes them


_ARBITRARY = ("amplitudes alone cannot tell the two enantiomorphs apart: check the chirality "
              "of a model built into the map (for peptides, L-amino acids) and invert it "
              "(x -> -x) if needed")
_LEARNED = "learned the chirality of L-amino acids (a D-peptide comes out inverted)"


def _hand(refl: Reflections, basis: str, note: str, **extra: Any) -> dict[str, Any]:
    """The ``hand`` stage of a solution: which enantiomorph it is, and on what grounds."""
    if refl.spacegroup.is_centrosymmetric():
        return {"basis": "centrosymmetric", "note": f"{refl.spacegroup.hm} is centrosymmetric: "
                "the structure is its own enantiomorph"}
    return {"basis": basis, "note": note, **extra}


def _network_hand(refl: Reflections, f: np.ndarray, pred: Prediction, learned: bool,
                  centrosym: float, refined: bool, residual: float | None = None
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """Give a solution the hand of the network's prediction, where the network knows it.

    A network trained with a plain loss on L-amino-acid fragments predicts the true
    enantiomorph (:attr:`pattersolve.runtime.ModelInfo.learned_hand`) unless its prediction
    hedges between the hands (centrosymmetry above
    :data:`~pattersolve.settings.HAND_MAX_CENTROSYMMETRY`). Refinement from the prediction
    can end in either hand, since both fit the amplitudes equally: the refined solution is
    compared with the prediction (the measured amplitudes with the prediction's phases) after
    the origin and hand search of :func:`pattersolve.phasematch.match_phases`, and if the
    other hand fits the prediction better the solution is inverted (``F -> F*``, the map
    ``rho(x) -> rho(-x)``), which changes nothing in its fit to the data. Beyond
    :data:`~pattersolve.settings.HAND_MAX_PHASE_DIFFERENCE` the prediction was too poor and
    the hand stays arbitrary. Without refinement (``--method network``) only the prediction's
    fit to the measured amplitudes checks it: with an amplitude residual ``residual`` above
    :data:`~pattersolve.settings.HAND_MAX_NETWORK_RESIDUAL` the prediction is too far from the
    data for its hand to mean anything; below it the hand is reported as the prediction's,
    unverified.
    """
    extra: dict[str, Any] = {"prediction_centrosymmetry": round(centrosym, 3)}
    if not learned:
        return f, _hand(refl, "arbitrary", f"model {pred.model} was trained blind to the hand "
                        f"(twin-invariant loss); {_ARBITRARY}", **extra)
    if centrosym > settings.HAND_MAX_CENTROSYMMETRY:
        return f, _hand(refl, "arbitrary", f"the prediction hedges between the hands "
                        f"(centrosymmetry {centrosym:.2f} > "
                        f"{settings.HAND_MAX_CENTROSYMMETRY}); {_ARBITRARY}", **extra)
    if not refined:
        if residual is not None:
            extra["prediction_amplitude_residual"] = round(residual, 3)
            if residual > settings.HAND_MAX_NETWORK_RESIDUAL:
                return f, _hand(refl, "arbitrary", f"the prediction fits the amplitudes too "
                                f"poorly for its hand to mean anything (R {residual:.2f} > "
                                f"{settings.HAND_MAX_NETWORK_RESIDUAL}); {_ARBITRARY}", **extra)
        return f, _hand(refl, "prediction", f"the prediction's hand, unverified (no "
                        f"refinement): model {pred.model} {_LEARNED}", **extra)
    from .phasematch import match_phases

    cov = pred.covered
    m = match_phases(refl.hkl[cov], refl.amplitude[cov] * np.exp(1j * np.angle(pred.f[cov])),
                     f[cov], refl.cell)
    diff = round(float(m.weighted_error), 1)
    extra["phase_difference_to_prediction"] = diff
    if diff > settings.HAND_MAX_PHASE_DIFFERENCE:
        return f, _hand(refl, "arbitrary", f"the refined solution is {diff:.0f} deg from the "
                        f"prediction, too far to take its hand; {_ARBITRARY}",
                        inverted_to_network_hand=False, **extra)
    inverted = bool(m.inverted) and not refl.spacegroup.is_centrosymmetric()
    if inverted:
        f = np.conj(f)
        log.info("hand: refinement ended in the other hand than the prediction (%.0f deg "
                 "apart after inversion): inverted to the network's hand", diff)
    return f, _hand(refl, "network", f"the prediction's hand (the solution is {diff:.0f} deg "
                    f"from it{', after inverting the solution' if inverted else ''}): model "
                    f"{pred.model} {_LEARNED}; BENCHMARKS.md, the hand",
                    inverted_to_network_hand=inverted, **extra)


def model_grid(refl: Reflections, spacing: float) -> tuple[int, int, int]:
    """The grid with the model's spacing over the input cell (even sizes)."""
    return grid_shape_for_spacing(refl.cell, spacing, multiple=2)


def predict(refl: Reflections, predictor: Any, average_rotations: bool = False) -> Prediction:
    """Run the network on the data's Patterson, on the model's grid.

    Only reflections within the model's training resolution enter the Patterson (the
    network never saw finer data); the prediction's structure factors are returned for every
    reflection the model grid can hold. With ``average_rotations`` the Patterson is also
    turned by every rotation of the cell onto itself and the turned-back predictions are
    averaged (:func:`pattersolve.rotations.rotation_averaged`).
    """
    t0 = time.perf_counter()
    info = predictor.model
    shape = model_grid(refl, info.grid_spacing)
    half = np.asarray(shape) // 2
    fits = np.all(np.abs(refl.hkl) < half, axis=1)
    use = fits & (refl.d >= info.d_min - settings.D_MIN_EPS)
    pat = patterson_map(refl.hkl[use], refl.intensity[use], shape, refl.cell.volume)
    x = scale_to_unit_range(pat.astype(np.float32))
    n_rot, agreement = 1, 1.0
    if average_rotations:
        from .rotations import grid_rotations, rotation_averaged

        avg = rotation_averaged(x, grid_rotations(refl.cell, shape), predictor.predict)
        y, n_rot, agreement = avg.density, avg.n_rotations, avg.agreement
    else:
        y = predictor.predict(x)
    f = np.zeros(len(refl.hkl), dtype=np.complex128)
    f[fits] = structure_factors_from_map(y.astype(np.float64), refl.hkl[fits], refl.cell.volume)
    return Prediction(density=y, shape=shape, f=f, covered=fits,
                      seconds=time.perf_counter() - t0, model=info.name,
                      backend=predictor.description, rotations=n_rot,
                      rotation_agreement=agreement)


def _network_stage(refl: Reflections, predictor: Any, average_rotations: bool
                   ) -> tuple[Prediction, float, dict[str, Any]]:
    """The network's prediction, its amplitude residual and its ``stages["network"]``."""
    pred = predict(refl, predictor, average_rotations=average_rotations)
    r_net = amplitude_residual(refl.amplitude[pred.covered], pred.f[pred.covered])
    stage = {
        "model": pred.model, "backend": pred.backend, "grid": list(pred.shape),
        "reflections_predicted": int(pred.covered.sum()),
        "amplitude_residual": round(r_net, 4), "seconds": round(pred.seconds, 3),
        "rotations_averaged": pred.rotations,
        "rotation_agreement": round(pred.rotation_agreement, 3),
        # ~1: the prediction averages both hands (phases near 0/180 deg, a poor start)
        "centrosymmetry": round(centrosymmetry(pred.density), 3),
    }
    log.info("network %s: R(amplitude) %.3f on %d reflections, centrosymmetry %.2f, "
             "%.2f s", pred.backend, r_net, int(pred.covered.sum()),
             stage["centrosymmetry"], pred.seconds)
    if pred.rotations > 1:
        log.info("network: averaged over %d rotations of the cell (agreement %.3f)",
                 pred.rotations, pred.rotation_agreement)
    return pred, r_net, stage


def _refinement_stage(res: RefineResult, hybrid: bool, cycles: int, device: str) -> dict[str, Any]:
    """``stages["refinement"]`` of a :class:`~pattersolve.refine.RefineResult` (logged)."""
    stage = {
        "start": "network prediction" if hybrid else "random phases",
        "amplitude_residual_start": round(float(res.residual_start), 4),
        "amplitude_residual_final": round(float(res.residual_final), 4),
        "starts": len(res.starts), "cycles": cycles, "seconds": round(float(res.seconds), 3),
        "mean_fom": round(float(np.mean(res.fom)), 3), "device": device,
        "packing_estimate": round(float(res.extra["packing"]), 3),
        "guided_start": bool(res.extra["guided"]),
        "chosen_start": "unrefined prediction" if res.chosen < 0
        else res.starts[res.chosen]["kind"],
    }
    log.info("refinement (%s): R(amplitude) %.3f -> %.3f, %d starts, %.2f s",
             stage["start"], res.residual_start, res.residual_final, len(res.starts),
             res.seconds)
    return stage


def solve(refl: Reflections, shape: tuple[int, int, int], method: str,
          predictor: Any | None = None, cycles: int = settings.DEFAULT_CYCLES,
          starts: int = settings.DEFAULT_STARTS, seed: int = 0,
          device: str = "numpy", guided: bool | None = None,
          average_rotations: bool = False) -> Solution:
    """Phase the data with the chosen method; ``shape`` is the cell grid of the output map.

    ``guided`` goes to :func:`pattersolve.refine.refine_phases` (None: by the cell's packing);
    ``average_rotations`` to :func:`predict`.
    """
    if method not in SOLVE_METHODS:
        raise PattersolveError(f"unknown method {method!r} for solve()",
                               f"use one of: {', '.join(SOLVE_METHODS)}", ExitCode.USAGE)
    stages: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    vol = refl.cell.volume
    start_density = None
    if method in ("network", "hybrid"):
        if predictor is None:
            raise ValueError(f"method {method} needs a predictor")
        pred, r_net, stages["network"] = _network_stage(refl, predictor, average_rotations)
        phase = np.exp(1j * np.angle(pred.f))
        learned = bool(getattr(getattr(predictor, "model", None), "learned_hand", False))
        if method == "network":
            f = refl.amplitude * phase
            fom = np.where(pred.covered,
                           sigmaa_fom(refl.hkl, refl.amplitude, pred.f, refl.cell), 0.0)
            f = np.where(pred.covered, f, 0)
            _, stages["hand"] = _network_hand(refl, f, pred, learned,
                                              stages["network"]["centrosymmetry"], refined=False,
                                              residual=r_net)
            rho = density_map(refl.hkl, fom * f, shape, vol)
            return Solution(f=f, fom=fom, density=rho, shape=shape, method=method,
                            stages=stages)
        start_density = density_map(refl.hkl, np.where(pred.covered, pred.f, 0), shape, vol)

    from .refine import refine_phases

    res = refine_phases(refl.hkl, refl.amplitude, refl.cell, shape, sigma=refl.sigma,
                        start_density=start_density, n_starts=starts, cycles=cycles, rng=rng,
                        device=device, guided=guided)
    stages["refinement"] = _refinement_stage(res, start_density is not None, cycles, device)
    f = refl.amplitude * np.exp(1j * np.angle(res.f))
    if start_density is not None:
        f, stages["hand"] = _network_hand(refl, f, pred, learned,
                                          stages["network"]["centrosymmetry"], refined=True)
    else:
        stages["hand"] = _hand(refl, "arbitrary", _ARBITRARY)
    rho = density_map(refl.hkl, res.fom * f, shape, vol)
    return Solution(f=f, fom=res.fom, density=rho, shape=shape, method=method, stages=stages)


def _middle_of_widest_gap(profile: np.ndarray) -> int:
    """Index in the middle of the longest circular run of near-minimal values of ``profile``."""
    n = len(profile)
    low = profile <= profile.min() + settings.ORIGIN_GAP_FRACTION * (profile.max() - profile.min())
    if low.all():
        return 0
    start = int(np.argmin(low))  # a high plane: runs do not wrap past it
    best, best_mid, run = 0, 0, 0
    for i in range(1, n + 1):
        j = (start + i) % n
        run = run + 1 if low[j] else 0
        if run > best:
            best, best_mid = run, (j - (run - 1) // 2) % n
    return best_mid


def place_in_cell(refl: Reflections, sol: Solution) -> Solution:
    """Choose the free origin of a P1 solution so that the structure sits whole in the cell.

    Nothing fixes the origin of a solution in P1 (P1 data, or data whose solution failed the
    symmetry check and is written P1-expanded), and refinement from random phases leaves the
    molecule anywhere, often cut by the cell faces. A viewer that shows the map as one box
    (Coot takes a P1 map with 90 degree angles for an EM map; ChimeraX, PyMOL) then shows it
    in pieces. Along each cell axis the plane of least density (the positive density summed
    over the plane, smoothed over three grid planes; the middle of the widest run of planes
    within 2 % of the range above the least, so that an isolated molecule ends up centred) is
    moved onto the cell face: a whole grid step, so the map is rolled exactly and
    ``F(h) -> F(h) exp(2 pi i h.t)`` (:func:`~pattersolve.symmetry.shift_phases` by ``-t``).
    Solutions whose origin the space group fixes (``symmetric``) are returned as they are.
    """
    if sol.symmetric:
        return sol
    rho = np.asarray(sol.density)
    shape = rho.shape
    pos = np.clip(rho, 0.0, None)
    steps = []
    for axis in range(3):
        profile = pos.sum(axis=tuple(a for a in range(3) if a != axis))
        smooth = profile + np.roll(profile, 1) + np.roll(profile, -1)
        steps.append(-_middle_of_widest_gap(smooth) % shape[axis])
    t = np.array(steps, dtype=np.float64) / np.array(shape)
    f = shift_phases(refl.hkl, sol.f, -t)
    density = np.roll(rho, steps, axis=(0, 1, 2))
    stages = dict(sol.stages)
    stages["origin"] = {"shift": [round(float(x), 4) for x in t],
                        "basis": "P1: the origin is free; the planes of least density are put "
                                 "on the cell faces (the structure whole in the cell)"}
    return Solution(f=f, fom=sol.fom, density=density, shape=sol.shape, method=sol.method,
                    stages=stages, symmetric=False, confident=sol.confident,
                    warnings=sol.warnings, peaks=None)  # peaks come from the moved map


def solve_chargeflip(refl: Reflections, seed: int = 0) -> Solution:
    """Charge flipping + origin location + peak recycling (atomic resolution only)."""
    from .abinitio import peak_model_f, solve_atomic

    res = solve_atomic(refl, rng=seed)
    f = refl.amplitude * np.exp(1j * res.phases)
    fom = sigmaa_fom(refl.hkl, refl.amplitude, peak_model_f(refl.hkl, res.peaks,
                                                            refl.spacegroup), refl.cell)
    rho = density_map(refl.hkl, fom * f, res.shape, refl.cell.volume)
    stages = {"chargeflip": {
        "origin_shift": [round(float(x), 4) for x in res.origin_shift],
        "symmetry_agreement": [round(float(x), 3) for x in res.symmetry_agreement],
        "confident": bool(res.confident), "hand_determined": bool(res.hand_determined),
        "figures_of_merit": res.fom, "seconds": round(res.seconds, 3),
    }}
    stages["hand"] = (_hand(refl, "centrosymmetric", "the structure found is centrosymmetric")
                      if res.hand_determined else _hand(refl, "arbitrary", _ARBITRARY))
    log.info("charge flipping: origin shift %s, symmetry agreement %s, %s, %.2f s",
             " ".join(f"{x:.3f}" for x in res.origin_shift),
             " ".join(f"{x:.2f}" for x in res.symmetry_agreement),
             "confident" if res.confident else "NOT confident", res.seconds)
    return Solution(f=f, fom=fom, density=rho, shape=tuple(res.shape), method="chargeflip",
                    stages=stages, symmetric=True, confident=bool(res.confident),
                    warnings=list(res.warnings), peaks=res.peaks)


def locate_in_spacegroup(refl: Reflections, sol: Solution) -> Solution:
    """Check a P1 solution against the crystal's symmetry, as Superflip does.

    The origin shift that makes the P1 map agree best with the space-group operators is
    found (:func:`pattersolve.symmetry.locate_origin`). When the mean agreement exceeds
    :data:`~pattersolve.settings.SYMMETRY_MIN_AGREEMENT`, the solution is shifted, symmetrised
    and marked confident and symmetric (written in the crystal's space group); otherwise it
    is returned unchanged, marked not confident, with a warning. P1 data are returned as
    they are (no symmetry to check).
    """
    if refl.spacegroup.number == 1 or sol.symmetric:
        return sol
    from .symmetry import grid_for_chargeflip, locate_origin, symmetrise_map

    grid = grid_for_chargeflip(refl.cell, refl.hkl, refl.spacegroup)
    origin = locate_origin(refl.hkl, sol.f, refl.cell, refl.spacegroup, shape=grid)
    agreement = float(origin.mean_agreement)
    sol.stages["symmetry_check"] = {
        "spacegroup": refl.spacegroup.hm, "origin_shift": [round(float(x), 4)
                                                           for x in origin.shift],
        "agreement": [round(x, 3) for x in origin.agreement],
        "mean_agreement": round(agreement, 3), "threshold": settings.SYMMETRY_MIN_AGREEMENT,
    }
    log.info("symmetry check in %s: mean agreement %.2f after origin shift %s",
             refl.spacegroup.hm, agreement, " ".join(f"{x:.3f}" for x in origin.shift))
    if agreement < settings.SYMMETRY_MIN_AGREEMENT:
        sol.confident = False
        sol.warnings.append(
            f"the {sol.method} solution does not obey the {refl.spacegroup.hm} symmetry (mean "
            f"agreement {agreement:.2f}, want > {settings.SYMMETRY_MIN_AGREEMENT}): treat the map "
            "as unreliable")
        return sol
    vol = refl.cell.volume
    rho = symmetrise_map(density_map(refl.hkl, origin.f, grid, vol), refl.spacegroup)
    f = refl.amplitude * np.exp(1j * np.angle(structure_factors_from_map(rho, refl.hkl, vol)))
    out = density_map(refl.hkl, sol.fom * f, grid, vol)
    return Solution(f=f, fom=sol.fom, density=out, shape=grid, method=sol.method,
                    stages=sol.stages, symmetric=True, confident=True,
                    warnings=sol.warnings, peaks=None)
