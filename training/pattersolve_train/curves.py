"""Learning curves of training runs: validation CC and training loss against examples seen.

``pattersolve-train curves RUN... --out curves.png`` reads each run folder that
``pattersolve-train fit`` wrote (``config.json`` for the examples per step, ``metrics.jsonl``
for the logged losses and evaluations) and draws them side by side, so runs of different batch
sizes share one x axis. matplotlib is imported only to draw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pattersolve.errors import ExitCode, PattersolveError

#: What ``fit`` writes in a run folder (the names of :mod:`pattersolve_train.train`, which
#: imports torch; a plot does not need it).
CONFIG_JSON = "config.json"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class RunCurves:
    """One run's curves, x in examples seen (steps x batch size x gradient accumulation)."""

    run: Path
    name: str  # the config's name
    validation: list[tuple[int, float]]  # (examples, median validation CC)
    training: list[tuple[int, float]]  # (examples, training loss)

    def one_line(self) -> str:
        """The run's last validation CC, or that it has none yet."""
        if not self.validation:
            return f"{self.run}: no validation CC logged yet"
        examples, cc = self.validation[-1]
        return f"{self.run}: last validation CC {cc:.4f} after {examples} examples"


def read_curves(run: Path) -> RunCurves:
    """The curves of one run folder; a folder without ``fit``'s files is refused."""
    config, metrics = run / CONFIG_JSON, run / METRICS
    if not (config.is_file() and metrics.is_file()):
        raise PattersolveError(f"{run} is not a training run (no {CONFIG_JSON} and {METRICS})",
                               "give run folders written by `pattersolve-train fit`",
                               ExitCode.INPUT_MISSING)
    try:
        cfg = json.loads(config.read_text())
        per_step = int(cfg["batch_size"]) * int(cfg["grad_accum"])
        rows = [json.loads(s) for s in metrics.read_text().splitlines() if s.strip()]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PattersolveError(f"{run}: unreadable {CONFIG_JSON} or {METRICS} ({exc})",
                               "give run folders written by `pattersolve-train fit`",
                               ExitCode.INPUT_FORMAT) from exc
    validation = [(r["step"] * per_step, r["val_cc"]) for r in rows if "val_cc" in r]
    training = [(r["step"] * per_step, r["train_loss"]) for r in rows if "train_loss" in r]
    return RunCurves(run, str(cfg.get("name", run.name)), validation, training)


def plot_curves(runs: list[Path], out: Path) -> list[RunCurves]:
    """Draw the runs' validation CC and training loss (log scale) into the PNG ``out``.

    Parameters
    ----------
    runs
        Run folders of ``pattersolve-train fit`` (finished or not).
    out
        The PNG to write; its folder is created.

    Returns
    -------
    list of RunCurves
        What was drawn, one per run, in the order given.
    """
    curves = [read_curves(run) for run in runs]  # every run checked before drawing
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_val, ax_train) = plt.subplots(1, 2, figsize=(10, 3.8))
    for c in curves:
        label = f"{c.run.name} ({c.name})"
        if c.validation:
            ax_val.plot(*zip(*c.validation, strict=True), marker=".", label=label)
        if c.training:
            ax_train.plot(*zip(*c.training, strict=True), label=label, lw=0.8)
    ax_val.set(xlabel="examples seen", ylabel="median validation CC", title="validation")
    ax_train.set(xlabel="examples seen", ylabel="training loss", yscale="log", title="training")
    ax_val.legend(fontsize=8)
    for ax in (ax_val, ax_train):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return curves
