"""Setup 2 on a CPU: does a global (Fourier) layer help, does the twin loss, beyond seed noise?

Seven networks of the first CPU all-12A's recipe (``training/configs/all_12A.toml``: 0.33 M
parameters, 2,000 steps x 16 on one thread, 12 A cube, all residues), each evaluated on the
same 489 test maps (``evaluate --n 500``), then compared in pairs with
:func:`pattersolve_train.paired.paired_comparison` (the medians' difference with a paired
bootstrap interval over the maps). Two replicates per recipe (seeds 0 and 1) give the
training-seed difference that a recipe's gain has to exceed: the paired interval holds only the
maps' sampling noise.

    python bench/bench_ablation.py [--runs runs] [--json bench/results/ablation_setup2.json]

Runs that already hold a finished checkpoint in ``<runs>/<name>`` are reused, otherwise they
are trained (``pattersolve-train fit``, about 25-31 minutes each on one core; the bench runs
one at a time, so ~3.2 h from nothing). The plain-loss seed-0 row is the CPU all-12A that was
shipped until 2026-11-24, restored from git (commit e92ba9b), so that its card is the
baseline; ``--retrain-baseline`` trains it from the config instead. Needs the setup-2 shards
(``pattersolve-train prepare --max-per-entry 64 --out data/shards/all2``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
BASELINE_COMMIT = "e92ba9b"  # models/all-12A as shipped until 2026-11-24 (CPU-trained)

#: (run name, label, config, seed): the seven networks.
RUNS: tuple[tuple[str, str, str, int], ...] = (
    ("all-12A-cpu", "plain loss", "all_12A.toml", 0),
    ("cpu-2-seed1", "plain loss", "cpu_2_seed1.toml", 1),
    ("cpu-2-fourier", "plain loss + Fourier layer", "cpu_2_fourier.toml", 0),
    ("cpu-2-twin", "twin loss", "cpu_2_twin_scratch.toml", 0),
    ("cpu-2-twin-seed1", "twin loss", "cpu_2_twin_scratch.toml", 1),
    ("cpu-2-fourier-twin", "twin loss + Fourier layer", "cpu_2_fourier_twin.toml", 0),
    ("cpu-2-fourier-twin-seed1", "twin loss + Fourier layer", "cpu_2_fourier_twin.toml", 1),
)
#: (baseline, candidate, what the pair measures).
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("all-12A-cpu", "cpu-2-seed1", "seed 0 -> 1, plain loss (training noise)"),
    ("cpu-2-twin", "cpu-2-twin-seed1", "seed 0 -> 1, twin loss (training noise)"),
    ("cpu-2-fourier-twin", "cpu-2-fourier-twin-seed1", "seed 0 -> 1, twin + Fourier"),
    ("all-12A-cpu", "cpu-2-twin", "plain -> twin loss, seed 0"),
    ("cpu-2-seed1", "cpu-2-twin-seed1", "plain -> twin loss, seed 1"),
    ("all-12A-cpu", "cpu-2-fourier", "+ Fourier layer, plain loss, seed 0"),
    ("cpu-2-seed1", "cpu-2-fourier", "+ Fourier layer, plain loss, seed 1 -> 0"),
    ("cpu-2-twin", "cpu-2-fourier-twin", "+ Fourier layer, twin loss, seed 0"),
    ("cpu-2-twin-seed1", "cpu-2-fourier-twin-seed1", "+ Fourier layer, twin loss, seed 1"),
)
SHOWN = ("twin_cc", "map_cc", "phase_error_weighted")


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


def _restore_baseline(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("card.json", "model.safetensors", "model.onnx"):
        blob = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:models/all-12A/{name}"],
                              cwd=REPO, check=True, capture_output=True).stdout
        (folder / name).write_bytes(blob)


def main() -> None:
    from pattersolve_train.paired import paired_comparison, read_examples

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs", type=Path)
    ap.add_argument("--json", default=None, type=Path)
    ap.add_argument("--retrain-baseline", action="store_true")
    args = ap.parse_args()
    os.chdir(REPO)
    evals: dict[str, dict] = {}
    for name, _, config, seed in RUNS:
        ev_dir = args.runs / "ev" / name
        if name == "all-12A-cpu" and not args.retrain_baseline:
            model = args.runs / "ablation-models" / name
            _restore_baseline(model)
            source = ["--model", str(model), "--shards", "data/shards/all2"]
        else:
            run = args.runs / name
            if not _finished(run):
                _cli("fit", "--config", str(CONFIGS / config), "--seed", str(seed),
                     "--out", str(run), "--quiet")
            source = ["--run", str(run)]
        if not (ev_dir / "evaluation.json").is_file():
            _cli("evaluate", *source, "--n", "500", "--out", str(ev_dir), "--no-plots")
        evals[name] = json.loads((ev_dir / "evaluation.json").read_text())

    when = dt.date.today().isoformat()
    print(f"# Setup 2 ablation on a CPU ({when}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs; networks of all_12A.toml, 2,000 x 16 steps)\n")
    print("| network | config | seed | test maps | median CC | better hand | map CC | "
          "centrosymmetry | phase error w / unw (deg) | fit (min, 1 thread) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, label, config, seed in RUNS:
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
    for a, b, what in PAIRS:
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
    if args.json:
        rows = {name: {k: evals[name][k] for k in (
            "n", "median_cc", "median_twin_cc", "median_map_cc", "median_centrosymmetry",
            "median_phase_error_weighted", "median_phase_error_unweighted",
            "fraction_true_hand", "intervals_95")} for name, *_ in RUNS}
        args.json.write_text(json.dumps({"date": when, "machine": platform.platform(),
                                         "runs": rows, "pairs": pairs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
