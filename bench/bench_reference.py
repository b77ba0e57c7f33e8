"""A plain projection recipe for packed cells, beside pattersolve's default, map by map.

The reference recipe (issue 29), its own small implementation on pattersolve's Fourier
building blocks (:mod:`pattersolve.fourier`), no network:

* grid spacing ``min(0.5, d_min / 3)`` A (a grid that holds every index);
* ``F(000)`` estimated once as the constant that makes the ``F000``-free Patterson
  non-negative (:func:`pattersolve.fourier.estimate_f000_sq`), then held fixed in the Fourier
  projection;
* support: the Patterson (with that ``F000``) above 0.05 of its maximum, re-centred at the
  cell centre (the grid rolled by half its size);
* RAAR (``beta`` 0.9) for 600 iterations with positivity + support; shrink-wrap every 20
  iterations from iteration 50 (Gaussian blur sigma from 1.5 to 0.7 A, geometric; support =
  blurred density above 0.15 of its maximum); then 50 error-reduction iterations;
* the Fourier projection puts the measured amplitude on each measured reflection (its
  current phase kept), ``F(000)`` fixed, everything else 0;
* three random starts, the lowest amplitude residual ``R`` kept.

Beside it on the same maps: pattersolve's default (``--method hybrid``, the packed-cell model
hard-tri) and ``--method classical`` (refinement from random phases), both through
:func:`pattersolve.solve.solve` with bench_phasing's settings (4 starts x 300 cycles, seed =
map index). The maps are exactly bench_phasing's hard regime (tripeptides in random
orientation, one per orthorhombic P1 cell of its extent + 2.5 A, 2.5 A data, B 15 A^2), with
``--noise`` Gaussian amplitude noise (0.1: bench_phasing's hard-noise maps). Scores come from
:func:`pattersolve.phasematch.match_phases` (best origin shift and hand).

The paired table gives default minus reference (and minus classical) on the same maps: the
change in the fraction of maps < 15 and < 30 deg and the median per-map change in weighted
error, each with a 95 % bootstrap interval (maps resampled jointly, the training tree's one
helper, ``pattersolve_train.stats.bootstrap_interval``, as bench_phasing uses it).

    python bench/bench_reference.py [--n 100] [--noise 0.1] [--split test]
        [--methods reference,default,classical] [--json bench/results/reference.json]
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_phasing import REGIMES, bench_arguments, cell_grid, fragments, make_data  # noqa: E402

from pattersolve import settings  # noqa: E402
from pattersolve.fourier import (  # noqa: E402
    HalfGrid,
    estimate_f000_sq,
    patterson_map,
    reciprocal_s2,
    sampled_grid_shape,
)
from pattersolve.phases import amplitude_residual  # noqa: E402

METHODS = ("reference", "default", "classical")


@dataclass(frozen=True)
class Recipe:
    """The reference recipe's settings (the defaults are the issue's)."""

    spacing: float = 0.5  # A, at most; d_min / 3 when finer
    patterson_threshold: float = 0.05
    beta: float = 0.9
    iterations: int = 600
    er_iterations: int = 50
    shrinkwrap_every: int = 20
    shrinkwrap_from: int = 50
    blur_start: float = 1.5
    blur_end: float = 0.7
    shrinkwrap_threshold: float = 0.15
    starts: int = 3
    geometric_blur: bool = True  # False: linear from blur_start to blur_end
    beta_end: float | None = None  # RAAR beta falls linearly to this (None: constant) ...
    anneal_from: int = 0  # ... from this iteration on


class _Reference:
    """One data set's Fourier projection, blur and support on the rfft half grid."""

    def __init__(self, hkl: np.ndarray, amp: np.ndarray, cell, shape: tuple[int, int, int],
                 f000: float, tol: np.ndarray | None = None) -> None:
        self.shape = shape
        self.volume = float(cell.volume)
        self.scale = float(np.prod(shape)) / self.volume  # rfftn(rho) = N/V conj(F)
        self.grid = HalfGrid(hkl, shape)
        self.meas = np.abs(self.grid.scatter(np.ones(len(hkl)))) > 0
        self.target = np.abs(self.grid.scatter(amp)) * self.scale
        self.g000 = f000 * self.scale
        # amplitudes met within tol (0: exactly; the reference recipe)
        self.tol = None if tol is None or not np.any(tol > 0) else \
            np.abs(self.grid.scatter(tol)) * self.scale
        self.s2 = reciprocal_s2(cell, self.grid.grid_hkl.reshape(-1, 3)).reshape(
            self.grid.rshape)

    def project_amplitudes(self, x: np.ndarray) -> np.ndarray:
        g = np.fft.rfftn(x)
        mag = np.abs(g)
        new = self.target if self.tol is None else np.clip(
            mag, np.maximum(self.target - self.tol, 0.0), self.target + self.tol)
        g = np.where(self.meas, new * g / np.where(mag > 0, mag, 1.0), 0.0)
        g[0, 0, 0] = self.g000
        return np.fft.irfftn(g, s=self.shape, axes=(0, 1, 2))

    def start(self, f: np.ndarray) -> np.ndarray:
        """The map of ``f`` on the input reflections with the fixed ``F(000)``."""
        g = self.grid.scatter(f) * self.scale
        g[0, 0, 0] = self.g000
        return np.fft.irfftn(g, s=self.shape, axes=(0, 1, 2))

    def blur(self, x: np.ndarray, sigma: float) -> np.ndarray:
        g = np.fft.rfftn(x) * np.exp(-2.0 * np.pi**2 * sigma**2 * self.s2)
        return np.fft.irfftn(g, s=self.shape, axes=(0, 1, 2))

    def model_f(self, x: np.ndarray) -> np.ndarray:
        """``F`` on the input reflections of a map ``x``."""
        return np.conj(self.grid.gather(np.fft.rfftn(x))) / self.scale


def _one_start(ref: _Reference, x: np.ndarray, support: np.ndarray, recipe: Recipe
               ) -> np.ndarray:
    """RAAR + shrink-wrap, then error reduction, from ``x``; the constrained density."""
    updates = list(range(recipe.shrinkwrap_from, recipe.iterations, recipe.shrinkwrap_every))
    a, b, last = recipe.blur_start, recipe.blur_end, max(1, len(updates) - 1)
    blurs = {it: a * (b / a) ** (i / last) if recipe.geometric_blur else a + (b - a) * i / last
             for i, it in enumerate(updates)}
    b0 = recipe.beta
    b1 = b0 if recipe.beta_end is None else recipe.beta_end
    for it in range(recipe.iterations):
        done = max(0, it - recipe.anneal_from) / max(1, recipe.iterations - 1 - recipe.anneal_from)
        beta = b0 + (b1 - b0) * done
        p = ref.project_amplitudes(x)
        ok = support & (2.0 * p - x > 0)
        x = np.where(ok, p, beta * x + (1.0 - 2.0 * beta) * p)
        if it in blurs:
            blurred = ref.blur(np.where(support & (p > 0), p, 0.0), blurs[it])
            support = blurred > recipe.shrinkwrap_threshold * blurred.max()
    for _ in range(recipe.er_iterations + 1):
        p = ref.project_amplitudes(x)
        x = np.where(support & (p > 0), p, 0.0)
    return x


def reference_grid(refl, spacing: float) -> tuple[int, int, int]:
    """Grid of spacing ``min(spacing, d_min / 3)`` that holds every index of the data."""
    step = min(spacing, refl.d_min / 3.0)
    return sampled_grid_shape(refl.cell, refl.hkl, refl.d_min, refl.d_min / step)


def reference_phases(refl, seed: int, recipe: Recipe = Recipe()) -> tuple[np.ndarray, dict]:
    """The reference recipe on P1 data: complex ``F`` (measured amplitude x phase) and facts."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    hkl, amp = refl.hkl, refl.amplitude
    shape = reference_grid(refl, recipe.spacing)
    volume = float(refl.cell.volume)
    f000 = float(np.sqrt(estimate_f000_sq(hkl, amp**2, shape, volume)))
    pat = patterson_map(hkl, amp**2, shape, volume, f000**2)
    support0 = np.roll(pat > recipe.patterson_threshold * pat.max(),
                       [n // 2 for n in shape], axis=(0, 1, 2))
    ref = _Reference(hkl, amp, refl.cell, shape, f000)
    best: tuple[float, np.ndarray] | None = None
    residuals = []
    for _ in range(recipe.starts):
        x0 = ref.start(amp * np.exp(1j * rng.uniform(-np.pi, np.pi, len(hkl))))
        x = _one_start(ref, x0, support0.copy(), recipe)
        f_model = ref.model_f(x)
        r = amplitude_residual(amp, f_model)
        residuals.append(r)
        if best is None or r < best[0]:
            best = (r, f_model)
    assert best is not None
    f = amp * np.exp(1j * np.angle(best[1]))
    return f, {"grid": list(shape), "f000": f000, "support_fraction": float(support0.mean()),
               "residuals": residuals, "residual": best[0],
               "seconds": time.perf_counter() - t0}


def _predictor():
    from pattersolve.runtime import Predictor, list_models

    models = {m.name: m for m in list_models()}
    if "hard-tri" not in models:
        raise SystemExit("the hard-tri model is not installed: the default needs it")
    return Predictor(models["hard-tri"], backend="auto", device="cpu", threads=1)


def run(n: int, noise: float, seed: int, split: str, methods: tuple[str, ...],
        recipe: Recipe = Recipe(), log: bool = True) -> dict:
    """Every method on ``n`` maps of the hard regime with ``noise``; per-map rows."""
    from pattersolve.phasematch import match_phases
    from pattersolve.solve import solve

    regime = replace(REGIMES["hard"], noise=noise)
    predictor = _predictor() if "default" in methods else None
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    rng = np.random.default_rng(seed)
    for k, frag in enumerate(fragments(regime, n, seed, split)):
        refl, f_true = make_data(regime, frag, rng)
        for method in methods:
            t0 = time.perf_counter()
            extra: dict = {}
            if method == "reference":
                f, extra = reference_phases(refl, k, recipe)
            else:
                sol = solve(refl, cell_grid(refl), "hybrid" if method == "default" else method,
                            predictor=predictor, seed=k)
                f = sol.f
                extra = {"residual": sol.stages["refinement"]["amplitude_residual_final"]}
            m = match_phases(refl.hkl, f_true, f, refl.cell)
            rows[method].append({"weighted": m.weighted_error, "cc": m.map_cc,
                                 "seconds": time.perf_counter() - t0, "source": frag.source,
                                 "residual": extra.get("residual")})
        if log:
            print(f"# map {k}: " + ", ".join(f"{m} {rows[m][-1]['weighted']:.1f}"
                                             for m in methods), flush=True)
    return {"noise": noise, "split": split, "seed": seed, "n": n, "recipe": asdict(recipe),
            "maps": rows}


def summary_table(results: list[dict]) -> str:
    lines = ["| noise | method | maps | median err w (deg) | < 15 | < 30 | < 60 | median CC | "
             "s/map |", "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for method, rs in res["maps"].items():
            w = np.array([r["weighted"] for r in rs])
            lines.append(f"| {res['noise']:.2f} | {method} | {len(w)} | {np.median(w):.1f} | "
                         f"{(w < 15).mean():.2f} | {(w < 30).mean():.2f} | "
                         f"{(w < 60).mean():.2f} | "
                         f"{np.median([r['cc'] for r in rs]):.3f} | "
                         f"{np.median([r['seconds'] for r in rs]):.2f} |")
    return "\n".join(lines)


def paired_rows(label: str, a_name: str, a: np.ndarray, b_name: str, b: np.ndarray
                ) -> str:
    """One row: ``a`` minus ``b`` (weighted errors per map) with 95 % bootstrap intervals."""
    from pattersolve_train.stats import bootstrap_interval

    cells = []
    for t in (15, 30):
        d = (a < t).astype(float) - (b < t).astype(float)
        lo, hi = bootstrap_interval(lambda idx, d=d: d[idx].mean(axis=1), len(a))
        cells.append(f"{d.mean():+.2f} ({lo:+.2f} to {hi:+.2f})")
    diff = a - b
    lo, hi = bootstrap_interval(lambda idx: np.median(diff[idx], axis=1), len(a))
    cells.append(f"{np.median(diff):+.1f} ({lo:+.1f} to {hi:+.1f})")
    return (f"| {label} | {a_name} - {b_name} | {len(a)} | {' | '.join(cells)} | "
            f"{int((a < b - 5).sum())} | {int((b < a - 5).sum())} |")


def paired_table(results: list[dict]) -> str:
    lines = ["| noise | pair | maps | < 15 (95 %) | < 30 (95 %) | median per-map change in "
             "err w, deg (95 %) | first better by > 5 deg | second better by > 5 deg |",
             "|---|---|---|---|---|---|---|---|"]
    pairs = (("default", "reference"), ("default", "classical"), ("classical", "reference"))
    for res in results:
        maps = res["maps"]
        for a, b in pairs:
            if a in maps and b in maps:
                wa = np.array([r["weighted"] for r in maps[a]])
                wb = np.array([r["weighted"] for r in maps[b]])
                lines.append(paired_rows(f"{res['noise']:.2f}", a, wa, b, wb))
    return "\n".join(lines) if len(lines) > 2 else ""


def against_table(results: list[dict], before_path: str) -> str:
    """This run's methods minus the same methods of an earlier run (``--json`` of this bench,
    e.g. made with the code before a change) on the same maps, paired."""
    import json

    before = {round(r["noise"], 6): r for r in json.loads(Path(before_path).read_text())}
    lines = [f"Against {before_path} (same maps; now minus before):", "",
             "| noise | pair | maps | < 15 (95 %) | < 30 (95 %) | median per-map change in "
             "err w, deg (95 %) | now better by > 5 deg | before better by > 5 deg |",
             "|---|---|---|---|---|---|---|---|"]
    for res in results:
        old = before.get(round(res["noise"], 6))
        if old is None or (old["n"], old["seed"], old["split"]) != (res["n"], res["seed"],
                                                                    res["split"]):
            continue
        for method, rows in res["maps"].items():
            if method in old["maps"]:
                a = np.array([r["weighted"] for r in rows])
                b = np.array([r["weighted"] for r in old["maps"][method]])
                lines.append(paired_rows(f"{res['noise']:.2f}", f"{method} now", a, "before", b))
    return "\n".join(lines) if len(lines) > 4 else ""


def phasing_pair_table(before_path: str, now_path: str) -> str:
    """Paired table of two ``bench_phasing.py --json`` runs on the same maps (now minus
    before, per regime and method): the other regimes' check for a change to the default."""
    import json

    before = {r["regime"]["name"]: r for r in json.loads(Path(before_path).read_text())}
    lines = [f"{now_path} minus {before_path} (bench_phasing.py, same maps):", "",
             "| regime | pair | maps | < 15 (95 %) | < 30 (95 %) | median per-map change in "
             "err w, deg (95 %) | now better by > 5 deg | before better by > 5 deg |",
             "|---|---|---|---|---|---|---|---|"]
    for res in json.loads(Path(now_path).read_text()):
        old = before.get(res["regime"]["name"])
        for method in ("classical", "hybrid"):
            if old is None or method not in res["maps"] or method not in old["maps"]:
                continue
            a = np.array([r["weighted"] for r in res["maps"][method]])
            b = np.array([r["weighted"] for r in old["maps"][method]])
            same = [r["source"] for r in res["maps"][method]] == [
                r["source"] for r in old["maps"][method]]
            if not same:
                lines.append(f"| {res['regime']['name']} | {method}: not the same maps | | | | "
                             "| | |")
            else:
                lines.append(paired_rows(res["regime"]["name"], f"{method} now", a, "before", b))
    return "\n".join(lines)


#: --ablate: pattersolve's classical refinement with one shipped setting at a time put back to
#: its value before issue 29 (module constants of pattersolve.refine, and the cycles).
ABLATIONS: dict[str, dict] = {
    "shipped": {},
    "k sigma 1": {"REFINE_SIGMA_K": 1.0},
    "F000 follows support": {"REFINE_ADAPT_F000": True},
    "shrink-wrap 0.12, blur to 0.8": {"REFINE_SHRINKWRAP_THRESHOLD": 0.12,
                                      "REFINE_BLUR_END": 0.8},
    "300 cycles": {"cycles": 300},
    "beta constant": {"REFINE_ANNEAL_FRACTION": 0.0},
    "all as before": {"REFINE_SIGMA_K": 1.0, "REFINE_ADAPT_F000": True,
                      "REFINE_SHRINKWRAP_THRESHOLD": 0.12, "REFINE_BLUR_END": 0.8,
                      "cycles": 300, "REFINE_ANNEAL_FRACTION": 0.0},
}


def _classical_with(refl, k: int, patch: dict) -> np.ndarray:
    import pattersolve.refine as refine
    from pattersolve.solve import solve

    patch = dict(patch)
    cycles = patch.pop("cycles", None)
    saved = {name: getattr(refine, name) for name in patch}
    try:
        for name, value in patch.items():
            setattr(refine, name, value)
        kw = {} if cycles is None else {"cycles": cycles}
        return solve(refl, cell_grid(refl), "classical", seed=k, **kw).f
    finally:
        for name, value in saved.items():
            setattr(refine, name, value)


def ablate(n: int, noise: float, seed: int, split: str) -> str:
    """Classical refinement with each of :data:`ABLATIONS` on the same maps: a table."""
    from pattersolve.phasematch import match_phases

    regime = replace(REGIMES["hard"], noise=noise)
    rng = np.random.default_rng(seed)
    errs: dict[str, list[float]] = {name: [] for name in ABLATIONS}
    for k, frag in enumerate(fragments(regime, n, seed, split)):
        refl, f_true = make_data(regime, frag, rng)
        for name, patch in ABLATIONS.items():
            f = _classical_with(refl, k, patch)
            errs[name].append(match_phases(refl.hkl, f_true, f, refl.cell).weighted_error)
    base = np.array(errs["shipped"])
    from pattersolve_train.stats import bootstrap_interval

    lines = [f"| classical, noise {noise:.2f} | maps | mean err w | median | < 30 | mean change "
             "against shipped (95 %) |", "|---|---|---|---|---|---|"]

    for name, e in errs.items():
        w = np.array(e)
        d = w - base
        lo, hi = bootstrap_interval(lambda idx, d=d: d[idx].mean(axis=1), len(d))
        lines.append(f"| {name} | {len(w)} | {w.mean():.1f} | {np.median(w):.1f} | "
                     f"{(w < 30).mean():.2f} | {d.mean():+.1f} ({lo:+.1f} to {hi:+.1f}) |")
    return "\n".join(lines)


def floor(n: int, noise: float, seed: int, split: str) -> str:
    """From the true phases, with a support from the true map (blur 0.7 A, 0.15 of the
    maximum): where each way of iterating ends (the reference implementation, 0.5 A grid)."""
    from pattersolve.phasematch import match_phases

    regime = replace(REGIMES["hard"], noise=noise)
    rng = np.random.default_rng(seed)
    ways = {"ER 200, exact": (0.0, Recipe(iterations=0, er_iterations=200)),
            "ER 200, within 1 sigma": (1.0, Recipe(iterations=0, er_iterations=200)),
            "RAAR 300 beta 0.9 + ER 50": (0.0, Recipe(iterations=300)),
            "RAAR 300 beta 0.5 + ER 50": (0.0, Recipe(iterations=300, beta=0.5)),
            "RAAR 300 beta 0.9 falling to 0.5 over the last 75 + ER 50":
                (0.0, Recipe(iterations=300, beta_end=0.5, anneal_from=225))}
    errs: dict[str, list[float]] = {w: [] for w in ways}
    for _, frag in enumerate(fragments(regime, n, seed, split)):
        refl, f_true = make_data(regime, frag, rng)
        shape = reference_grid(refl, 0.5)
        volume = float(refl.cell.volume)
        f000 = float(np.sqrt(estimate_f000_sq(refl.hkl, refl.amplitude**2, shape, volume)))
        for way, (k, recipe) in ways.items():
            ref = _Reference(refl.hkl, refl.amplitude, refl.cell, shape, f000,
                             tol=k * refl.sigma)
            true = ref.start(np.abs(f_true) * np.exp(1j * np.angle(f_true)))
            blurred = ref.blur(np.maximum(true, 0.0), 0.7)
            x = _one_start(ref, ref.start(refl.amplitude * np.exp(1j * np.angle(f_true))),
                           blurred > 0.15 * blurred.max(), recipe)
            f = refl.amplitude * np.exp(1j * np.angle(ref.model_f(x)))
            errs[way].append(match_phases(refl.hkl, f_true, f, refl.cell).weighted_error)
    lines = [f"| from the true phases, noise {noise:.2f} | maps | mean err w | max |",
             "|---|---|---|---|"]
    lines += [f"| {w} | {len(e)} | {np.mean(e):.1f} | {np.max(e):.1f} |" for w, e in errs.items()]
    return "\n".join(lines)


def main() -> None:
    from bench_phasing import report

    ap = bench_arguments(__doc__, 100)
    ap.add_argument("--noise", default="0.1,0",
                    help="amplitude noise levels, comma-separated (0.1: hard-noise)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--iterations", type=int, default=Recipe.iterations,
                    help="reference RAAR iterations")
    ap.add_argument("--starts", type=int, default=Recipe.starts, help="reference starts")
    ap.add_argument("--against", help="an earlier --json of this bench: paired table of each "
                    "method now minus then on the same maps")
    ap.add_argument("--ablate", action="store_true",
                    help="only the classical ablation table and the from-the-truth table "
                    "(use --split val)")
    ap.add_argument("--phasing-pair", nargs=2, metavar=("BEFORE", "NOW"),
                    help="only print the paired table of two bench_phasing.py --json files")
    args = ap.parse_args()
    if args.phasing_pair:
        print(phasing_pair_table(*args.phasing_pair))
        return
    if args.ablate:
        for noise in (float(x) for x in args.noise.split(",")):
            print(floor(min(args.n, 10), noise, args.seed, args.split) + "\n", flush=True)
            print(ablate(args.n, noise, args.seed, args.split) + "\n", flush=True)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    recipe = Recipe(iterations=args.iterations, starts=args.starts)
    results = []
    for noise in (float(x) for x in args.noise.split(",")):
        t0 = time.perf_counter()
        results.append(run(args.n, noise, args.seed, args.split, methods, recipe))
        print(f"# noise {noise}: {time.perf_counter() - t0:.0f} s", flush=True)
    report(f"{args.n} {args.split}-split hard-regime maps per noise level, seed {args.seed}; "
           f"reference {recipe.starts} starts x {recipe.iterations} + {recipe.er_iterations} "
           f"ER; default and classical {settings.DEFAULT_STARTS} starts x "
           f"{settings.DEFAULT_CYCLES} cycles",
           summary_table(results) + "\n\n" + paired_table(results)
           + (f"\n\n{against_table(results, args.against)}" if args.against else ""),
           results, args.json_out,
           None, lambda *_: None)


if __name__ == "__main__":
    main()
