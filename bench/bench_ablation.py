"""Does a global (Fourier) layer help, does the twin loss, beyond training-seed noise?

``--setup 2`` (default): seven networks of the first CPU all-12A's recipe
(``training/configs/experiments/all_12A.toml``: 0.33 M parameters, 2,000 steps x 16 on one
thread, 12 A cube, all residues), each evaluated on the same 489 test maps (``evaluate --n 500``).
``--setup hard``: four networks of stage 1 of hard-tri (``hard_tri.toml``: packed cells of
tripeptides, 2.5 A data, 2,000 x 16), with and without the Fourier layer, on the same 200 test
maps (``evaluate --n 200``) and, because the hard regime's target is network + refinement, on
300 validation maps with refinement (``bench_phasing.py --regimes hard --split val --n 300
--seed 1``, the candidate put first on ``PATTERSOLVE_MODELS``).

Networks are compared in pairs with :func:`pattersolve_train.paired.paired_comparison` (the
medians' difference with a paired bootstrap interval over the maps). Two replicates per recipe
(seeds 0 and 1) give the training-seed difference that a recipe's gain has to exceed: the
paired interval holds only the maps' sampling noise.

    python bench/bench_ablation.py [--setup 2|hard] [--runs runs] [--json out.json]

Runs that already hold a finished checkpoint in ``<runs>/<name>`` (and evaluations in
``<runs>/ev/<name>``) are reused, otherwise they are trained (``pattersolve-train fit``; setup
2: 25-31 min each on one core, ~3.2 h from nothing; hard: 15 min plain, 30 min with the
Fourier layer). The plain-loss seed-0 network of each setup is the one shipped before, restored
from git, so that its card is the baseline; ``--retrain-baseline`` trains it from the config
instead. Needs the setup's shards (``pattersolve-train prepare --max-per-entry 64 --out
data/shards/all2``; hard: ``prepare --length 3 --max-per-entry 64 --out data/shards/tri``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"


@dataclass(frozen=True)
class Setup:
    """One ablation: its networks (run name, label, config, seed), the pairs compared, and
    where the baseline (the first run) was shipped."""

    title: str  # what is ablated, the start of the printed heading (TITLE)
    runs: tuple[tuple[str, str, str, int], ...]
    pairs: tuple[tuple[str, str, str], ...]  # (baseline, candidate, what the pair measures)
    model: str  # the shipped model's name
    baseline_commit: str  # the commit whose models/<model> is the first run's network
    shards: str
    n_eval: int
    hybrid: bool  # also network + refinement on validation maps (bench_phasing.py)


SETUPS: dict[str, Setup] = {
    "2": Setup(
        "Setup 2",
        (("all-12A-cpu", "plain loss", "all_12A.toml", 0),
         ("cpu-2-seed1", "plain loss", "cpu_2_seed1.toml", 1),
         ("cpu-2-fourier", "plain loss + Fourier layer", "cpu_2_fourier.toml", 0),
         ("cpu-2-twin", "twin loss", "cpu_2_twin_scratch.toml", 0),
         ("cpu-2-twin-seed1", "twin loss", "cpu_2_twin_scratch.toml", 1),
         ("cpu-2-fourier-twin", "twin loss + Fourier layer", "cpu_2_fourier_twin.toml", 0),
         ("cpu-2-fourier-twin-seed1", "twin loss + Fourier layer", "cpu_2_fourier_twin.toml",
          1)),
        (("all-12A-cpu", "cpu-2-seed1", "seed 0 -> 1, plain loss (training noise)"),
         ("cpu-2-twin", "cpu-2-twin-seed1", "seed 0 -> 1, twin loss (training noise)"),
         ("cpu-2-fourier-twin", "cpu-2-fourier-twin-seed1", "seed 0 -> 1, twin + Fourier"),
         ("all-12A-cpu", "cpu-2-twin", "plain -> twin loss, seed 0"),
         ("cpu-2-seed1", "cpu-2-twin-seed1", "plain -> twin loss, seed 1"),
         ("all-12A-cpu", "cpu-2-fourier", "+ Fourier layer, plain loss, seed 0"),
         ("cpu-2-seed1", "cpu-2-fourier", "+ Fourier layer, plain loss, seed 1 -> 0"),
         ("cpu-2-twin", "cpu-2-fourier-twin", "+ Fourier layer, twin loss, seed 0"),
         ("cpu-2-twin-seed1", "cpu-2-fourier-twin-seed1", "+ Fourier layer, twin loss, seed 1")),
        "all-12A", "e92ba9b",  # models/all-12A as shipped until 2026-11-24 (CPU-trained)
        "data/shards/all2", 500, False),
    "hard": Setup(
        "Hard-regime",
        (("hard-tri-stage1", "plain loss", "hard_tri.toml", 0),
         ("hard-tri-seed1", "plain loss", "hard_tri.toml", 1),
         ("hard-tri-fourier", "plain loss + Fourier layer", "hard_tri_fourier.toml", 0),
         ("hard-tri-fourier-seed1", "plain loss + Fourier layer", "hard_tri_fourier.toml", 1)),
        (("hard-tri-stage1", "hard-tri-seed1", "seed 0 -> 1, plain (training noise)"),
         ("hard-tri-fourier", "hard-tri-fourier-seed1", "seed 0 -> 1, Fourier (training noise)"),
         ("hard-tri-stage1", "hard-tri-fourier", "+ Fourier layer, seed 0"),
         ("hard-tri-seed1", "hard-tri-fourier-seed1", "+ Fourier layer, seed 1")),
        "hard-tri", "af4feca",  # models/hard-tri stage 1, shipped until 2026-11-25
        "data/shards/tri", 200, True),
}
#: The printed heading; every setup's networks are its first config's recipe (2,000 x 16).
TITLE = ("{title} ablation on a CPU ({when}, {machine}, {cpus} CPUs; networks of {config}, "
         "2,000 x 16 steps)")
SHOWN = ("twin_cc", "map_cc", "phase_error_weighted")


def _config(name: str) -> Path:
    """A config of the ablation: ``training/configs/<name>``, else ``.../experiments/<name>``."""
    top = CONFIGS / name
    return top if top.is_file() else CONFIGS / "experiments" / name


def _cli(*args: str) -> None:
    """Run ``pattersolve-train``; its own summary lines go to stderr, the tables to stdout."""
    subprocess.run([sys.executable, "-m", "pattersolve_train.cli", *args], check=True,
                   stdout=sys.stderr)


def _finished(run: Path) -> bool:
    ckpt = run / "checkpoint.json"
    if not ckpt.is_file():
        return False
    state = json.loads(ckpt.read_text())
    return state.get("step") == state.get("total_steps", state.get("step"))


def _restore_baseline(setup: Setup, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("card.json", "model.safetensors", "model.onnx"):
        blob = subprocess.run(["git", "show", f"{setup.baseline_commit}:models/{setup.model}/"
                               f"{name}"], cwd=REPO, check=True, capture_output=True).stdout
        (folder / name).write_bytes(blob)


def _hybrid(setup: Setup, name: str, model_dir: Path, out: Path) -> dict:
    """bench_phasing's hard regime on 300 validation maps with this network first."""
    if not out.is_file():
        env = dict(os.environ, PATTERSOLVE_MODELS=str(model_dir.resolve()))
        subprocess.run([sys.executable, str(REPO / "bench" / "bench_phasing.py"), "--regimes",
                        "hard", "--split", "val", "--n", "300", "--seed", "1", "--json",
                        str(out)], check=True, env=env, stdout=sys.stderr)
    (res,) = json.loads(out.read_text())
    return res


def paired_fraction(a: np.ndarray, b: np.ndarray, below: float) -> tuple[float, float, float]:
    """Difference (b minus a) of the fraction of maps under ``below`` deg, and its paired 95 %
    bootstrap interval over the maps (the same maps resampled for both; seed 0)."""
    from pattersolve_train.stats import bootstrap_interval

    def diff(idx: np.ndarray) -> np.ndarray:
        return (b[idx] < below).mean(axis=1) - (a[idx] < below).mean(axis=1)

    return (float((b < below).mean() - (a < below).mean()), *bootstrap_interval(diff, len(a)))


def main() -> None:
    from pattersolve_train.paired import paired_comparison, read_examples

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", default="2", choices=sorted(SETUPS))
    ap.add_argument("--runs", default="runs", type=Path)
    ap.add_argument("--json", default=None, type=Path)
    ap.add_argument("--retrain-baseline", action="store_true")
    args = ap.parse_args()
    setup = SETUPS[args.setup]
    os.chdir(REPO)
    evals: dict[str, dict] = {}
    hybrid: dict[str, dict] = {}
    for i, (name, _, config, seed) in enumerate(setup.runs):
        ev_dir = args.runs / "ev" / name
        model = args.runs / "ablation-models" / name
        if i == 0 and not args.retrain_baseline:
            _restore_baseline(setup, model / setup.model)
            source = ["--model", str(model / setup.model), "--shards", setup.shards]
        else:
            run = args.runs / name
            if not _finished(run):
                _cli("fit", "--config", str(_config(config)), "--seed", str(seed),
                     "--out", str(run), "--quiet")
            source = ["--run", str(run)]
            if setup.hybrid and not (model / setup.model).is_dir():
                _cli("export", "--run", str(run), "--name", setup.model, "--models-dir",
                     str(model), "--overwrite")
        if not (ev_dir / "evaluation.json").is_file():
            _cli("evaluate", *source, "--n", str(setup.n_eval), "--out", str(ev_dir),
                 "--no-plots")
        evals[name] = json.loads((ev_dir / "evaluation.json").read_text())
        if setup.hybrid:
            hybrid[name] = _hybrid(setup, name, model, ev_dir / "phasing_val.json")

    when = dt.date.today().isoformat()
    print("# " + TITLE.format(title=setup.title, when=when, machine=platform.machine(),
                              cpus=os.cpu_count(), config=setup.runs[0][2]) + "\n")
    print("| network | config | seed | test maps | median CC | better hand | map CC | "
          "centrosymmetry | phase error w / unw (deg) | fit (min, 1 thread) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, label, config, seed in setup.runs:
        e = evals[name]
        ckpt = args.runs / name / "checkpoint.json"
        minutes = (f"{json.loads(ckpt.read_text())['wall_time'] / 60:.1f}" if ckpt.is_file()
                   else "- (git)")
        print(f"| {label} | `{config}` | {seed} | {e['n']} | {e['median_cc']:.3f} | "
              f"{e['median_twin_cc']:.3f} | {e['median_map_cc']:.3f} | "
              f"{e['median_centrosymmetry']:.2f} | {e['median_phase_error_weighted']:.1f} / "
              f"{e['median_phase_error_unweighted']:.1f} | {minutes} |")
    print("\nPaired on the same maps (candidate minus baseline, 95 % bootstrap interval):\n")
    print("| comparison | better-hand CC | map CC | phase error w (deg) |")
    print("|---|---|---|---|")
    pairs = []
    for a, b, what in setup.pairs:
        metrics = {m.key: m for m in paired_comparison(read_examples(args.runs / "ev" / a),
                                                       read_examples(args.runs / "ev" / b))}
        cells = []
        for key in SHOWN:
            m = metrics[key]
            digits = 1 if key.startswith("phase") else 3
            lo, hi = m.interval
            cells.append(f"{m.difference:+.{digits}f} ({lo:+.{digits}f} to {hi:+.{digits}f})")
        print(f"| {what} | " + " | ".join(cells) + " |")
        pairs.append({"baseline": a, "candidate": b, "what": what,
                      "metrics": {k: {"difference": metrics[k].difference,
                                      "interval_95": list(metrics[k].interval),
                                      "verdict": metrics[k].verdict} for k in metrics}})
    hybrid_rows: dict[str, dict] = {}
    if setup.hybrid:
        print("\nNetwork + refinement (hybrid, 4 starts x 300 cycles) on 300 validation maps "
              "(`bench_phasing.py --regimes hard --split val --n 300 --seed 1`):\n")
        print("| network | seed | network alone < 60 | hybrid median error (deg) | < 15 | < 30 | "
              "classical < 15 | < 30 |")
        print("|---|---|---|---|---|---|---|---|")
        for name, label, _, seed in setup.runs:
            sm = hybrid[name]["summary"]
            hybrid_rows[name] = {k: sm[k] for k in ("network", "hybrid", "classical")}
            print(f"| {label} | {seed} | {sm['network']['under_60']:.2f} | "
                  f"{sm['hybrid']['median_weighted']:.1f} | {sm['hybrid']['under_15']:.2f} | "
                  f"{sm['hybrid']['under_30']:.2f} | {sm['classical']['under_15']:.2f} | "
                  f"{sm['classical']['under_30']:.2f} |")
        print("\nHybrid, paired on the same maps (candidate minus baseline, fraction of maps, "
              "95 % bootstrap interval):\n")
        print("| comparison | < 15 deg | < 30 deg |")
        print("|---|---|---|")
        for pair, (a, b, what) in zip(pairs, setup.pairs, strict=True):
            wa = np.array([r["weighted"] for r in hybrid[a]["maps"]["hybrid"]])
            wb = np.array([r["weighted"] for r in hybrid[b]["maps"]["hybrid"]])
            cells = []
            pair["hybrid"] = {}
            for below in (15.0, 30.0):
                d, lo, hi = paired_fraction(wa, wb, below)
                pair["hybrid"][f"under_{below:.0f}"] = {"difference": d, "interval_95": [lo, hi]}
                cells.append(f"{d:+.3f} ({lo:+.3f} to {hi:+.3f})")
            print(f"| {what} | " + " | ".join(cells) + " |")
    if args.json:
        rows = {name: {k: evals[name][k] for k in (
            "n", "median_cc", "median_twin_cc", "median_map_cc", "median_centrosymmetry",
            "median_phase_error_weighted", "median_phase_error_unweighted",
            "fraction_true_hand", "intervals_95")} for name, *_ in setup.runs}
        for name, h in hybrid_rows.items():
            rows[name]["val_300_refinement"] = h
        args.json.write_text(json.dumps({"date": when, "machine": platform.platform(),
                                         "setup": args.setup, "runs": rows, "pairs": pairs},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
