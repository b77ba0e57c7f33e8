"""The Patterson method for heavy atoms: vector search, heavy-atom phases, Fourier recycling.

Below atomic resolution charge flipping fails, but one heavy atom (Br and up) among light ones
still dominates the Patterson: its self-vectors (the Harker vectors ``x - (R x + t)``, one per
operator with a rotation part) stand out, and from them its position follows (Patterson 1935;
Buerger's minimum function; SHELXS PATT). What is done here:

1. **Patterson.** Sharpened and origin-removed: coefficients ``|E| |F|`` minus their mean in
   resolution shells, on a grid of about ``d_min / 3`` (:func:`sharpened_patterson`), in r.m.s.
   units.
2. **How many heavy atoms.** From a formula (``"Pd C20 H24 N2 O2"``; the heaviest element,
   its count times the formula units per asymmetric unit by the 18 A^3 rule or by Z), else the
   element is estimated from the strongest non-origin peak of the plain Patterson relative to
   the origin peak, and one and two sites are tried (:func:`heavy_contents`).
3. **Vector search.** Every grid point ``x`` of the cell is a trial site; its score is the
   lowest Patterson value at its Harker vectors (the symmetry minimum function) and, once
   sites are fixed, at the cross vectors ``x - (R y + t)`` to every image of every fixed site
   (a superposition minimum function). The best first sites are each completed to the
   expected number of sites by the same search (:func:`locate_heavy_atoms`).
4. **Completion.** The heavy atoms' structure factors give phases; Sim weights
   (``X = 2 |E_o| |E_p| / (1 - q)``, ``q`` the model's share of the scattering) give an E-map
   whose strongest peaks (not within :data:`~pattersolve.settings.PATT_HEAVY_LIGHT_DISTANCE`
   of a heavy atom) become carbon atoms; the larger model gives new phases; repeated for
   :data:`~pattersolve.settings.PATT_CYCLES` cycles, the light-atom count ramping up to the
   expected one (:func:`complete_structure`).
5. **Score.** ``CC`` between ``|E_obs|`` and ``|E_calc|`` of the completed model over all
   reflections (a CFOM) picks among the trial heavy-atom solutions. Peaks picked from a map
   that carries the measured amplitudes fit those amplitudes whatever the phases (wrong
   models reach CC 0.77 at 1.8 A in a small cell), so the same completion is also run from
   heavy atoms at random sites (:data:`~pattersolve.settings.PATT_DECOYS`): a solution is
   confident only with CC at least :data:`~pattersolve.settings.PATT_CONFIDENT_CC` and
   :data:`~pattersolve.settings.PATT_CONFIDENT_MARGIN` above the best decoy.

Limits: a heavy atom on a special position (its Harker vectors fall on the origin) is not
found; in P-1 the one Harker vector per site competes with every other Patterson peak, and
a heavy atom that does not dominate the scattering (Co beside two S and six F) is missed.

Heavy-atom sites are in the space group's own frame (its operators as gemmi gives them), so
the phases are at the space group's origin; the hand (for non-centrosymmetric groups) is
arbitrary, like the heavy atom's own enantiomorph.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import gemmi
import numpy as np

from . import settings
from .chargeflip import normalise_amplitudes
from .errors import ExitCode, PattersolveError
from .fourier import density_map, patterson_map, reciprocal_s2, sampled_grid_shape
from .peaks import Peaks, find_peaks, min_distances
from .phases import amplitude_residual, bessel_ratio, unit_phase
from .reflections import Reflections
from .simulate import form_factors, structure_factors
from .symmetry import grid_factors, grid_for_chargeflip, space_group_ops, symmetry_images

log = logging.getLogger("pattersolve")

__all__ = ["HeavyContents", "harker_vectors", "cross_vectors", "sharpened_patterson",
           "minimum_function", "locate_heavy_atoms", "heavy_contents", "complete_structure",
           "solve_patterson"]


# ---------------------------------------------------------------------------------------------
# vectors
# ---------------------------------------------------------------------------------------------
def _rotating_ops(spacegroup: gemmi.SpaceGroup) -> list[tuple[np.ndarray, np.ndarray]]:
    """Operators with a rotation part other than the identity (pure translations give a vector
    independent of the site: no information)."""
    return [(r, t) for r, t in space_group_ops(spacegroup) if not np.allclose(r, np.eye(3))]


def harker_vectors(site: np.ndarray, spacegroup: gemmi.SpaceGroup) -> np.ndarray:
    """Harker vectors ``x - (R x + t)`` (mod 1) of fractional sites.

    Parameters
    ----------
    site
        ``(3,)`` or ``(n, 3)`` fractional coordinates.
    spacegroup
        The crystal's space group (gemmi's operators, centring included).

    Returns
    -------
    numpy.ndarray
        ``(n_rot, 3)`` for one site, ``(n, n_rot, 3)`` for ``n``; one vector per operator with a
        rotation part (P2(1): ``(2x, 1/2, 2z)``), in ``[0, 1)``.
    """
    x = np.asarray(site, dtype=np.float64)
    pts = x.reshape(-1, 3)
    ops = _rotating_ops(spacegroup)
    if not ops:
        return np.zeros((0, 3)) if x.ndim == 1 else np.zeros((len(pts), 0, 3))
    out = np.stack([(pts - (pts @ r.T + t)) % 1.0 for r, t in ops], axis=1)
    out = np.where(out > 1.0 - 1e-9, 0.0, out)
    return out[0] if x.ndim == 1 else out


def cross_vectors(site: np.ndarray, others: np.ndarray, spacegroup: gemmi.SpaceGroup
                  ) -> np.ndarray:
    """Vectors ``x - (R y + t)`` (mod 1) from every image of each site ``y`` of ``others`` to
    each trial site ``x``: shape ``(n, n_ops * n_others, 3)`` for ``(n, 3)`` sites."""
    pts = np.asarray(site, dtype=np.float64).reshape(-1, 3)
    images = symmetry_images(others, spacegroup).reshape(-1, 3)
    return (pts[:, None, :] - images[None, :, :]) % 1.0


def _interpolate(pmap: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Periodic trilinear interpolation of a map at fractional vectors ``(..., 3)``."""
    shape = np.asarray(pmap.shape)
    g = (np.asarray(vectors, dtype=np.float64) % 1.0) * shape
    i0 = np.floor(g).astype(np.int64)
    w = g - i0
    out = np.zeros(g.shape[:-1])
    for corner in np.ndindex(2, 2, 2):
        c = np.asarray(corner)
        idx = (i0 + c) % shape
        weight = np.prod(np.where(c == 1, w, 1.0 - w), axis=-1)
        out += weight * pmap[idx[..., 0], idx[..., 1], idx[..., 2]]
    return out


def minimum_function(pmap: np.ndarray, sites: np.ndarray, spacegroup: gemmi.SpaceGroup,
                     fixed: np.ndarray | None = None) -> np.ndarray:
    """The symmetry (superposition) minimum function at trial sites ``(n, 3)``.

    The lowest Patterson value over each site's Harker vectors and, with ``fixed`` sites, its
    cross vectors to every image of them; in the map's units. Without rotation operators and
    fixed sites (P1) it is 0 everywhere.
    """
    pts = np.asarray(sites, dtype=np.float64).reshape(-1, 3)
    parts = [harker_vectors(pts, spacegroup)]
    if fixed is not None and len(fixed):
        parts.append(cross_vectors(pts, fixed, spacegroup))
    vec = np.concatenate(parts, axis=1)
    if vec.shape[1] == 0:
        return np.zeros(len(pts))
    out = np.empty(len(pts))
    for start in range(0, len(pts), 16384):
        out[start:start + 16384] = _interpolate(pmap, vec[start:start + 16384]).min(axis=1)
    return out


# ---------------------------------------------------------------------------------------------
# the Patterson and the heavy atoms it shows
# ---------------------------------------------------------------------------------------------
def _shell_mean(values: np.ndarray, s2: np.ndarray, n_shells: int = settings.CF_N_SHELLS
                ) -> np.ndarray:
    """Mean of ``values`` in equal-count shells of ``1/d^2``, interpolated per reflection."""
    order = np.argsort(s2)
    chunks = np.array_split(order, int(max(1, min(n_shells, len(s2) // 20))))
    centres = np.array([s2[c].mean() for c in chunks])
    means = np.array([values[c].mean() for c in chunks])
    return np.interp(s2, centres, means)


def sharpened_patterson(hkl: np.ndarray, amplitude: np.ndarray, cell: gemmi.UnitCell,
                        spacegroup: gemmi.SpaceGroup, shape: tuple[int, int, int]
                        ) -> np.ndarray:
    """Origin-removed sharpened Patterson in r.m.s. units: coefficients ``|E| |F|`` minus their
    mean per resolution shell (the mean makes the origin peak)."""
    e = normalise_amplitudes(hkl, amplitude, cell, spacegroup)
    c = e * amplitude
    c = c - _shell_mean(c, reciprocal_s2(cell, hkl))
    pmap = patterson_map(hkl, c, shape, cell.volume)
    rms = float(np.sqrt(np.mean(pmap**2))) or 1.0
    return pmap / rms


def _grid_points(shape: tuple[int, ...]) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return idx.reshape(-1, 3) / np.asarray(shape, dtype=np.float64)


def _local_maxima(grid: np.ndarray, n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid points (fractional) not below any of their 26 neighbours, highest first.

    Unlike :func:`pattersolve.peaks.find_peaks` a plateau keeps its points: the minimum
    function of a polar space group is constant along the polar axis."""
    is_max = grid > grid.mean()
    for shift in np.ndindex(3, 3, 3):
        if shift != (1, 1, 1):
            is_max &= grid >= np.roll(grid, tuple(1 - s for s in shift), axis=(0, 1, 2))
    idx = np.argwhere(is_max)
    height = grid[tuple(idx.T)]
    order = np.argsort(-height, kind="stable")[:n_max]
    return idx[order] / np.asarray(grid.shape, dtype=np.float64), height[order]


def _same_vector_set(a: np.ndarray, b: np.ndarray, cell: gemmi.UnitCell,
                     pgroup: gemmi.SpaceGroup) -> bool:
    """Whether two sites' Harker vectors coincide under the Patterson group (within 0.5 A):
    then they are the same heavy-atom solution up to the origin and hand."""
    if len(a) == 0:
        return True
    return bool(min_distances(a, b, cell, pgroup).max() < 0.5)


def _first_sites(pmap: np.ndarray, cell: gemmi.UnitCell, sg: gemmi.SpaceGroup, n_trials: int
                 ) -> list[tuple[np.ndarray, float]]:
    """The best first sites by the symmetry minimum function, one per distinct Harker set."""
    from .patterson import patterson_group

    if not _rotating_ops(sg):
        return [(np.zeros(3), 0.0)]  # no Harker vectors: the first site fixes the origin
    smf = minimum_function(pmap, _grid_points(pmap.shape), sg).reshape(pmap.shape)
    cand_frac, cand_height = _local_maxima(smf, 50 * n_trials)
    pgroup = patterson_group(sg)
    out: list[tuple[np.ndarray, float]] = []
    kept: list[np.ndarray] = []
    for frac, height in zip(cand_frac, cand_height, strict=True):
        hv = harker_vectors(frac, sg)
        if any(_same_vector_set(hv, k, cell, pgroup) for k in kept):
            continue
        kept.append(hv)
        out.append((frac, float(height)))
        if len(out) >= n_trials:
            break
    return out


def _next_site(pmap: np.ndarray, cell: gemmi.UnitCell, sg: gemmi.SpaceGroup,
               fixed: np.ndarray) -> tuple[np.ndarray, float] | None:
    """The best further site given the ``fixed`` ones (Harker and cross vectors)."""
    pts = _grid_points(pmap.shape)
    smf = minimum_function(pmap, pts, sg, fixed=fixed)
    near = min_distances(pts, fixed, cell, sg) < settings.PATT_SITE_MIN_DISTANCE
    smf[near] = -np.inf
    if not np.isfinite(smf).any():
        return None
    smf = np.where(np.isfinite(smf), smf, smf[np.isfinite(smf)].min() - 1.0)
    frac, height = _local_maxima(smf.reshape(pmap.shape), 1)
    if len(height) == 0:
        return None
    return frac[0], float(height[0])


def _vector_sum(pmap: np.ndarray, pts: np.ndarray, sg: gemmi.SpaceGroup,
                fixed: np.ndarray | None) -> np.ndarray:
    """Summed Patterson value at the Harker (and cross) vectors of each point."""
    vec = [harker_vectors(pts, sg)]
    if fixed is not None and len(fixed):
        vec.append(cross_vectors(pts, fixed, sg))
    v = np.concatenate(vec, axis=1)
    return _interpolate(pmap, v).sum(axis=1) if v.shape[1] else np.zeros(len(pts))


def _refine_site(pmap: np.ndarray, site: np.ndarray, sg: gemmi.SpaceGroup,
                 fixed: np.ndarray | None) -> np.ndarray:
    """Sub-grid position by a parabola along each axis through the summed Patterson value at
    the site's vectors (smooth, unlike their minimum) half a grid step either side (a whole
    step of a vector ``2x``), twice."""
    step = 0.5 / np.asarray(pmap.shape, dtype=np.float64)
    site = np.asarray(site, dtype=np.float64).copy()
    for _ in range(2):
        pts = np.repeat(site[None], 7, axis=0)
        for axis in range(3):
            pts[1 + 2 * axis, axis] -= step[axis]
            pts[2 + 2 * axis, axis] += step[axis]
        val = _vector_sum(pmap, pts, sg, fixed)
        for axis in range(3):
            fm, f0, fp = val[1 + 2 * axis], val[0], val[2 + 2 * axis]
            den = fm - 2.0 * f0 + fp
            if den < -1e-12:
                site[axis] += float(np.clip(0.5 * (fm - fp) / den, -1.0, 1.0)) * step[axis]
    return site % 1.0


def locate_heavy_atoms(pmap: np.ndarray, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup,
                       n_sites: int, n_trials: int = settings.PATT_TRIALS
                       ) -> list[tuple[np.ndarray, float]]:
    """Trial heavy-atom solutions from a Patterson by vector search.

    Parameters
    ----------
    pmap
        Patterson on a grid over the cell (:func:`sharpened_patterson`).
    cell, spacegroup
        The crystal's.
    n_sites
        Heavy atoms per asymmetric unit.
    n_trials
        First sites tried (each with a distinct set of Harker vectors).

    Returns
    -------
    list of (sites, score)
        ``sites`` ``(k, 3)`` fractional (``k <= n_sites`` where no room was left), ``score``
        the lowest minimum-function value met while placing them, best first.
    """
    out = []
    for first, score in _first_sites(pmap, cell, spacegroup, n_trials):
        sites = [_refine_site(pmap, np.asarray(first), spacegroup, None)]
        for _ in range(n_sites - 1):
            fixed = np.array(sites)
            nxt = _next_site(pmap, cell, spacegroup, fixed)
            if nxt is None:
                break
            sites.append(_refine_site(pmap, nxt[0], spacegroup, fixed))
            score = min(score, nxt[1])
        out.append((np.array(sites), score))
    out.sort(key=lambda s: -s[1])
    return out


@dataclass
class HeavyContents:
    """What the cell holds, as far as the Patterson method needs it."""

    element: str  # the heavy element
    n_heavy: tuple[int, ...]  # heavy atoms per asymmetric unit to try
    n_light: float  # other non-hydrogen atoms per asymmetric unit
    basis: str  # where the numbers come from


def _formula_units(formula: Any) -> tuple[dict[str, float], float | None]:
    from .shelx import Formula, parse_formula

    if isinstance(formula, Formula):
        return formula.non_hydrogen(), formula.z
    counts = parse_formula(str(formula))
    return {e: n for e, n in counts.items() if e not in ("H", "D")}, None


def _heavy_from_formula(formula: Any, n_exp: float, n_ops: int) -> HeavyContents:
    counts, z = _formula_units(formula)
    if not counts:
        raise PattersolveError(f"formula {formula!r} has no atom heavier than hydrogen",
                               "give the formula with its non-hydrogen atoms", ExitCode.USAGE)
    element = max(counts, key=lambda e: gemmi.Element(e).atomic_number)
    per_unit = sum(counts.values())
    units = z / n_ops if z else n_exp / per_unit
    units = max(1.0, float(np.round(units)))
    n_heavy = max(1, int(round(counts[element] * units)))
    return HeavyContents(element, (n_heavy,), max(per_unit * units - n_heavy, 1.0),
                         f"formula {formula}: {units:g} formula unit(s) per asymmetric unit")


def _heavy_from_patterson(hkl: np.ndarray, amplitude: np.ndarray, cell: gemmi.UnitCell,
                          sg: gemmi.SpaceGroup, shape: tuple[int, int, int], n_exp: float
                          ) -> HeavyContents:
    """Heavy element from the strongest non-origin peak of the plain Patterson: its height
    over the origin's is about ``Z_h^2 / (n_ops (Z_h^2 + n_light 6.6^2))``."""
    plain = patterson_map(hkl, amplitude**2, shape, cell.volume)
    peaks = find_peaks(plain, cell, None, n_max=30)
    away = min_distances(peaks.frac, np.zeros((1, 3)), cell) > 1.5
    n_ops = len(space_group_ops(sg))
    ratio = float(peaks.height[away][0] / plain[0, 0, 0]) if away.any() else 0.0
    x = min(ratio * n_ops, 0.9)
    z2 = x * max(n_exp - 1.0, 1.0) * 6.6**2 / (1.0 - x)
    z = int(np.clip(round(np.sqrt(z2)), 16, 80))
    element = gemmi.Element(z).name
    return HeavyContents(element, tuple(range(1, settings.PATT_MAX_UNKNOWN_SITES + 1)),
                         max(n_exp - 1.0, 1.0), f"no formula: strongest Patterson peak "
                         f"{ratio:.3f} of the origin, about Z = {z} ({element})")


def heavy_contents(formula: Any, hkl: np.ndarray, amplitude: np.ndarray,
                   cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup,
                   shape: tuple[int, int, int]) -> HeavyContents:
    """The heavy element, how many heavy atoms per asymmetric unit to try, and the rest.

    ``formula``: a string (``"Pd C20 H24 N2 O2"``), a :class:`pattersolve.shelx.Formula`
    (whose Z, when given, fixes the formula units) or None (estimated from the Patterson).
    """
    n_ops = len(space_group_ops(spacegroup))
    n_exp = cell.volume / (settings.VOLUME_PER_ATOM * n_ops)
    if formula is not None:
        return _heavy_from_formula(formula, n_exp, n_ops)
    return _heavy_from_patterson(hkl, amplitude, cell, spacegroup, shape, n_exp)


# ---------------------------------------------------------------------------------------------
# completion by Fourier recycling
# ---------------------------------------------------------------------------------------------
@dataclass
class _Job:
    """The usable data, their E values and the expected scattering of the cell's contents."""

    hkl: np.ndarray
    amp: np.ndarray
    e: np.ndarray
    cell: gemmi.UnitCell
    sg: gemmi.SpaceGroup
    shape: tuple[int, int, int]  # E-map grid (the operators map it onto itself)
    centric: np.ndarray
    f_heavy: np.ndarray  # form factor of the heavy element per reflection
    f_light: np.ndarray  # of carbon
    sigma_n: np.ndarray  # sum of f^2 over the expected cell contents (B = 0)
    contents: HeavyContents

    @classmethod
    def make(cls, hkl: np.ndarray, amp: np.ndarray, cell: gemmi.UnitCell,
             sg: gemmi.SpaceGroup, contents: HeavyContents) -> _Job:
        s2 = reciprocal_s2(cell, hkl)
        ff = form_factors([contents.element, "C"], s2)
        n_ops = len(space_group_ops(sg))
        sigma_n = n_ops * (max(contents.n_heavy) * ff[0] ** 2 + contents.n_light * ff[1] ** 2)
        centric = np.asarray(sg.operations().centric_flag_array(hkl.astype(np.int32)), bool)
        return cls(hkl=hkl, amp=amp, e=normalise_amplitudes(hkl, amp, cell, sg),
                   cell=cell, sg=sg, shape=grid_for_chargeflip(cell, hkl, sg), centric=centric,
                   f_heavy=ff[0], f_light=ff[1], sigma_n=sigma_n, contents=contents)


@dataclass
class Trial:
    """One heavy-atom solution, completed."""

    heavy: np.ndarray  # (k, 3) fractional heavy-atom sites
    vector_score: float  # minimum-function value (Patterson r.m.s. units)
    cc: float = 0.0  # CC(|E_obs|, |E_calc|) of the completed model
    r: float = 1.0  # R on |E|
    phase: np.ndarray = field(default_factory=lambda: np.zeros(0, complex))  # unit numbers
    fom: np.ndarray = field(default_factory=lambda: np.zeros(0))  # Sim weights
    light: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    cycles: int = 0


def _model(job: _Job, heavy: np.ndarray, light: np.ndarray, occ: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Point-atom (B = 0) structure factors of the model and its share ``q`` of the
    scattering, per reflection."""
    n_ops = len(space_group_ops(job.sg))
    sites = np.concatenate([heavy, light]) if len(light) else heavy
    frac = symmetry_images(sites, job.sg).reshape(-1, 3)
    elements = ([job.contents.element] * len(heavy) + ["C"] * len(light)) * n_ops
    occupancy = np.tile(np.concatenate([np.ones(len(heavy)), occ]), n_ops)
    f = structure_factors(frac, elements, 0.0, job.cell, job.hkl, occupancy=occupancy)
    share = n_ops * (len(heavy) * job.f_heavy**2 + float(np.sum(occ**2)) * job.f_light**2)
    return f, np.clip(share / job.sigma_n, 0.01, 0.95)


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 0 and b.std() > 0 else 0.0


def _sim(job: _Job, f_calc: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Sim weights, phases (unit numbers) and CC(|E_obs|, |E_calc|) of a model."""
    e_calc = normalise_amplitudes(job.hkl, np.abs(f_calc), job.cell, job.sg)
    x = 2.0 * job.e * np.sqrt(q) * e_calc / (1.0 - q)
    m = np.where(job.centric, np.tanh(0.5 * x), bessel_ratio(x))
    return m, unit_phase(f_calc), _cc(job.e, e_calc)


def _light_atoms(job: _Job, heavy: np.ndarray, m: np.ndarray, phase: np.ndarray, n_take: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The strongest E-map peaks away from the heavy atoms, and their weights."""
    emap = density_map(job.hkl, m * job.e * phase, job.shape, job.cell.volume)
    pk = find_peaks(emap, job.cell, job.sg, n_max=n_take + 4 * len(heavy) + 8,
                    min_distance=settings.RECYCLE_PEAK_DISTANCE)
    if len(pk) == 0:
        return np.zeros((0, 3)), np.zeros(0)
    away = min_distances(pk.frac, heavy, job.cell, job.sg) > settings.PATT_HEAVY_LIGHT_DISTANCE
    frac, height = pk.frac[away][:n_take], pk.height[away][:n_take]
    if len(height) == 0:
        return frac, height
    return frac, np.clip(height / np.median(height), 0.3, 1.0)


def complete_structure(job: _Job, trial: Trial, cycles: int = settings.PATT_CYCLES) -> Trial:
    """Phases from the heavy atoms, then E-map peaks as light atoms, ``cycles`` times.

    The light-atom count ramps up to the expected one over
    :data:`~pattersolve.settings.PATT_RAMP_CYCLES`; the cycle whose model has the highest
    CC(|E_obs|, |E_calc|) is kept.
    """
    n_light = int(round(job.contents.n_light))
    light, occ = np.zeros((0, 3)), np.zeros(0)
    for cycle in range(cycles + 1):
        f_calc, q = _model(job, trial.heavy, light, occ)
        m, phase, cc = _sim(job, f_calc, q)
        if cycle == 0 or cc > trial.cc:
            trial.cc, trial.phase, trial.fom, trial.light = cc, phase, m, light
            trial.r = amplitude_residual(job.e, normalise_amplitudes(
                job.hkl, np.abs(f_calc), job.cell, job.sg))
        if cycle == cycles:
            break
        ramp = min(1.0, (cycle + 1) / settings.PATT_RAMP_CYCLES)
        light, occ = _light_atoms(job, trial.heavy, m, phase, max(1, round(ramp * n_light)))
        trial.cycles = cycle + 1
    return trial


# ---------------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------------
def _record(trial: Trial, kind: str) -> dict[str, Any]:
    return {"kind": kind, "sites": [[round(float(v), 4) for v in s] for s in trial.heavy],
            "vector_score": round(trial.vector_score, 2), "cc": round(trial.cc, 3),
            "r": round(trial.r, 3)}


def _trials(job: _Job, pmap: np.ndarray) -> tuple[Trial, list[dict[str, Any]]]:
    """Every trial heavy-atom solution completed in turn (stopping once one is clearly
    solved); the best by CC and a record of all."""
    best: Trial | None = None
    record = []
    for n_heavy in job.contents.n_heavy:
        for sites, score in locate_heavy_atoms(pmap, job.cell, job.sg, n_heavy):
            trial = complete_structure(job, Trial(heavy=sites, vector_score=score))
            record.append(_record(trial, "patterson"))
            log.info("patterson: %d heavy site(s), vector score %.2f -> CC %.3f, R(E) %.3f",
                     len(sites), score, trial.cc, trial.r)
            if best is None or trial.cc > best.cc:
                best = trial
            if best.cc >= settings.PATT_SOLVED_CC:
                return best, record
    if best is None:  # pragma: no cover - locate_heavy_atoms always returns a trial
        raise PattersolveError("the Patterson vector search found no heavy-atom site",
                               "use --method chargeflip or hybrid", ExitCode.INTERNAL)
    return best, record


def _decoys(job: _Job, best: Trial, seed: int, record: list[dict[str, Any]]) -> float:
    """The highest CC that the same completion reaches from heavy atoms at random sites.

    Peaks picked from a map that carries the measured amplitudes fit those amplitudes
    whatever the phases, the more so the fewer reflections per atom: a wrong model reaches
    CC 0.77 at 1.8 A in a small cell. The decoys measure that floor for these data.
    """
    rng = np.random.default_rng(seed)
    floor = -1.0
    for _ in range(settings.PATT_DECOYS):
        sites = rng.random(best.heavy.shape)
        trial = complete_structure(job, Trial(heavy=sites, vector_score=float("nan")))
        record.append(_record(trial, "decoy"))
        floor = max(floor, trial.cc)
    return floor


def _final_peaks(job: _Job, trial: Trial) -> Peaks:
    emap = density_map(job.hkl, trial.fom * job.e * trial.phase, job.shape, job.cell.volume)
    n = int(np.ceil(2 * (job.contents.n_light + max(job.contents.n_heavy))))
    return find_peaks(emap, job.cell, job.sg, n_max=n,
                      min_distance=settings.RECYCLE_PEAK_DISTANCE)


def _confidence(best: Trial, floor: float) -> tuple[bool, list[str]]:
    """Confident: CC at least PATT_CONFIDENT_CC and PATT_CONFIDENT_MARGIN above the decoys."""
    want = max(settings.PATT_CONFIDENT_CC, floor + settings.PATT_CONFIDENT_MARGIN)
    if best.cc >= want:
        return True, []
    return False, [f"the Patterson method found no convincing heavy-atom solution (CC(E) of "
                   f"the completed model {best.cc:.2f}, want >= {want:.2f}: at least "
                   f"{settings.PATT_CONFIDENT_CC} and {settings.PATT_CONFIDENT_MARGIN} above "
                   f"models grown from random sites, {floor:.2f}): treat the map as "
                   "unreliable"]


def solve_patterson(refl: Reflections, formula: Any = None, seed: int = 0) -> Any:
    """Heavy atoms from the Patterson, phases from them, completion by Fourier recycling.

    Parameters
    ----------
    refl
        The measured data (P1 half-sphere amplitudes, cell, space group).
    formula
        The chemical formula (``"Pd C20 H24 N2 O2"`` or a :class:`pattersolve.shelx.Formula`);
        None: the heavy element and count are estimated from the Patterson.
    seed
        Seeds the random heavy-atom sites of the decoys that measure the CC a wrong model
        reaches on these data (:data:`~pattersolve.settings.PATT_DECOYS`).

    Returns
    -------
    pattersolve.solve.Solution
        In the crystal's space group at its origin (``symmetric``); ``confident`` when the
        completed model's CC(|E_obs|, |E_calc|) reaches
        :data:`~pattersolve.settings.PATT_CONFIDENT_CC` and beats the decoys by
        :data:`~pattersolve.settings.PATT_CONFIDENT_MARGIN`; ``stages["patterson"]`` holds the
        heavy atoms found and every trial's score.
    """
    from .solve import _ARBITRARY, Solution, _hand

    t0 = time.perf_counter()
    ok = np.isfinite(refl.amplitude) & (refl.amplitude >= 0)
    if ok.sum() < 50:
        raise PattersolveError(f"only {int(ok.sum())} usable reflections for the Patterson "
                               "method", "give more data", ExitCode.DATA)
    hkl, amp, cell, sg = refl.hkl[ok], refl.amplitude[ok], refl.cell, refl.spacegroup
    d_min = float(np.min(refl.d[ok]))
    pshape = sampled_grid_shape(cell, hkl, d_min, settings.PATT_SAMPLE_RATE, grid_factors(sg))
    contents = heavy_contents(formula, hkl, amp, cell, sg, pshape)
    job = _Job.make(hkl, amp, cell, sg, contents)
    best, record = _trials(job, sharpened_patterson(hkl, amp, cell, sg, pshape))
    floor = _decoys(job, best, seed, record)
    confident, warnings = _confidence(best, floor)
    f = np.zeros(len(refl.hkl), dtype=np.complex128)
    fom = np.zeros(len(refl.hkl))
    f[ok], fom[ok] = amp * best.phase, best.fom
    stage = {"heavy_element": contents.element, "basis": contents.basis,
             "heavy_sites": [[round(float(v), 4) for v in s] for s in best.heavy],
             "vector_score": round(best.vector_score, 2), "cc": round(best.cc, 3),
             "decoy_cc": round(floor, 3), "r_e": round(best.r, 3),
             "light_atoms": len(best.light), "cycles": best.cycles,
             "threshold_cc": settings.PATT_CONFIDENT_CC,
             "margin": settings.PATT_CONFIDENT_MARGIN, "trials": record,
             "patterson_grid": list(pshape), "seconds": round(time.perf_counter() - t0, 3)}
    log.info("patterson: %s at %s, CC %.3f (decoys %.3f), %s, %.2f s", contents.element,
             stage["heavy_sites"], best.cc, floor, "confident" if confident else
             "NOT confident", stage["seconds"])
    return Solution(f=f, fom=fom, density=density_map(refl.hkl, fom * f, job.shape, cell.volume),
                    shape=job.shape, method="patterson",
                    stages={"patterson": stage, "hand": _hand(refl, "arbitrary", _ARBITRARY)},
                    symmetric=True, confident=confident, warnings=warnings,
                    peaks=_final_peaks(job, best))
