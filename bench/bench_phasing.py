"""The honest benchmark: four methods side by side on test-split fragments, per regime.

Methods: the network alone, the classical method alone (RAAR + shrink-wrap + ER from random
phases, support from the Patterson), network + refinement (hybrid), and random phases (the
floor). Each map is scored by pattersolve.phasematch after the best origin shift and hand.

Regimes (PHASING_NOTES.md and the benchmark issue):
  1b       Ala-Ala dipeptides, 10 A cube, 1.5 A, exact amplitudes (the paper's setup 1b)
  2        all amino acids, dipeptides, 12 A cube, 1.5 A (the paper's setup 2)
  2-noise  setup 2 with 10 % Gaussian amplitude noise
  2-lowres setup 2 with every reflection below 5 A resolution (d > 5 A) missing
  hard     tripeptides, random orientation, orthorhombic P1 cell = extent + 2.5 A, 2.5 A data
  hard-noise  the same with 10 % amplitude noise

The hand: "true hand (of < 30)" is the share of the maps solved to < 30 deg whose best
alignment needed no inversion (0.5 for a method that cannot know the hand); "hand from the
network" counts the maps where the command names the network's hand (``stages["hand"]``) and
how often that is the true one.

Fragments come from the test split of shards made by `pattersolve-train prepare` (made here,
limited to a few test entries, when missing). A regime without a matching shipped model is
scored without the network rows (reported as "no model"), never with an out-of-domain one.

    python bench/bench_phasing.py [--n 30] [--regimes 1b,2,hard] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pattersolve.fourier import d_spacings
from pattersolve.phasematch import match_phases, random_phase_floor
from pattersolve.reflections import Reflections
from pattersolve.settings import DEFAULT_CYCLES
from pattersolve.simulate import random_rotation
from pattersolve.solve import solve
from pattersolve.synthetic import simulate_fragment

REPO = Path(__file__).resolve().parents[1]
CLAIMED = ("network", "prediction")  # hand bases that name the network's hand
SHARDS = REPO / "data" / "shards"


@dataclass(frozen=True)
class Regime:
    name: str
    shards: str  # folder under data/shards
    dialanine: bool
    length: int
    cell: float | None  # cube edge, or None for packed cells
    padding: float | None
    d_min: float
    rotate: bool
    noise: float = 0.0
    drop_below: float | None = None  # drop reflections with d > this
    model: str | None = None


REGIMES = {
    "1b": Regime("1b", "bench-alaala", True, 2, 10.0, None, 1.5, False, model="alaala-10A"),
    "2": Regime("2", "bench-all2", False, 2, 12.0, None, 1.5, False, model="all-12A"),
    "2-noise": Regime("2-noise", "bench-all2", False, 2, 12.0, None, 1.5, False, noise=0.10,
                      model="all-12A"),
    "2-lowres": Regime("2-lowres", "bench-all2", False, 2, 12.0, None, 1.5, False,
                       drop_below=5.0, model="all-12A"),
    "hard": Regime("hard", "bench-tri", False, 3, None, 2.5, 2.5, True, model="hard-tri"),
    "hard-noise": Regime("hard-noise", "bench-tri", False, 3, None, 2.5, 2.5, True, noise=0.10,
                         model="hard-tri"),
}


def fragments(regime: Regime, n: int, seed: int, split: str = "test") -> list:
    """``n`` fragments of a split, a seeded random subset spread over entries."""
    from pattersolve_train.prepare import PrepareOptions, prepare
    from pattersolve_train.shards import load_split

    out = SHARDS / regime.shards
    if not (out / "manifest.json").is_file():
        opts = PrepareOptions(length=regime.length, dialanine=regime.dialanine,
                              max_per_entry=8, max_entries=40)
        prepare(None, out, opts, progress=False)
    frags = load_split(out, split)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(frags))[:n]
    return [frags[i] for i in sorted(idx)]


def make_data(regime: Regime, frag, rng: np.random.Generator):
    """The regime's measured data of ``frag``: ``(Reflections, true F)``."""
    refl, f, _ = make_placed_data(regime, frag, rng)
    return refl, f


def make_placed_data(regime: Regime, frag, rng: np.random.Generator):
    """:func:`make_data` plus the fragment's placement (atoms in the cell)."""
    rot = random_rotation(rng) if regime.rotate else None
    sim = simulate_fragment(frag.elements, frag.xyz, regime.d_min,
                            cell_lengths=None if regime.padding else (regime.cell,) * 3,
                            padding=regime.padding, b_iso=15.0, rotation=rot)
    amp = np.abs(sim.f)
    if regime.noise:
        amp = np.abs(amp * (1 + regime.noise * rng.standard_normal(len(amp))))
    keep = np.ones(len(amp), bool)
    if regime.drop_below is not None:
        keep = d_spacings(sim.placement.cell, sim.hkl) <= regime.drop_below
    sigma = np.maximum(regime.noise, 0.02) * amp + 1e-3 * amp.max()
    refl = Reflections.from_arrays(sim.placement.cell, sim.hkl[keep], amp[keep], sigma[keep])
    return refl, sim.f[keep], sim.placement


def cell_grid(refl: Reflections) -> tuple[int, int, int]:
    from pattersolve.patterson import cell_grid_shape

    return cell_grid_shape(refl.cell, refl.spacegroup, refl.hkl, refl.d_min)


def run_regime(regime: Regime, n: int, seed: int, starts: int, cycles: int,
               split: str = "test", guided: bool | None = None,
               average_rotations: bool = False) -> dict:
    from pattersolve.runtime import Predictor, list_models

    models = {m.name: m for m in list_models()}
    predictor = None
    if regime.model in models:
        predictor = Predictor(models[regime.model], backend="auto", device="cpu", threads=1)
    methods = ["random", "classical"] + (["network", "hybrid"] if predictor else [])
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    rng = np.random.default_rng(seed)
    frags = fragments(regime, n, seed, split)
    for k, frag in enumerate(frags):
        refl, f_true = make_data(regime, frag, rng)
        shape = cell_grid(refl)
        for method in methods:
            t0 = time.perf_counter()
            if method == "random":
                m = random_phase_floor(refl.hkl, f_true, refl.cell, rng=np.random.default_rng(k))
            else:
                sol = solve(refl, shape, method, predictor=predictor, cycles=cycles,
                            starts=starts, seed=k, guided=guided,
                            average_rotations=average_rotations)
                m = match_phases(refl.hkl, f_true, sol.f, refl.cell)
            row = {"weighted": m.weighted_error, "unweighted": m.unweighted_error,
                   "cc": m.map_cc, "seconds": time.perf_counter() - t0,
                   "inverted": bool(m.inverted), "source": frag.source}
            if method in ("network", "hybrid"):
                row["centrosymmetry"] = sol.stages["network"]["centrosymmetry"]
                row["amplitude_residual"] = sol.stages["network"]["amplitude_residual"]
                row["rotations"] = sol.stages["network"]["rotations_averaged"]
                row["rotation_agreement"] = sol.stages["network"]["rotation_agreement"]
            if method != "random":
                row["hand_basis"] = sol.stages["hand"]["basis"]
            rows[method].append(row)
    summary = {}
    for method, rs in rows.items():
        w = np.array([r["weighted"] for r in rs])
        summary[method] = {
            "n": len(rs),
            "median_cc": float(np.median([r["cc"] for r in rs])),
            "median_weighted": float(np.median(w)),
            "median_unweighted": float(np.median([r["unweighted"] for r in rs])),
            "under_15": float((w < 15).mean()), "under_30": float((w < 30).mean()),
            "under_60": float((w < 60).mean()),
            "seconds": float(statistics.median([r["seconds"] for r in rs])),
            # the hand, where it means something: of the maps solved to < 30 deg, the share
            # that needed no inversion (the true enantiomorph; 0.5 is a coin toss)
            "solved_right_hand": (float(np.mean([not r["inverted"] for r in rs
                                                 if r["weighted"] < 30]))
                                  if (w < 30).any() else float("nan")),
            # where the command says the hand is the network's (stages.hand.basis "network"
            # after refinement, "prediction" for the network alone), and how often it is
            "hand_claimed": int(sum(r.get("hand_basis") in CLAIMED for r in rs)),
            "hand_claimed_right": (float(np.mean([not r["inverted"] for r in rs
                                                  if r.get("hand_basis") in CLAIMED]))
                                   if any(r.get("hand_basis") in CLAIMED for r in rs)
                                   else float("nan")),
        }
    return {"regime": regime.__dict__, "model": regime.model if predictor else None,
            "summary": summary, "maps": rows}


def table(results: list[dict]) -> str:
    lines = ["| regime | method | median CC | median err w / unw (deg) | < 15 | < 30 | < 60 "
             "| true hand (of < 30) | hand from the network: maps, true | s/map |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        name = res["regime"]["name"]
        for method in ("network", "classical", "hybrid", "random"):
            s = res["summary"].get(method)
            if s is None:
                lines.append(f"| {name} | {method} | no model for this regime | | | | | | | |")
                continue
            hand = s.get("solved_right_hand", float("nan"))
            claimed = s.get("hand_claimed", 0)
            claim = (f"{claimed}, {s['hand_claimed_right']:.2f}" if claimed else "-")
            lines.append(f"| {name} | {method} | {s['median_cc']:.3f} | "
                         f"{s['median_weighted']:.1f} / {s['median_unweighted']:.1f} | "
                         f"{s['under_15']:.2f} | {s['under_30']:.2f} | {s['under_60']:.2f} | "
                         f"{'-' if np.isnan(hand) else f'{hand:.2f}'} | {claim} | "
                         f"{s['seconds']:.2f} |")
    return "\n".join(lines)


def paired_table(results: list[dict]) -> str:
    """Does the network earn its place? hybrid against classical on the same maps.

    Per regime: the difference in the fraction of maps < 15 and < 30 deg (hybrid minus
    classical) with a 95 % paired bootstrap interval (maps resampled jointly, seed 0), and on
    how many maps each method ended more than 5 deg better than the other.
    """
    from pattersolve_train.stats import bootstrap_interval

    lines = ["| regime | maps | < 15: hybrid - classical (95 %) | < 30: hybrid - classical "
             "(95 %) | hybrid better by > 5 deg | classical better by > 5 deg |",
             "|---|---|---|---|---|---|"]
    for res in results:
        maps = res["maps"]
        if "hybrid" not in maps or "classical" not in maps:
            continue
        hyb = np.array([r["weighted"] for r in maps["hybrid"]])
        cla = np.array([r["weighted"] for r in maps["classical"]])
        cells = []
        for t in (15, 30):
            d = (hyb < t).astype(float) - (cla < t).astype(float)
            lo, hi = bootstrap_interval(lambda idx, d=d: d[idx].mean(axis=1), len(hyb))
            cells.append(f"{d.mean():+.2f} ({lo:+.2f} to {hi:+.2f})")
        lines.append(f"| {res['regime']['name']} | {len(hyb)} | {cells[0]} | {cells[1]} | "
                     f"{int((hyb < cla - 5).sum())} | {int((cla < hyb - 5).sum())} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def agreement_table(results: list[dict]) -> str:
    """With ``--average-rotations``: maps by quarter of the rotation agreement (the mean CC of
    the single predictions with their average), and how the methods did on each quarter."""
    lines = ["| regime | rotation agreement | maps | network: median err w | hybrid < 15 | "
             "hybrid < 30 | classical < 15 |", "|---|---|---|---|---|---|---|"]
    for res in results:
        maps = res["maps"]
        if "hybrid" not in maps or "rotation_agreement" not in maps["hybrid"][0]:
            continue
        a = np.array([r["rotation_agreement"] for r in maps["hybrid"]])
        hyb = np.array([r["weighted"] for r in maps["hybrid"]])
        net = np.array([r["weighted"] for r in maps["network"]])
        cla = np.array([r["weighted"] for r in maps["classical"]])
        edges = np.quantile(a, [0.0, 0.25, 0.5, 0.75, 1.0])
        quarter = np.clip(np.searchsorted(edges, a, side="right") - 1, 0, 3)
        for q in range(4):
            m = quarter == q
            if not m.any():
                continue
            lines.append(f"| {res['regime']['name']} | {edges[q]:.3f}-{edges[q + 1]:.3f} | "
                         f"{int(m.sum())} | {np.median(net[m]):.1f} | {np.mean(hyb[m] < 15):.2f} "
                         f"| {np.mean(hyb[m] < 30):.2f} | {np.mean(cla[m] < 15):.2f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ["network", "classical", "hybrid", "random"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(results))
    for j, key in enumerate(("under_30", "under_15")):
        ax = axes[j]
        for i, method in enumerate(methods):
            vals = [r["summary"].get(method, {}).get(key, np.nan) for r in results]
            ax.bar(x + (i - 1.5) * 0.2, vals, 0.2, label=method)
        ax.set_xticks(x, [r["regime"]["name"] for r in results])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"fraction of maps with phase error {key.replace('under_', '< ')} deg")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(run: str, text: str, data: object, json_out: str | None, plot_path: str | None,
           plot_fn: Callable[[Any, str], None]) -> None:
    """Print the machine, the run's description and the table; write the JSON and the plot."""
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; {dt.date.today().isoformat()}; {run}\n")
    print(text)
    if json_out:
        Path(json_out).write_text(json.dumps(data, indent=1))
    if plot_path:
        plot_fn(data, plot_path)


def bench_arguments(doc: str, n: int) -> argparse.ArgumentParser:
    """The options every map bench shares: ``--n``, ``--split``, ``--seed``, ``--json``,
    ``--plot`` (add the bench's own, then ``parse_args``)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--n", type=int, default=n, help="maps")
    ap.add_argument("--split", default="test", choices=["test", "val"],
                    help="val for anything that tunes (never tune on the test split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--plot")
    return ap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="maps per regime")
    ap.add_argument("--regimes", default="1b,2,2-noise,2-lowres,hard,hard-noise")
    ap.add_argument("--starts", type=int, default=4)
    ap.add_argument("--cycles", type=int, default=DEFAULT_CYCLES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="test", choices=["test", "val"],
                    help="val for tuning (never tune on the test split)")
    ap.add_argument("--guided", default="auto", choices=["auto", "on", "off"],
                    help="hybrid's guided first start: by the cell's packing (shipped), "
                    "always, or never (the hand-over before it)")
    ap.add_argument("--average-rotations", action="store_true",
                    help="the network's prediction averaged over the rotations of the cell "
                    "onto itself (pattersolve.rotations)")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--plot")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = []
    for name in args.regimes.split(","):
        t0 = time.perf_counter()
        guided = {"auto": None, "on": True, "off": False}[args.guided]
        results.append(run_regime(REGIMES[name], args.n, args.seed, args.starts, args.cycles,
                                  args.split, guided, args.average_rotations))
        print(f"# {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    report(f"{args.n} {args.split}-split maps per regime, {args.starts} starts x {args.cycles} "
           f"cycles, seed {args.seed}, guided start {args.guided}"
           + (", network averaged over rotations" if args.average_rotations else ""),
           table(results) + "\n\n" + paired_table(results)
           + ("\n\n" + agreement_table(results) if args.average_rotations else ""),
           results, args.json_out, args.plot, plot)


if __name__ == "__main__":
    main()
