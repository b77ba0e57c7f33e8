"""Where network + refinement fails in the hard regime: the starts, their choice, the hedge.

For each map the shipped network predicts (``pattersolve.solve.predict``) and hybrid refinement
runs ``--starts`` starts, 300 cycles each, as ``pattersolve --method hybrid`` does. Every start's
result (``RefineResult.f_starts``) is scored against the truth after the best origin and hand,
which separates three ways of failing:

* no start reached the answer (the oracle row: the best start per map, picked with the truth);
* a start reached it and the truth-free choice missed it. Choices compared: the amplitude
  residual (shipped), agreement with the prediction (phase error after origin and hand
  search against its phases), and consensus (median phase error against the other starts);
* by the prediction's centrosymmetry (:func:`pattersolve.phases.centrosymmetry`, 1 for a map
  that averages both hands): how often refinement succeeds from a prediction that hedges,
  beside the classical method (random phases, 4 starts) on the same maps, since a prediction
  that commits to a hand may also mark an easier map.

Maps: a regime of ``bench_phasing.py`` (default the hard one: tripeptides, random orientation,
packed P1 cells, 2.5 A data). Use ``--split val`` for anything that tunes.

    python bench/bench_starts.py [--n 40] [--starts 8] [--split test] [--regime hard]
        [--json bench/results/starts.json] [--plot bench/results/starts.png]
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
    make_data,
    report,
)

CYCLES = 300
CS_BINS = (0.0, 0.75, 0.85, 0.9, 1.01)
RULES = ("residual", "prediction", "consensus", "oracle")


def run(regime_name: str, n: int, n_starts: int, split: str, seed: int) -> dict:
    from pattersolve.fourier import density_map
    from pattersolve.phasematch import match_phases
    from pattersolve.phases import centrosymmetry
    from pattersolve.refine import refine_phases
    from pattersolve.runtime import Predictor, list_models
    from pattersolve.solve import predict

    regime = REGIMES[regime_name]
    models = {m.name: m for m in list_models()}
    if regime.model not in models:
        raise SystemExit(f"no model {regime.model} for regime {regime_name}")
    predictor = Predictor(models[regime.model], backend="auto", device="cpu", threads=1)
    rng = np.random.default_rng(seed)
    rows = []
    for k, frag in enumerate(fragments(regime, n, seed, split)):
        refl, f_true = make_data(regime, frag, rng)
        shape = cell_grid(refl)
        hkl, cell = refl.hkl, refl.cell
        pred = predict(refl, predictor)
        f_pred = np.where(pred.covered, pred.f, 0)
        start = density_map(hkl, f_pred, shape, cell.volume)
        res = refine_phases(hkl, refl.amplitude, cell, shape, sigma=refl.sigma,
                            start_density=start, n_starts=n_starts, cycles=CYCLES,
                            rng=np.random.default_rng(k))
        classical = refine_phases(hkl, refl.amplitude, cell, shape, sigma=refl.sigma,
                                  n_starts=4, cycles=CYCLES, rng=np.random.default_rng(k))
        fs = res.f_starts
        pair = np.zeros((n_starts, n_starts))
        for i in range(n_starts):
            for j in range(i + 1, n_starts):
                pair[i, j] = pair[j, i] = match_phases(hkl, fs[i], fs[j], cell).weighted_error
        row = {
            "source": frag.source,
            "centrosymmetry": centrosymmetry(pred.density),
            "prediction": match_phases(hkl, f_true, f_pred, cell).weighted_error,
            "chosen": match_phases(hkl, f_true, res.f, cell).weighted_error,
            "classical": match_phases(hkl, f_true, classical.f, cell).weighted_error,
            "error": [match_phases(hkl, f_true, f, cell).weighted_error for f in fs],
            "residual": [s["residual"] for s in res.starts],
            "kind": [s["kind"] for s in res.starts],
            "vs_prediction": [match_phases(hkl, f_pred, f, cell).weighted_error for f in fs],
            "consensus": [float(np.median(np.delete(pair[i], i))) if n_starts > 1 else 0.0
                          for i in range(n_starts)],
        }
        rows.append(row)
        print(f"{k + 1}/{n} {frag.source}: prediction {row['prediction']:.0f} deg, "
              f"centrosymmetry {row['centrosymmetry']:.2f}; starts " +
              " ".join(f"{e:.0f}" for e in row["error"]) + f"; chosen {row['chosen']:.0f}"
              f"; classical {row['classical']:.0f}",
              flush=True)
    return summarise(rows, n_starts)


def _fractions(errors: np.ndarray) -> dict[str, float]:
    return {"n": int(errors.size), "median": float(np.median(errors)) if errors.size else np.nan,
            "under_15": float((errors < 15).mean()) if errors.size else np.nan,
            "under_30": float((errors < 30).mean()) if errors.size else np.nan}


def summarise(rows: list[dict], n_starts: int) -> dict:
    err = np.array([r["error"] for r in rows])
    idx = np.arange(len(rows))
    score = {"residual": np.array([r["residual"] for r in rows]),
             "prediction": np.array([r["vs_prediction"] for r in rows]),
             "consensus": np.array([r["consensus"] for r in rows]), "oracle": err}
    counts = sorted({min(4, n_starts), n_starts})
    rules = {}
    for m in counts:
        for rule in RULES:
            if rule == "consensus" and m != n_starts:
                continue  # consensus is over all the starts run
            pick = err[idx, score[rule][:, :m].argmin(1)]
            rules[f"{rule}/{m}"] = _fractions(pick)
    cs = np.array([r["centrosymmetry"] for r in rows])
    chosen = np.array([r["chosen"] for r in rows])
    classical = np.array([r["classical"] for r in rows])
    by_cs = []
    for lo, hi in zip(CS_BINS[:-1], CS_BINS[1:], strict=True):
        sel = (cs >= lo) & (cs < hi)
        by_cs.append({"range": [lo, min(hi, 1.0)], **_fractions(chosen[sel]),
                      "per_start_under_15": float((err[sel] < 15).mean()) if sel.any()
                      else np.nan, "classical": _fractions(classical[sel])})
    return {"n": len(rows), "starts": n_starts, "rules": rules, "by_centrosymmetry": by_cs,
            "classical": _fractions(classical),
            "per_start_under_15": [float(v) for v in (err < 15).mean(0)],
            "median_centrosymmetry": float(np.median(cs)),
            "median_prediction": float(np.median([r["prediction"] for r in rows])),
            "maps": rows}


def table(s: dict) -> str:
    lines = [f"Median prediction error {s['median_prediction']:.1f} deg, median centrosymmetry "
             f"{s['median_centrosymmetry']:.2f}; fraction of single starts < 15 deg: " +
             ", ".join(f"{v:.2f}" for v in s["per_start_under_15"]) + "\n",
             "| choice of start / starts | median error (deg) | < 15 | < 30 |", "|---|---|---|---|"]
    names = {"residual": "amplitude residual (shipped)", "prediction": "agreement with prediction",
             "consensus": "consensus of starts", "oracle": "best start (truth; a bound)"}
    for key, v in s["rules"].items():
        rule, m = key.split("/")
        lines.append(f"| {names[rule]} / {m} | {v['median']:.1f} | {v['under_15']:.2f} | "
                     f"{v['under_30']:.2f} |")
    c = s["classical"]
    lines.append(f"| classical, random phases (no network) / 4 | {c['median']:.1f} | "
                 f"{c['under_15']:.2f} | {c['under_30']:.2f} |")
    lines += ["", f"| prediction centrosymmetry | maps | hybrid ({s['starts']} starts): median "
              "error (deg) | < 15 | < 30 | single starts < 15 | classical: < 15 | < 30 |",
              "|---" * 8 + "|"]
    for b in s["by_centrosymmetry"]:
        lo, hi = b["range"]
        lines.append(f"| {lo:.2f}-{hi:.2f} | {b['n']} | {b['median']:.1f} | "
                     f"{b['under_15']:.2f} | {b['under_30']:.2f} | "
                     f"{b['per_start_under_15']:.2f} | {b['classical']['under_15']:.2f} | "
                     f"{b['classical']['under_30']:.2f} |")
    return "\n".join(lines)


def plot(s: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = s["maps"]
    cs = [r["centrosymmetry"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(cs, [r["chosen"] for r in rows], s=18, label="chosen start")
    ax.scatter(cs, [min(r["error"]) for r in rows], s=10, marker="x", label="best start")
    ax.scatter(cs, [r["classical"] for r in rows], s=10, marker="+", label="classical (no network)")
    ax.axhline(15, color="grey", lw=0.8, ls="--")
    ax.axhline(30, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("centrosymmetry of the network's prediction")
    ax.set_ylabel("phase error after refinement (deg)")
    ax.set_title(f"network + refinement, {s['n']} maps, {s['starts']} starts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = bench_arguments(__doc__, n=40)
    ap.add_argument("--starts", type=int, default=8)
    ap.add_argument("--regime", default="hard", choices=[k for k, r in REGIMES.items()
                                                         if r.model])
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    s = run(args.regime, args.n, args.starts, args.split, args.seed)
    report(f"regime {args.regime}, {s['n']} {args.split}-split maps, {args.starts} starts x "
           f"{CYCLES} cycles, seed {args.seed}; {time.perf_counter() - t0:.0f} s",
           table(s), s, args.json_out, args.plot, plot)


if __name__ == "__main__":
    main()
