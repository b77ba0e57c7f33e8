"""What the hard regime asks of the network: refinement success against prediction quality.

The network's prediction is replaced by the truth degraded to a chosen quality
(:func:`pattersolve.synthetic.degraded_prediction`: blurred by B = 40 A^2, phases moved by a
uniform error of up to ``--levels`` degrees, map noise 0.3 r.m.s.), so the hand-over can be
measured for predictions better than any network shipped today. For each level and map the
same data are refined three ways, 4 starts x 300 cycles each:

* ``guided``: ``pattersolve.refine.refine_phases`` as shipped (start 0 guided toward the
  prediction, the other starts RAAR from its phases plus noise; ``--method hybrid``);
* ``raar``: every start RAAR (``guided=False``: the hand-over before the guided start);
* ``classical``: random phases, Patterson support (no prediction; once per map).

Maps: the hard regime of ``bench_phasing.py`` (tripeptides of test-split entries, random
orientation, packed P1 cells of edges extent + 2.5 A, 2.5 A data, 2 % sigmas).

    python bench/bench_handover.py [--n 30] [--levels 0,40,60,80,100] [--split test]
        [--guide-weight W] [--guide-fraction F]
        [--json bench/results/handover.json] [--plot bench/results/handover.png]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_phasing import (  # noqa: E402
    REGIMES,
    bench_arguments,
    cell_grid,
    fragments,
    report,
)

from pattersolve.fourier import density_map  # noqa: E402
from pattersolve.phasematch import match_phases  # noqa: E402
from pattersolve.phases import phases_from_density  # noqa: E402
from pattersolve.refine import refine_phases  # noqa: E402
from pattersolve.reflections import Reflections  # noqa: E402
from pattersolve.simulate import random_rotation  # noqa: E402
from pattersolve.synthetic import degraded_prediction, simulate_fragment  # noqa: E402

REGIME = REGIMES["hard"]
STARTS, CYCLES = 4, 300


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def run(n: int, levels: list[float], split: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    rows = []
    for k, frag in enumerate(fragments(REGIME, n, seed, split)):
        sd = simulate_fragment(frag.elements, frag.xyz, REGIME.d_min, cell_lengths=None,
                               padding=REGIME.padding, b_iso=15.0,
                               rotation=random_rotation(rng))
        amp = np.abs(sd.f)
        refl = Reflections.from_arrays(sd.placement.cell, sd.hkl, amp,
                                       0.02 * amp + 1e-3 * amp.max())
        shape = cell_grid(refl)
        hkl, cell = refl.hkl, refl.cell
        truth = density_map(hkl, sd.f, shape, cell.volume)

        def error(f: np.ndarray, hkl=hkl, f_true=sd.f, cell=cell) -> float:
            return match_phases(hkl, f_true, f, cell).weighted_error

        res = refine_phases(hkl, amp, cell, shape, sigma=refl.sigma, n_starts=STARTS,
                            cycles=CYCLES, rng=k)
        row = {"source": frag.source, "classical": error(res.f), "levels": {}}
        prng = np.random.default_rng(5000 + k)
        for level in levels:
            pred, _ = degraded_prediction(cell, hkl, sd.f, shape, prng, b_blur=40.0,
                                          max_phase_error=level, noise=0.3)
            r = {"cc": _cc(pred, truth),
                 "prediction": error(phases_from_density(pred, hkl, cell.volume))}
            for name, guided in (("guided", True), ("raar", False)):
                res = refine_phases(hkl, amp, cell, shape, sigma=refl.sigma,
                                    start_density=pred, n_starts=STARTS, cycles=CYCLES, rng=k,
                                    guided=guided)
                r[name] = error(res.f)
                if guided:
                    r["guided_chosen"] = res.starts[res.chosen]["kind"] if res.chosen >= 0 \
                        else "prediction"
            row["levels"][str(level)] = r
        rows.append(row)
        print(f"{k + 1}/{n} {frag.source}: classical {row['classical']:.0f}; " + "; ".join(
            f"{lv}: cc {r['cc']:.2f} pred {r['prediction']:.0f} guided {r['guided']:.0f} "
            f"raar {r['raar']:.0f}" for lv, r in row["levels"].items()), flush=True)
    return summarise(rows, levels)


def _stats(errors: list[float]) -> dict[str, float]:
    e = np.asarray(errors)
    return {"median": float(np.median(e)), "under_15": float(np.mean(e < 15)),
            "under_30": float(np.mean(e < 30))}


def summarise(rows: list[dict], levels: list[float]) -> dict:
    out = {"n": len(rows), "classical": _stats([r["classical"] for r in rows]), "levels": [],
           "rows": rows}
    for level in levels:
        rs = [r["levels"][str(level)] for r in rows]
        out["levels"].append({
            "max_phase_error": level,
            "prediction_cc": float(np.median([r["cc"] for r in rs])),
            "prediction_error": float(np.median([r["prediction"] for r in rs])),
            "guided": _stats([r["guided"] for r in rs]),
            "raar": _stats([r["raar"] for r in rs]),
            "guided_start_chosen": float(np.mean([r["guided_chosen"] == "guided"
                                                  for r in rs])),
        })
    return out


def table(s: dict) -> str:
    c = s["classical"]
    lines = ["| prediction CC | prediction error (deg) | hand-over | median error (deg) | < 15 "
             "| < 30 |", "|---|---|---|---|---|---|",
             f"| none | - | classical (random phases) | {c['median']:.1f} | {c['under_15']:.2f} "
             f"| {c['under_30']:.2f} |"]
    for lv in s["levels"]:
        for name in ("guided", "raar"):
            st = lv[name]
            label = "guided start + RAAR (shipped)" if name == "guided" else "RAAR only"
            lines.append(f"| {lv['prediction_cc']:.2f} | {lv['prediction_error']:.1f} | {label} "
                         f"| {st['median']:.1f} | {st['under_15']:.2f} | {st['under_30']:.2f} |")
    return "\n".join(lines)


def plot(s: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [lv["prediction_cc"] for lv in s["levels"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in ((axes[0], "under_15", "fraction < 15 deg"),
                           (axes[1], "under_30", "fraction < 30 deg")):
        ax.plot(x, [lv["guided"][key] for lv in s["levels"]], "o-", label="guided + RAAR")
        ax.plot(x, [lv["raar"][key] for lv in s["levels"]], "s--", label="RAAR only")
        ax.axhline(s["classical"][key], color="k", lw=1, ls=":", label="classical")
        ax.set_xlabel("median density CC of the prediction")
        ax.set_ylabel(title)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
    fig.suptitle(f"hard regime, {s['n']} maps: refinement from predictions of set quality",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = bench_arguments(__doc__, n=30)
    ap.add_argument("--levels", default="0,40,60,80,100",
                    help="maximum phase errors (deg) of the degraded predictions")
    ap.add_argument("--guide-weight", type=float, default=None,
                    help="override settings.HYBRID_GUIDE_WEIGHT (tuning on --split val)")
    ap.add_argument("--guide-fraction", type=float, default=None,
                    help="override settings.HYBRID_GUIDE_FRACTION (tuning on --split val)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import pattersolve.refine as refine

    if args.guide_weight is not None:
        refine.HYBRID_GUIDE_WEIGHT = args.guide_weight
    if args.guide_fraction is not None:
        refine.HYBRID_GUIDE_FRACTION = args.guide_fraction
    t0 = time.perf_counter()
    s = run(args.n, [float(v) for v in args.levels.split(",")], args.split, args.seed)
    report(f"{s['n']} {args.split}-split maps, {STARTS} starts x {CYCLES} cycles, seed "
           f"{args.seed}, guide weight {refine.HYBRID_GUIDE_WEIGHT:.2f} over "
           f"{refine.HYBRID_GUIDE_FRACTION:.2f} of the cycles; {time.perf_counter() - t0:.0f} s",
           table(s), s, args.json_out, args.plot, plot)


if __name__ == "__main__":
    main()
