"""Learning curves of training runs: validation CC and training loss against examples seen.

Usage::

    python training/gpu/plot_runs.py runs/gpu-h100/gpu_1b runs/gpu-h100/gpu_1b_paper \\
        runs/gpu-h100/gpu_2 --out bench/results/gpu_training_curves.png

Reads each run's ``metrics.jsonl`` (written by ``pattersolve-train fit``) and its
``config.json`` (batch size), and prints the last validation CC of each run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in args.runs:
        cfg = json.loads((run / "config.json").read_text())
        per_step = cfg["batch_size"] * cfg["grad_accum"]
        rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s]
        val = [(r["step"] * per_step, r["val_cc"]) for r in rows if "val_cc" in r]
        train = [(r["step"] * per_step, r["train_loss"]) for r in rows if "train_loss" in r]
        label = f"{run.name} ({cfg['name']})"
        if val:
            ax1.plot(*zip(*val, strict=True), marker=".", label=label)
            print(f"{run.name}: last val CC {val[-1][1]:.4f} after {val[-1][0]} examples")
        if train:
            ax2.plot(*zip(*train, strict=True), label=label, lw=0.8)
    ax1.set(xlabel="examples seen", ylabel="median validation CC", title="validation")
    ax2.set(xlabel="examples seen", ylabel="training loss", yscale="log", title="training")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
