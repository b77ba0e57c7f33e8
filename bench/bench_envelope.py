"""What the hard regime's "true-envelope bound" asks of a support: refinement against its precision.

PHASING_NOTES.md and the hard-regime target quote an oracle: RAAR with the true envelope (1.6 A
spheres on the true atoms) as a fixed support solves every packed cell. This bench measures how
fast that bound falls as the envelope gets less precise, and where a support taken from the
shipped network's prediction stands, on the same maps:

* ``classical``: random phases, Patterson support + shrink-wrap (``pattersolve --method
  classical``);
* ``hybrid``: the shipped network + refinement (``--method hybrid``);
* ``envelope r``: a fixed support of spheres of radius ``r`` on the true atoms
  (:func:`pattersolve.simulate.envelope_mask`; ``refine_phases(support=...)``), random phases;
* ``envelope 1.6, atoms moved d``: 1.6 A spheres on atoms each moved at random by ``d`` A
  (r.m.s. per axis), the envelope of a model that places atoms that well;
* ``envelope r + inverse``: the same united with its image through the molecule's centre (the
  envelope of a prediction that hedges between the two hands);
* ``envelope r, then shrink-wrap``: the envelope as the first support only
  (``fix_support=False``);
* ``network support f``: the prediction's (on the cell grid) top fraction of the cell, ``f``
  times the packing estimated from F000 (:func:`pattersolve.refine.packing_estimate`), fixed,
  starting from the prediction's phases (every start RAAR).
* ``Patterson superposition f``: the classical image-seeking support. The Patterson
  (sharpened: normalised ``E^2`` in 10 shells, ``B = 10 A^2`` taper) is shifted by its highest
  non-origin peak ``u`` (sub-grid, by a Fourier phase ramp) and the minimum function
  ``min(P(x), P(x - u))`` kept: for point atoms it holds the structure and its inverse image
  (the hedged envelope of the rows above). Its top ``f`` x packing of the cell is the fixed
  support (or the first one, ``then shrink-wrap``), random phases. Its image sits at an
  origin of its own, so its recall is the best over all origin shifts.
* ``envelope 1.6 on the peaks of m``: atomicity from a map instead of the truth: 1.6 A spheres
  on the highest peaks (:func:`pattersolve.peaks.find_peaks`, as many as the fragment has
  atoms, an oracle count) of the prediction or of the hybrid's refined map, fixed, starting
  from that map's phases. Every start is RAAR and the best refined start is scored (the
  unrefined map would otherwise win on amplitude residual, since the refined map fits the
  amplitudes exactly).

Every row: 4 starts x 300 cycles, the start chosen by amplitude residual, scored against the
truth after origin and hand. For supports the table also gives the fraction of the cell they
cover and their recall of the 1.6 A envelope (of the better hand). Maps: the hard regime of
``bench_phasing.py`` (tripeptides of test-split entries, random orientation, packed P1 cells of
edges extent + 2.5 A, 2.5 A data, 2 % sigmas).

    python bench/bench_envelope.py [--n 30] [--split test] [--seed 0]
        [--json bench/results/envelope.json] [--plot bench/results/envelope.png]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import gemmi
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_phasing import (  # noqa: E402
    REGIMES,
    bench_arguments,
    cell_grid,
    fragments,
    make_placed_data,
    report,
)

STARTS, CYCLES = 4, 300
RADII = (1.6, 2.0, 2.5, 3.0)
DISPLACED = (0.3, 0.6)  # r.m.s. displacement (A, per axis) of the atoms a 1.6 A envelope is cut on
HEDGED = (1.6, 2.0)
SHRINKWRAP_FROM = (2.0,)
NETWORK_FACTORS = (1.0, 1.5)
PEAK_SOURCES = ("prediction", "hybrid")
SUPERPOSITION_FACTORS = (1.6, 2.2)  # support = this x packing (the minimum function holds two
#                                     images of the molecule, so more than 1x)
SHARPEN_B = 10.0


def superposition_minimum(hkl: np.ndarray, amplitude: np.ndarray, cell: gemmi.UnitCell,
                          shape: tuple[int, int, int]) -> np.ndarray:
    """min(P(x), P(x - u)) of the sharpened Patterson, u its highest non-origin peak."""
    from pattersolve.fourier import d_spacings, patterson_map
    from pattersolve.peaks import find_peaks

    i = amplitude.astype(np.float64) ** 2
    d = d_spacings(cell, hkl)
    e2 = np.empty_like(i)
    for chunk in np.array_split(np.argsort(d), 10):
        e2[chunk] = i[chunk] / i[chunk].mean()
    pat = patterson_map(hkl, e2 * np.exp(-SHARPEN_B / (4 * d**2)), shape, cell.volume)
    peaks = find_peaks(pat, cell, n_max=12, min_distance=1.2)
    wrapped = (peaks.frac + 0.5) % 1.0 - 0.5
    dist = np.array([cell.orthogonalize(gemmi.Fractional(*f)).length() for f in wrapped])
    u = peaks.frac[np.argmax(dist > 1.2)]
    k = [np.fft.fftfreq(n) * n for n in shape]
    ramp = np.exp(-2j * np.pi * (k[0][:, None, None] * u[0] + k[1][None, :, None] * u[1]
                                 + k[2][None, None, :] * u[2]))
    shifted = np.fft.ifftn(np.fft.fftn(pat) * ramp).real
    return np.minimum(pat, shifted)


def _rows() -> list[str]:
    return (["classical", "hybrid"] + [f"envelope {r}" for r in RADII]
            + [f"envelope 1.6, atoms moved {d}" for d in DISPLACED]
            + [f"envelope {r} + inverse" for r in HEDGED]
            + [f"envelope {r}, then shrink-wrap" for r in SHRINKWRAP_FROM]
            + [f"network support {f}" for f in NETWORK_FACTORS]
            + [f"Patterson superposition {f}" for f in SUPERPOSITION_FACTORS]
            + [f"Patterson superposition {SUPERPOSITION_FACTORS[0]}, then shrink-wrap"]
            + [f"envelope 1.6 on the peaks of the {m}" for m in PEAK_SOURCES])


def run(n: int, split: str, seed: int) -> dict:
    from pattersolve.fourier import density_map, estimate_f000_sq
    from pattersolve.peaks import find_peaks
    from pattersolve.phasematch import match_phases
    from pattersolve.refine import packing_estimate, refine_phases
    from pattersolve.runtime import Predictor, list_models
    from pattersolve.simulate import envelope_mask
    from pattersolve.solve import predict

    regime = REGIMES["hard"]
    models = {m.name: m for m in list_models()}
    if regime.model not in models:
        raise SystemExit(f"no model {regime.model}")
    predictor = Predictor(models[regime.model], backend="auto", device="cpu", threads=1)
    rng = np.random.default_rng(seed)
    maps = []
    for k, frag in enumerate(fragments(regime, n, seed, split)):
        refl, f_true, placement = make_placed_data(regime, frag, rng)
        shape = cell_grid(refl)
        hkl, cell, amp = refl.hkl, refl.cell, refl.amplitude
        frac = placement.frac
        centre = (frac.max(0) + frac.min(0)) / 2.0
        truth = envelope_mask(cell, frac, shape, 1.6)
        truth_inv = envelope_mask(cell, 2.0 * centre - frac, shape, 1.6)

        def refine(support=None, start=None, fix=True, k=k, refl=refl, shape=shape):
            return refine_phases(refl.hkl, refl.amplitude, refl.cell, shape, sigma=refl.sigma,
                                 start_density=start, support=support, fix_support=fix,
                                 n_starts=STARTS, cycles=CYCLES, rng=np.random.default_rng(k))

        def score(support: np.ndarray | None, any_origin: bool = False, truth=truth,
                  truth_inv=truth_inv) -> dict:
            if support is None:
                return {}
            if any_origin:  # best over every origin shift (FFT cross-correlation of the masks)
                fs = np.fft.fftn(support.astype(float))
                recall = max(np.fft.ifftn(fs * np.conj(np.fft.fftn(t.astype(float)))).real.max()
                             for t in (truth, truth_inv)) / truth.sum()
            else:
                recall = max((support & truth).sum(), (support & truth_inv).sum()) / truth.sum()
            return {"fraction": float(support.mean()), "recall": float(recall)}

        pred = predict(refl, predictor)
        start = density_map(hkl, np.where(pred.covered, pred.f, 0), shape, cell.volume)
        f000 = float(np.sqrt(estimate_f000_sq(hkl, amp**2, shape, cell.volume)))
        packing = packing_estimate(f000, cell.volume)
        runs: dict[str, dict] = {"classical": {}, "hybrid": {"start": start}}
        for r in RADII:
            runs[f"envelope {r}"] = {"support": envelope_mask(cell, frac, shape, r)}
        for d in DISPLACED:
            moved = placement.cart + np.random.default_rng([seed, k, 7]).normal(
                0.0, d, placement.cart.shape)
            frac_moved = np.array([cell.fractionalize(gemmi.Position(*c)).tolist()
                                   for c in moved])
            runs[f"envelope 1.6, atoms moved {d}"] = {
                "support": envelope_mask(cell, frac_moved, shape, 1.6)}
        for r in HEDGED:
            env = (envelope_mask(cell, frac, shape, r)
                   | envelope_mask(cell, 2.0 * centre - frac, shape, r))
            runs[f"envelope {r} + inverse"] = {"support": env}
        for r in SHRINKWRAP_FROM:
            runs[f"envelope {r}, then shrink-wrap"] = {
                "support": envelope_mask(cell, frac, shape, r), "fix": False}
        for fac in NETWORK_FACTORS:
            q = min(0.95, fac * packing)
            runs[f"network support {fac}"] = {
                "support": start > np.quantile(start, 1.0 - q), "start": start}
        smin = superposition_minimum(hkl, amp, cell, shape)
        for fac in SUPERPOSITION_FACTORS:
            q = min(0.95, fac * packing)
            runs[f"Patterson superposition {fac}"] = {
                "support": smin > np.quantile(smin, 1.0 - q)}
        q = min(0.95, SUPERPOSITION_FACTORS[0] * packing)
        runs[f"Patterson superposition {SUPERPOSITION_FACTORS[0]}, then shrink-wrap"] = {
            "support": smin > np.quantile(smin, 1.0 - q), "fix": False}
        row: dict = {"source": frag.source, "packing_estimate": packing,
                     "true_fraction": float(truth.mean())}
        for name, kw in runs.items():
            res = refine(**kw)
            if name == "hybrid":
                hybrid_map = res.density
            row[name] = {"error": match_phases(hkl, f_true, res.f, cell).weighted_error,
                         **score(kw.get("support"), name.startswith("Patterson"))}
        for m, rho in zip(PEAK_SOURCES, (start, hybrid_map), strict=True):
            peaks = find_peaks(rho, cell, n_max=len(frac), min_distance=1.0)
            env = envelope_mask(cell, peaks.frac, shape, 1.6)
            res = refine(support=env, start=rho)
            best = int(np.argmin([st["residual"] for st in res.starts]))
            row[f"envelope 1.6 on the peaks of the {m}"] = {
                "error": match_phases(hkl, f_true, res.f_starts[best], cell).weighted_error,
                "peaks_per_atom": len(peaks) / len(frac), **score(env)}
        maps.append(row)
        print(f"{k + 1}/{n} {frag.source}: " + ", ".join(
            f"{name} {row[name]['error']:.0f}" for name in _rows()), flush=True)
    return summarise(maps)


def summarise(maps: list[dict]) -> dict:
    rows = {}
    for name in _rows():
        e = np.array([m[name]["error"] for m in maps])
        r = {"median": float(np.median(e)), "under_15": float((e < 15).mean()),
             "under_30": float((e < 30).mean())}
        if "fraction" in maps[0][name]:
            r["fraction"] = float(np.mean([m[name]["fraction"] for m in maps]))
            r["recall"] = float(np.mean([m[name]["recall"] for m in maps]))
        if "peaks_per_atom" in maps[0][name]:
            r["peaks_per_atom"] = float(np.mean([m[name]["peaks_per_atom"] for m in maps]))
        rows[name] = r
    return {"n": len(maps), "rows": rows, "maps": maps,
            "true_fraction": float(np.mean([m["true_fraction"] for m in maps])),
            "packing_estimate": float(np.mean([m["packing_estimate"] for m in maps]))}


def table(s: dict) -> str:
    lines = ["| support | cell fraction | recall of the 1.6 A envelope | median error (deg) "
             "| < 15 | < 30 |", "|---" * 6 + "|"]
    for name, r in s["rows"].items():
        frac = f"{r['fraction']:.2f}" if "fraction" in r else "-"
        rec = f"{r['recall']:.2f}" if "recall" in r else "-"
        lines.append(f"| {name} | {frac} | {rec} | {r['median']:.1f} | {r['under_15']:.2f} | "
                     f"{r['under_30']:.2f} |")
    for name, r in s["rows"].items():
        if "peaks_per_atom" in r:
            lines.append(f"\n{name}: {r['peaks_per_atom']:.2f} peaks (>= 1.0 A apart) found "
                         "per atom.")
    lines.append(f"\nTrue 1.6 A envelope: {s['true_fraction']:.2f} of the cell; packing "
                 f"estimated from F000: {s['packing_estimate']:.2f}.")
    return "\n".join(lines)


def plot(s: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = s["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style, label in (("under_15", "o-", "< 15 deg"), ("under_30", "s--", "< 30 deg")):
        ax.plot(RADII, [rows[f"envelope {r}"][key] for r in RADII], style,
                label=f"true envelope, fixed: {label}")
        ax.axhline(rows["hybrid"][key], color="C2", ls=style[1:], lw=1,
                   label=f"network + refinement (shipped): {label}")
        ax.axhline(rows["classical"][key], color="grey", ls=style[1:], lw=1,
                   label=f"classical: {label}")
    ax.set_xlabel("envelope sphere radius (A)")
    ax.set_ylabel("fraction of maps")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"hard regime, {s['n']} maps: refinement against support precision")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = bench_arguments(__doc__, n=30).parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    s = run(args.n, args.split, args.seed)
    report(f"hard regime, {s['n']} {args.split}-split maps, {STARTS} starts x {CYCLES} cycles, "
           f"seed {args.seed}; {time.perf_counter() - t0:.0f} s", table(s), s, args.json_out,
           args.plot, plot)


if __name__ == "__main__":
    main()
