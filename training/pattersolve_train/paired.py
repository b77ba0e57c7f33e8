"""Is a candidate model better than the shipped one? A paired comparison of two evaluations.

A card's median carries the sampling noise of its test maps (``intervals_95``: +-0.03 in
median CC for hard-tri's 200 maps), but two models evaluated on the *same* maps differ by much
less noise than that: each map's difficulty cancels. This resamples the test maps jointly
(paired bootstrap) and gives, per metric, the difference of the medians (candidate minus
baseline) with its 95 % interval; a model is better beyond noise where the interval excludes
zero on the good side. That is the question before committing a new weight file (it must
improve a card's numbers).

It is not the question whether one *recipe* (a config) beats another: the interval holds only
the test maps' sampling noise, not the training's. Two trainings of the CPU all-12A config
that differ only in their seed differ beyond it (median map CC +0.010, interval +0.002 to
+0.016, on 489 test maps; BENCHMARKS.md, "A global layer"), so a recipe needs its gain set
beside a seed-to-seed difference.

Both evaluations must be of the same test maps: the same fragments in the same order and the
same true maps (checked through each example's true-map centrosymmetry, which any change of
orientation, cell or B factor moves).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pattersolve.errors import ExitCode, PattersolveError

from .stats import RESAMPLES, bootstrap_interval

#: (per-example key, label, +1 where higher is better / -1 where lower is better).
METRICS: tuple[tuple[str, str, int], ...] = (
    ("cc", "median CC", +1),
    ("twin_cc", "median CC, better hand", +1),
    ("map_cc", "median map CC after alignment", +1),
    ("phase_error_weighted", "median phase error, weighted (deg)", -1),
    ("phase_error_unweighted", "median phase error, unweighted (deg)", -1),
)


@dataclass
class PairedMetric:
    """One metric: both medians, their difference and its paired 95 % interval."""

    key: str
    label: str
    sign: int
    baseline: float
    candidate: float
    interval: tuple[float, float]

    @property
    def difference(self) -> float:
        """Candidate median minus baseline median."""
        return self.candidate - self.baseline

    @property
    def verdict(self) -> str:
        """``better``, ``worse`` or ``within noise`` (the interval contains 0)."""
        lo, hi = self.interval
        if lo > 0 or hi < 0:
            return "better" if (lo > 0) == (self.sign > 0) else "worse"
        return "within noise"


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    """Per-example rows of an evaluation: its folder or its ``evaluation.json``."""
    p = Path(path)
    folder = p.parent if p.name == "evaluation.json" else p
    rows_path = folder / "examples.jsonl"
    if not rows_path.is_file():
        raise PattersolveError(f"{rows_path} not found",
                               "give an evaluation folder (pattersolve-train evaluate --out)",
                               ExitCode.INPUT_MISSING)
    return [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]


def paired_comparison(baseline: list[dict[str, Any]], candidate: list[dict[str, Any]],
                      resamples: int = RESAMPLES, seed: int = 0) -> list[PairedMetric]:
    """Differences of the medians over the same test maps, with paired bootstrap intervals.

    Parameters
    ----------
    baseline, candidate
        Per-example rows (``examples.jsonl``) of two evaluations of the same maps.
    resamples, seed
        Bootstrap resamples (maps drawn jointly for both) and their seed.

    Raises
    ------
    PattersolveError
        The two evaluations are not of the same maps.
    """
    if not baseline or [r["source"] for r in baseline] != [r["source"] for r in candidate]:
        raise PattersolveError(
            f"the two evaluations are of different test fragments ({len(baseline)} and "
            f"{len(candidate)} examples)", "evaluate both with the same shards and --n",
            ExitCode.USAGE)
    tc_a = np.array([r["true_centrosymmetry"] for r in baseline])
    tc_b = np.array([r["true_centrosymmetry"] for r in candidate])
    if not np.allclose(tc_a, tc_b, rtol=0, atol=1e-4):
        raise PattersolveError("the two evaluations place the same fragments differently (their "
                               "true maps differ: another cell, orientation, B or seed)",
                               "compare models of one data configuration", ExitCode.USAGE)
    out = []
    for key, label, sign in METRICS:
        if key not in baseline[0] or key not in candidate[0]:
            continue
        a = np.array([r[key] for r in baseline], dtype=np.float64)
        b = np.array([r[key] for r in candidate], dtype=np.float64)

        def diff(idx: np.ndarray, a: np.ndarray = a, b: np.ndarray = b) -> np.ndarray:
            return np.median(b[idx], axis=1) - np.median(a[idx], axis=1)

        out.append(PairedMetric(key, label, sign, float(np.median(a)), float(np.median(b)),
                                bootstrap_interval(diff, len(baseline), resamples, seed)))
    return out
