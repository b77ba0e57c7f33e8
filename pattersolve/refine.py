"""Projection phase refinement against measured amplitudes (RAAR + shrink-wrap + ER).

The iterate is a density ``x`` on the full P1 grid. Two projections alternate:

* amplitude projection ``P_M``: inside the data's resolution sphere, measured reflections
  get the measured amplitude (with ``sigma`` and ``k =``
  :data:`~pattersolve.settings.REFINE_SIGMA_K` > 0: the nearest amplitude within
  ``k * sigma`` of ``Fobs``; the shipped ``k`` is 0, exact, which measured better with noisy
  data) and keep their current phase; unmeasured reflections inside the sphere are left as
  they are (the real-space constraints fill them); everything beyond the sphere is set to 0;
  ``F(000)`` is fixed (estimated from the Patterson with
  :func:`pattersolve.fourier.estimate_f000_sq` unless given; where reflections inside the
  sphere are missing it follows the support, see :meth:`_Engine.run`).
* support projection ``P_S``: zero outside a support, and positivity inside.

RAAR (``x <- beta/2 (R_S R_M + I) x + (1 - beta) P_M x``, ``beta ~ 0.9``) runs with
shrink-wrap (every :data:`~pattersolve.settings.REFINE_SHRINKWRAP_EVERY` iterations the
support is re-estimated from the Gaussian-blurred current density, blur shrinking from
:data:`~pattersolve.settings.REFINE_BLUR_START` to ``..._END`` A), followed by
:data:`~pattersolve.settings.REFINE_ER_CYCLES` iterations of error reduction
(``x <- P_S P_M x``). Over the last :data:`~pattersolve.settings.REFINE_ANNEAL_FRACTION` of
the RAAR cycles ``beta`` falls to :data:`~pattersolve.settings.REFINE_BETA_END`: with noisy
amplitudes no density fits exactly and RAAR at ``beta`` 0.9 keeps moving even from the true
phases; the lower ``beta`` settles it in the basin it found (bench/bench_reference.py, where
the schedule and constants were chosen against a plain reference recipe). Among several
starts the one with the lowest amplitude residual
``R = sum | |Fo| - k |Fc| | / sum |Fo|`` (``k`` a least-squares scale, ``Fc`` from the
constrained density) is kept; this needs no truth.

* Classical mode (no ``start_density``): the first support is the thresholded full Patterson
  map (it contains a shifted copy of the molecule; "half the autocorrelation" fails in small
  cells, see PHASING_NOTES.md) and each start has random phases.
* Hybrid mode (``start_density``, e.g. a network prediction in [-1, 1]): the starting phases
  come from the prediction and the support from its blurred positive part; the starts run
  RAAR, the second and later ones from the prediction's phases plus random phase noise. In
  packed cells (estimated packing >= :data:`~pattersolve.settings.HYBRID_GUIDE_MIN_PACKING`,
  :func:`packing_estimate`) the first start is *guided* instead: error reduction with
  shrink-wrap, each iterate pulled toward the (scaled, positive part of the) prediction with a
  weight that falls linearly from :data:`~pattersolve.settings.HYBRID_GUIDE_WEIGHT` to 0
  over the first :data:`~pattersolve.settings.HYBRID_GUIDE_FRACTION` of the cycles, then
  plain ER. There RAAR leaves even a good prediction's basin (from CC 0.91 predictions at
  2.5 A, 0.23 of the maps ended < 15 deg; with the guided start 0.70: BENCHMARKS.md,
  hand-over), while in open cells RAAR from the prediction works and the guided start can
  hold on to a wrong one. With the guided start (and
  :data:`~pattersolve.settings.HYBRID_GUIDED_POOL`) ``n_starts`` classical starts follow it
  (random phases, Patterson support: exactly ``--method classical``'s starts), all in one
  pool chosen by the residual, so the result's residual is never above classical mode's. The
  unrefined prediction is itself a candidate, so a good start is never replaced by a refined
  one with a higher residual.
* A given support (``support=``, e.g. a molecular envelope) replaces either mode's first
  support and stays fixed unless ``fix_support=False``. In the hard regime's packed cells a
  fixed envelope of 1.6 A spheres on the true atoms solves every map, 2.0 A spheres about two
  thirds (BENCHMARKS.md, envelope).

The figure of merit of the result is :func:`pattersolve.phases.sigmaa_fom` (needs no truth).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gemmi
import numpy as np

from . import progress
from .errors import ExitCode, PattersolveError
from .fourier import (
    HalfGrid,
    check_grid_holds,
    d_spacings,
    density_map,
    estimate_f000_sq,
    patterson_map,
    reciprocal_s2,
)
from .phases import amplitude_residual, ls_scale, phases_from_density, sigmaa_fom
from .settings import (
    DEFAULT_CYCLES,
    DEFAULT_STARTS,
    HYBRID_GUIDE_FRACTION,
    HYBRID_GUIDE_MIN_PACKING,
    HYBRID_GUIDE_WEIGHT,
    HYBRID_GUIDED_POOL,
    HYBRID_NOISE_DEG,
    HYBRID_SUPPORT_BLUR,
    PACKING_PER_ELECTRON,
    RAAR_BETA,
    REFINE_ADAPT_F000,
    REFINE_ANNEAL_FRACTION,
    REFINE_BETA_END,
    REFINE_BLUR_END,
    REFINE_BLUR_START,
    REFINE_ER_CYCLES,
    REFINE_F000_RANGE,
    REFINE_PATTERSON_THRESHOLD,
    REFINE_SHRINKWRAP_EVERY,
    REFINE_SHRINKWRAP_THRESHOLD,
    REFINE_SIGMA_K,
)


@dataclass
class RefineResult:
    """Output of :func:`refine_phases`.

    Attributes
    ----------
    f
        complex ``(n,)`` refined F on the input ``hkl``: measured amplitude x refined phase
        (the model's own ``k |Fc|`` where the amplitude is missing).
    fom
        ``(n,)`` figure of merit in ``[0, 1]`` (:func:`pattersolve.phases.sigmaa_fom`).
    density
        Final density on ``shape`` (float64, e/A^3): the map of ``f`` with ``F000``.
    residual_start
        Amplitude residual of the starting model of the chosen start (the prediction in hybrid
        mode; the support-projected random-phase map in classical mode).
    residual_final
        Amplitude residual of the chosen result.
    f000
        ``F(000)`` used.
    starts
        Per start: ``{"residual": float, "residual_start": float, "seconds": float}``.
    seconds
        Wall time of the whole call.
    chosen
        Index of the chosen start; ``-1`` means the unrefined starting model won.
    mode
        ``"classical"`` or ``"hybrid"``.
    extra
        Run facts for the log (device, support fraction, packing estimate, guided or not).
    f_starts
        Per start, the model ``F`` on ``hkl`` its refined density gives (what its residual was
        computed from), for diagnostics such as ``bench/bench_starts.py``.
    """

    f: np.ndarray
    fom: np.ndarray
    density: np.ndarray
    residual_start: float
    residual_final: float
    f000: float
    starts: list[dict]
    seconds: float
    chosen: int = 0
    mode: str = "classical"
    extra: dict = field(default_factory=dict)
    f_starts: list[np.ndarray] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# array backends: numpy, or torch (CPU/GPU) for a batch of starts
# ---------------------------------------------------------------------------------------------
class _NumpyBackend:
    name = "numpy"

    def asarray(self, a: np.ndarray, complex_: bool = False) -> Any:
        return np.asarray(a, dtype=np.complex128 if complex_ else np.float64)

    def asbool(self, a: np.ndarray) -> Any:
        return np.asarray(a, dtype=bool)

    def rfftn(self, x: Any) -> Any:
        return np.fft.rfftn(x, axes=(-3, -2, -1))

    def irfftn(self, g: Any, shape: tuple[int, int, int]) -> Any:
        return np.fft.irfftn(g, s=shape, axes=(-3, -2, -1))

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return np.where(cond, a, b)

    def max3(self, x: Any) -> Any:
        return x.max(axis=(-3, -2, -1), keepdims=True)

    def sum3(self, x: Any) -> Any:
        return x.sum(axis=(-3, -2, -1), keepdims=True)

    def exp(self, x: Any) -> Any:
        return np.exp(x)

    def clip(self, x: Any, lo: Any, hi: Any) -> Any:
        return np.minimum(np.maximum(x, lo), hi)

    def numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)


class _TorchBackend:
    name = "torch"

    def __init__(self, device: str) -> None:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - torch is a dependency
            raise PattersolveError("torch is not installed", "pip install torch or use "
                                   "device='numpy'", ExitCode.BACKEND) from exc
        self.torch = torch
        if device in ("torch", "cpu"):
            device = "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise PattersolveError("CUDA was requested but torch sees no GPU",
                                   "use device='numpy' or 'torch' (CPU)", ExitCode.BACKEND)
        self.device = torch.device(device)
        self.real = torch.float64 if self.device.type == "cpu" else torch.float32
        self.cplx = torch.complex128 if self.device.type == "cpu" else torch.complex64

    def asarray(self, a: np.ndarray, complex_: bool = False) -> Any:
        return self.torch.as_tensor(np.asarray(a), device=self.device,
                                    dtype=self.cplx if complex_ else self.real)

    def asbool(self, a: np.ndarray) -> Any:
        return self.torch.as_tensor(np.asarray(a, dtype=bool), device=self.device)

    def rfftn(self, x: Any) -> Any:
        return self.torch.fft.rfftn(x, dim=(-3, -2, -1))

    def irfftn(self, g: Any, shape: tuple[int, int, int]) -> Any:
        return self.torch.fft.irfftn(g, s=shape, dim=(-3, -2, -1))

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        torch = self.torch
        if not isinstance(b, torch.Tensor):
            b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
        if not isinstance(a, torch.Tensor):
            a = torch.as_tensor(a, dtype=b.dtype, device=b.device)
        return torch.where(cond, a, b)

    def max3(self, x: Any) -> Any:
        return x.amax(dim=(-3, -2, -1), keepdim=True)

    def sum3(self, x: Any) -> Any:
        return x.sum(dim=(-3, -2, -1), keepdim=True)

    def exp(self, x: Any) -> Any:
        return self.torch.exp(x)

    def clip(self, x: Any, lo: Any, hi: Any) -> Any:
        return self.torch.clamp(x, min=lo, max=hi)

    def numpy(self, x: Any) -> np.ndarray:
        return x.detach().cpu().numpy().astype(
            np.complex128 if x.is_complex() else np.float64)


def _backend(device: str) -> _NumpyBackend | _TorchBackend:
    if device == "numpy":
        return _NumpyBackend()
    if device in ("torch", "cpu") or device.startswith("cuda"):
        return _TorchBackend(device)
    raise PattersolveError(f"unknown refinement device {device!r}",
                           "use 'numpy', 'torch' (CPU) or 'cuda'", ExitCode.BACKEND)


# ---------------------------------------------------------------------------------------------
# reciprocal-space bookkeeping on the rfft half grid
# ---------------------------------------------------------------------------------------------
@dataclass
class _Problem:
    shape: tuple[int, int, int]
    volume: float
    meas: np.ndarray  # bool, half grid: measured
    free: np.ndarray  # bool, half grid: inside the sphere, unmeasured
    target: np.ndarray  # |G| of measured (G = rfftn(rho) = N/V conj(F))
    tol: np.ndarray  # allowed |G| deviation (k sigma, in G units)
    g000: float
    s2: np.ndarray  # 1/d^2 on the half grid
    grid: HalfGrid  # half-grid positions of the input hkl (and of their l = 0 mates)


def _setup(hkl: np.ndarray, amplitude: np.ndarray, sigma: np.ndarray | None,
           cell: gemmi.UnitCell, shape: tuple[int, int, int], f000: float) -> _Problem:
    nu, nv, nw = shape
    hg = HalfGrid(hkl, shape)
    half = hg.rshape
    volume = float(cell.volume)
    scale = float(nu * nv * nw) / volume  # |G| = N/V |F|
    measured = np.isfinite(amplitude) & (amplitude >= 0)
    if sigma is not None:
        measured &= np.isfinite(sigma)
    grid_hkl = hg.grid_hkl.reshape(-1, 3)  # Miller index of every half-grid point
    s2 = reciprocal_s2(cell, grid_hkl).reshape(half)
    d_min = float(d_spacings(cell, hkl[measured]).min())
    nyquist = ((2 * np.abs(grid_hkl) >= np.asarray(shape)).any(axis=1)).reshape(half)
    inside = (s2 <= 1.0 / (d_min - 1e-6) ** 2) & ~nyquist
    inside[0, 0, 0] = False
    meas = np.zeros(half, dtype=bool)
    target = np.zeros(half)
    tol = np.zeros(half)
    amp_m = np.where(measured, amplitude, 0.0)
    tol_m = np.zeros_like(amp_m) if sigma is None else np.where(
        measured, REFINE_SIGMA_K * np.nan_to_num(sigma), 0.0)
    # each reflection, then the Friedel mates of the l = 0 plane (on the half grid too)
    for pos, rows in ((hg.index, np.arange(len(hkl))), (hg.mate_index, hg.mate_rows)):
        keep = measured[rows]
        sel = rows[keep]
        p = tuple(a[keep] for a in pos)
        meas[p] = True
        target[p] = amp_m[sel] * scale
        tol[p] = tol_m[sel] * scale
    meas &= inside
    free = inside & ~meas
    return _Problem(shape=shape, volume=volume, meas=meas, free=free, target=target, tol=tol,
                    g000=f000 * scale, s2=s2, grid=hg)


# ---------------------------------------------------------------------------------------------
# the iteration (backend-generic, batched over starts)
# ---------------------------------------------------------------------------------------------
class _Engine:
    def __init__(self, prob: _Problem, bk: _NumpyBackend | _TorchBackend, beta: float,
                 adapt_f000: bool) -> None:
        self.prob = prob
        self.bk = bk
        self.beta = beta
        self.adapt_f000 = adapt_f000
        self.g000: Any = prob.g000
        self.meas = bk.asbool(prob.meas)
        self.free = bk.asbool(prob.free)
        self.target = bk.asarray(prob.target)
        self.lo = bk.asarray(np.maximum(prob.target - prob.tol, 0.0))
        self.hi = bk.asarray(prob.target + prob.tol)
        self.use_tol = bool(np.any(prob.tol > 0))
        self.s2 = bk.asarray(prob.s2)
        self.origin = np.zeros(prob.meas.shape, dtype=bool)
        self.origin[0, 0, 0] = True
        self.origin = bk.asbool(self.origin)

    def project_amplitudes(self, x: Any) -> Any:
        bk = self.bk
        g = bk.rfftn(x)
        mag = abs(g)
        new = bk.clip(mag, self.lo, self.hi) if self.use_tol else self.target
        tiny = mag <= 1e-30
        # measured: new amplitude, current phase (phase 0 where the current F vanishes)
        moved = bk.where(tiny, new + 0.0 * g, g * (new / bk.where(tiny, 1.0, mag)))
        g = bk.where(self.meas, moved, bk.where(self.free, g, 0.0))
        g = bk.where(self.origin, self.g000, g)
        return bk.irfftn(g, self.prob.shape)

    def project_support(self, x: Any, support: Any) -> Any:
        return self.bk.where(support & (x > 0), x, 0.0)

    def blur(self, x: Any, sigma_a: float) -> Any:
        bk = self.bk
        kernel = (-2.0 * np.pi**2 * sigma_a**2) * self.s2
        return bk.irfftn(bk.rfftn(x) * bk.exp(kernel), self.prob.shape)

    def shrinkwrap(self, x: Any, sigma_a: float, threshold: float) -> Any:
        blurred = self.blur(x, sigma_a)
        return blurred > threshold * self.bk.max3(blurred)

    def beta_at(self, it: int, cycles: int) -> float:
        """RAAR's beta at iteration ``it``: ``beta``, falling linearly to ``REFINE_BETA_END``
        over the last ``REFINE_ANNEAL_FRACTION`` of the ``cycles``."""
        start = cycles - round(REFINE_ANNEAL_FRACTION * cycles)
        if it < start or cycles - start < 2:
            return self.beta
        return self.beta + (REFINE_BETA_END - self.beta) * (it - start) / (cycles - 1 - start)

    def run(self, x: Any, support: Any, cycles: int, er_cycles: int, shrinkwrap: bool = True
            ) -> tuple[Any, Any, Any]:
        """RAAR with shrink-wrap (or with ``support`` fixed: ``shrinkwrap=False``), then ER.

        Returns the constrained density, the support and ``F000`` per start (in ``G`` units:
        ``sum(rho)``). With ``adapt_f000`` each support update also sets ``F000`` to the
        integral of the support-projected density: an excess ``c`` per voxel shrinks to
        ``c * support_fraction``, so a Patterson estimate inflated by noise or missing
        reflections converges to the self-consistent value. The update is confined to
        ``REFINE_F000_RANGE`` times the starting estimate: in a densely packed cell the
        support fraction nears 1, the map is no contraction, and an unbounded ``F000`` runs
        away (the support then fills the cell and the residual becomes meaningless).
        """
        self.g000 = self.prob.g000 + 0.0 * self.bk.sum3(x)  # one F000 per start
        n_updates = max(1, cycles // REFINE_SHRINKWRAP_EVERY)
        update = 0
        for it in range(cycles):
            beta = self.beta_at(it, cycles)
            p = self.project_amplitudes(x)
            y = 2.0 * p - x
            ok = support & (y > 0)
            x = self.bk.where(ok, p, beta * x + (1.0 - 2.0 * beta) * p)
            if shrinkwrap and (it + 1) % REFINE_SHRINKWRAP_EVERY == 0 and it + 1 < cycles:
                frac = update / max(1, n_updates - 1)
                sig = REFINE_BLUR_START + (REFINE_BLUR_END - REFINE_BLUR_START) * frac
                constrained = self.project_support(p, support)
                if self.adapt_f000:
                    self.g000 = self.bk.clip(self.bk.sum3(constrained),
                                             REFINE_F000_RANGE[0] * self.prob.g000,
                                             REFINE_F000_RANGE[1] * self.prob.g000)
                support = self.shrinkwrap(constrained, sig, REFINE_SHRINKWRAP_THRESHOLD)
                update += 1
        x = self.project_support(x, support) if cycles == 0 else \
            self.project_support(self.project_amplitudes(x), support)
        for _ in range(er_cycles):
            x = self.project_support(self.project_amplitudes(x), support)
        return x, support, self.g000

    def run_guided(self, x: Any, support: Any, prior: Any, cycles: int, weight: float,
                   guide_cycles: int) -> tuple[Any, Any, Any]:
        """Error reduction pulled toward a prior map, with shrink-wrap (hybrid mode's first start).

        Each iteration ``p = P_S P_M x``, then ``x = (1 - w) p + w k prior`` with ``k`` the
        least-squares scale of ``prior`` onto ``p`` and ``w`` falling linearly from ``weight``
        at the first iteration to 0 at ``guide_cycles``; the support is re-estimated every
        :data:`~pattersolve.settings.REFINE_SHRINKWRAP_EVERY` iterations while guided (blur
        ``HYBRID_SUPPORT_BLUR``); ``F000`` stays at the starting estimate. After ``guide_cycles``
        it is plain ER with the last support. Returns as :meth:`run`.
        """
        bk = self.bk
        self.g000 = self.prob.g000 + 0.0 * bk.sum3(x)
        prior_sq = bk.sum3(prior * prior)
        guide_cycles = max(1, min(int(guide_cycles), cycles))
        for it in range(cycles):
            p = self.project_support(self.project_amplitudes(x), support)
            w = weight * (1.0 - it / guide_cycles)
            if w > 0:
                k = bk.sum3(p * prior) / bk.where(prior_sq > 0, prior_sq, 1.0)
                x = (1.0 - w) * p + w * k * prior
            else:
                x = p
            if w > 0 and (it + 1) % REFINE_SHRINKWRAP_EVERY == 0:
                support = self.shrinkwrap(p, HYBRID_SUPPORT_BLUR, REFINE_SHRINKWRAP_THRESHOLD)
        x = self.project_support(self.project_amplitudes(x), support)
        return x, support, self.g000


# ---------------------------------------------------------------------------------------------
# the public entry point
# ---------------------------------------------------------------------------------------------
def packing_estimate(f000: float, volume: float) -> float:
    """Fraction of the cell within 1.6 A of an atom, estimated from ``F(000)``.

    ``PACKING_PER_ELECTRON * F000 / V`` (:data:`~pattersolve.settings.PACKING_PER_ELECTRON`,
    fitted on C/N/O peptide fragments without hydrogens, where it is within ~6 %). About 0.1
    for a dipeptide in a 10-12 A cube, 0.17-0.39 for the hard regime's packed cells.
    """
    return PACKING_PER_ELECTRON * f000 / volume


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _grid_values(g: np.ndarray, prob: _Problem, volume: float, shape: tuple[int, int, int]
                 ) -> np.ndarray:
    """``F`` on the input hkl from a half-grid ``G = rfftn(rho)`` (``F = V/N conj(G)``)."""
    return np.conj(prob.grid.gather(g)) * volume / float(np.prod(shape))


def _patterson_support(hkl: np.ndarray, amp: np.ndarray, shape: tuple[int, int, int],
                       volume: float, f000: float) -> np.ndarray:
    pat = patterson_map(hkl, amp**2, shape, volume, f000**2)
    return pat > REFINE_PATTERSON_THRESHOLD * pat.max()


def _prediction_support(pred: np.ndarray, engine: _Engine) -> np.ndarray:
    p = pred - np.median(pred)
    bk = engine.bk
    blurred = bk.numpy(engine.blur(bk.asarray(p[None]), HYBRID_SUPPORT_BLUR))[0]
    return blurred > REFINE_SHRINKWRAP_THRESHOLD * blurred.max()


def _checked_inputs(hkl: np.ndarray, amplitude: np.ndarray, sigma: np.ndarray | None,
                    shape: tuple[int, int, int]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[int, int, int],
                               np.ndarray]:
    """The inputs as arrays, checked: ``hkl, amplitude, sigma, shape`` and the measured mask."""
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    amplitude = np.asarray(amplitude, dtype=np.float64)
    shape = tuple(int(n) for n in shape)
    if len(amplitude) != len(hkl) or (sigma is not None and len(sigma) != len(hkl)):
        raise ValueError("hkl, amplitude and sigma must have the same length")
    if sigma is not None:
        sigma = np.asarray(sigma, dtype=np.float64)
    measured = np.isfinite(amplitude) & (amplitude >= 0)
    if measured.sum() < 10:
        raise PattersolveError(f"only {int(measured.sum())} measured amplitudes",
                               "give at least a few hundred reflections", ExitCode.DATA)
    check_grid_holds(hkl, shape)
    return hkl, amplitude, sigma, shape, measured


def _checked_support(support: np.ndarray | None, guided: bool | None,
                     shape: tuple[int, int, int]) -> tuple[np.ndarray | None, bool | None]:
    """A given support as a bool array (it rules out the guided start: ``guided`` False)."""
    if support is None:
        return None, guided
    support = np.asarray(support, dtype=bool)
    if support.shape != shape or not support.any():
        raise ValueError(f"support must be a non-empty bool array of shape {shape}")
    if guided:
        raise ValueError("a given support has no guided start (guided=True)")
    return support, False


@dataclass
class _Starts:
    """The starting models of the starts: maps, first support, and the prediction (hybrid)."""

    x: list[np.ndarray]  # starting density per start, on the grid
    support: np.ndarray  # first support (bool, grid)
    supports: list[np.ndarray] = field(default_factory=list)  # per start (default: support)
    pred: np.ndarray | None = None  # the prediction map (hybrid mode)
    f_pred: np.ndarray | None = None  # its structure factors on hkl
    residual_pred: float = float("nan")  # its amplitude residual


def _starting_models(hkl: np.ndarray, fo: np.ndarray, measured: np.ndarray,
                     start_density: np.ndarray | None, engine: _Engine, n_starts: int,
                     rng: np.random.Generator, f000: float, pool: bool = False) -> _Starts:
    """Random phases and the Patterson's support (classical), or the prediction's phases
    (perturbed for the second and later starts) and support (hybrid). With ``pool`` (hybrid)
    the prediction's start comes first and ``n_starts`` classical ones follow."""
    shape, volume = engine.prob.shape, engine.prob.volume
    if start_density is None or pool:
        support0 = _patterson_support(hkl[measured], fo[measured], shape, volume, f000)
        phases = [rng.uniform(-np.pi, np.pi, len(hkl)) for _ in range(n_starts)]
        out = _Starts(x=[], support=support0)
        out.x = [density_map(hkl, fo * np.exp(1j * ph), shape, volume, f000) for ph in phases]
        out.supports = [support0] * n_starts
        if start_density is None:
            return out
        first = _starting_models(hkl, fo, measured, start_density, engine, 1, rng, f000)
        first.x += out.x
        first.supports += out.supports
        return first
    else:
        pred = np.asarray(start_density, dtype=np.float64)
        if pred.shape != shape:
            raise PattersolveError(f"start density has shape {pred.shape}, expected {shape}",
                                   "predict on the refinement grid", ExitCode.DATA)
        f_pred = phases_from_density(pred, hkl, volume)
        phase0 = np.angle(f_pred)
        support0 = _prediction_support(pred, engine)
        phases = [phase0 + (rng.normal(0, np.radians(min(90.0, i * HYBRID_NOISE_DEG)),
                                       len(hkl)) if i else 0.0) for i in range(n_starts)]
        residual_pred = amplitude_residual(fo[measured], f_pred[measured])
        pm = np.abs(f_pred[measured])
        k_pred = ls_scale(fo[measured], pm)
        start_amp = np.where(measured, fo, k_pred * np.abs(f_pred))  # unmeasured: predicted
        out = _Starts(x=[], support=support0, pred=pred, f_pred=f_pred,
                      residual_pred=residual_pred)
    out.x = [density_map(hkl, start_amp * np.exp(1j * ph), shape, volume, f000) for ph in phases]
    out.supports = [support0] * n_starts
    return out


def _run_starts(engine: _Engine, starts: _Starts, kinds: list[str], cycles: int, fixed: bool,
                f000: float) -> tuple[list[np.ndarray], list[float], list[float]]:
    """Run every start: the guided one alone, the RAAR ones one at a time (numpy) or as one
    batch (torch). Returns the constrained density, ``F000`` and seconds per start."""
    bk, shape, support0 = engine.bk, engine.prob.shape, starts.supports
    n_starts = len(kinds)
    results: list[np.ndarray] = [np.empty(0)] * n_starts
    f000s = [f000] * n_starts
    seconds = [0.0] * n_starts
    to_f000 = engine.prob.volume / float(np.prod(shape))
    raar = [i for i, kind in enumerate(kinds) if kind in ("raar", "random")]
    if kinds[0] == "guided":
        t0 = time.perf_counter()
        pred = starts.pred
        assert pred is not None
        prior = np.maximum(pred - np.median(pred), 0.0)
        x, _, g000 = engine.run_guided(bk.asarray(starts.x[0][None]),
                                       bk.asbool(support0[0][None]),
                                       bk.asarray(prior[None]), cycles, HYBRID_GUIDE_WEIGHT,
                                       round(HYBRID_GUIDE_FRACTION * cycles))
        results[0] = bk.numpy(x)[0]
        f000s[0] = float(bk.numpy(g000).ravel()[0]) * to_f000
        seconds[0] = time.perf_counter() - t0
    if bk.name == "numpy":
        with progress.task("refinement", len(raar), "starts") as advance:
            for i in raar:
                t0 = time.perf_counter()
                x, _, g000 = engine.run(starts.x[i][None], support0[i][None], cycles,
                                        REFINE_ER_CYCLES, shrinkwrap=not fixed)
                results[i] = np.asarray(x)[0]
                f000s[i] = float(np.asarray(g000).ravel()[0]) * to_f000
                seconds[i] = time.perf_counter() - t0
                advance()
    elif raar:
        t0 = time.perf_counter()
        xb = bk.asarray(np.stack([starts.x[i] for i in raar]))
        sb = bk.asbool(np.stack([support0[i] for i in raar]))
        x, _, g000 = engine.run(xb, sb, cycles, REFINE_ER_CYCLES, shrinkwrap=not fixed)
        per = (time.perf_counter() - t0) / len(raar)
        for i, xi, gi in zip(raar, bk.numpy(x), bk.numpy(g000).ravel(), strict=True):
            results[i], f000s[i], seconds[i] = xi, float(gi) * to_f000, per
    return results, f000s, seconds


def _final_map(hkl: np.ndarray, amplitude: np.ndarray, measured: np.ndarray,
               f_model: np.ndarray, cell: gemmi.UnitCell, shape: tuple[int, int, int],
               f000: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chosen model's phases on the measured amplitudes (its own scaled ``|F|`` where none
    was measured), their figure of merit, and their map: ``f, fom, density``."""
    fo = np.where(measured, amplitude, 0.0)
    fm = np.abs(f_model)
    k = ls_scale(fo[measured], fm[measured])
    unit = np.exp(1j * np.angle(f_model))
    f_out = np.where(measured, fo * unit, k * f_model)
    fom = sigmaa_fom(hkl, np.where(measured, amplitude, np.nan), k * f_model, cell)
    density = density_map(hkl, f_out, shape, float(cell.volume), f000)
    return f_out, fom, density


def refine_phases(hkl: np.ndarray, amplitude: np.ndarray, cell: gemmi.UnitCell,
                  shape: tuple[int, int, int], *, sigma: np.ndarray | None = None,
                  start_density: np.ndarray | None = None, n_starts: int = DEFAULT_STARTS,
                  cycles: int = DEFAULT_CYCLES, beta: float = RAAR_BETA,
                  f000: float | None = None, rng: np.random.Generator | int | None = None,
                  device: str = "numpy", guided: bool | None = None,
                  support: np.ndarray | None = None, fix_support: bool = True) -> RefineResult:
    """Refine phases against measured amplitudes by projections.

    Parameters
    ----------
    hkl
        P1 half-sphere Miller indices ``(n, 3)``.
    amplitude
        Measured ``|F|`` on ``hkl`` (NaN: not measured, left free).
    cell
        The P1 cell.
    shape
        Map grid ``(nu, nv, nw)``; must hold the indices (``2 |h| < n``).
    sigma
        Optional standard deviations of ``amplitude``: measured amplitudes are then met only
        to within ``REFINE_SIGMA_K * sigma``.
    start_density
        Optional starting map on ``shape`` (any positive affine scale): hybrid mode.
    n_starts
        Number of starts (random phases, or perturbed prediction phases; with the guided
        start and :data:`~pattersolve.settings.HYBRID_GUIDED_POOL`, the guided one and
        ``n_starts`` random-phase ones, the same as classical mode's).
    cycles
        RAAR iterations per start (followed by ``REFINE_ER_CYCLES`` of ER).
    beta
        RAAR relaxation parameter.
    f000
        ``F(000)``; estimated from the Patterson when None.
    rng
        Seed or generator for the starting phases.
    device
        ``"numpy"`` (starts one after another) or ``"torch"``/``"cpu"``/``"cuda"`` (all starts
        as one batch; torch imported here only).
    guided
        Hybrid mode: make the first start the guided one (see the module docstring). None
        (default) decides from the cell's estimated packing (:func:`packing_estimate`): guided
        when it is at least :data:`~pattersolve.settings.HYBRID_GUIDE_MIN_PACKING`. True or
        False forces it (False: every start RAAR, the hand-over before the guided start).
    support
        Optional support (bool on ``shape``), e.g. a molecular envelope: it replaces the
        Patterson's or the prediction's support, and there is no guided start. How refinement
        depends on the envelope's precision: ``bench/bench_envelope.py``.
    fix_support
        With ``support``: keep it fixed (True, default) or let shrink-wrap re-estimate it as
        usual (False: it is only the first support).

    Returns
    -------
    RefineResult
    """
    t_start = time.perf_counter()
    rng = _as_rng(rng)
    hkl, amplitude, sigma, shape, measured = _checked_inputs(hkl, amplitude, sigma, shape)
    volume = float(cell.volume)
    f000_given = f000
    if f000 is None:
        amp_m = amplitude[measured]
        f000 = float(np.sqrt(estimate_f000_sq(hkl[measured], amp_m**2, shape, volume)))
    prob = _setup(hkl, amplitude, sigma, cell, shape, float(f000))
    bk = _backend(device)
    # F000 follows the support where reflections inside the sphere are missing (they inflate
    # the Patterson estimate); with complete data it stays at the estimate (REFINE_ADAPT_F000)
    adapt = f000_given is None and (REFINE_ADAPT_F000 or bool(prob.free.any()))
    engine = _Engine(prob, bk, beta, adapt_f000=adapt)
    n_starts = max(1, int(n_starts))
    fixed = support is not None and fix_support
    support, guided = _checked_support(support, guided, shape)

    fo = np.where(measured, amplitude, 0.0)
    hybrid = start_density is not None
    packing = packing_estimate(float(f000), volume)
    if guided is None:
        guided = packing >= HYBRID_GUIDE_MIN_PACKING
    pool = hybrid and guided and HYBRID_GUIDED_POOL
    starts = _starting_models(hkl, fo, measured, start_density, engine, n_starts, rng,
                              float(f000), pool=pool)
    if support is not None:
        starts.support = support
        starts.supports = [support] * len(starts.x)
    kinds = ["guided" if hybrid and guided and i == 0 else "random" if pool else "raar"
             for i in range(n_starts + pool)]
    initial: list[float] = []
    for x0, s0 in zip(starts.x, starts.supports, strict=True):
        g0 = np.fft.rfftn(np.where(s0 & (x0 > 0), x0, 0.0))
        initial.append(amplitude_residual(fo[measured],
                                          _grid_values(g0, prob, volume, shape)[measured]))
    results, f000s, seconds = _run_starts(engine, starts, kinds, cycles, fixed, float(f000))

    # choose by amplitude residual; the unrefined prediction is a candidate too
    f_models = [_grid_values(np.fft.rfftn(x), prob, volume, shape) for x in results]
    residuals = [amplitude_residual(fo[measured], fm[measured]) for fm in f_models]
    best = int(np.argmin(residuals))
    chosen, f_model, residual_final = best, f_models[best], residuals[best]
    f000_start, f000 = float(f000), f000s[best]
    residual_start = starts.residual_pred if hybrid else initial[best]
    if hybrid and starts.residual_pred <= residual_final:
        assert starts.f_pred is not None
        chosen, f_model, residual_final = -1, starts.f_pred, starts.residual_pred
        f000 = f000_start

    f_out, fom, density = _final_map(hkl, amplitude, measured, f_model, cell, shape, float(f000))
    return RefineResult(
        f=f_out, fom=fom, density=density, residual_start=float(residual_start),
        residual_final=float(residual_final), f000=float(f000),
        starts=[{"residual": r, "residual_start": r0, "seconds": s, "f000": f0, "kind": kd}
                for r, r0, s, f0, kd in zip(residuals, initial, seconds, f000s, kinds,
                                            strict=True)],
        seconds=time.perf_counter() - t_start, chosen=chosen,
        mode="hybrid" if hybrid else "classical",
        extra={"device": bk.name, "support_fraction": float(starts.support.mean()),
               "f000_start": f000_start, "packing": packing, "guided": kinds[0] == "guided",
               "fixed_support": fixed},
        f_starts=f_models)
