"""Evaluation on the test split: CC of the predicted density and phase error, with floors.

For each test example the network's density is compared with the true density (Pearson CC
over the grid, the paper's Fig. 4) and its structure factors (``V * ifftn`` of the predicted
map, :func:`pattersolve.fourier.structure_factors_from_map`) with the true ones through
:func:`pattersolve.phasematch.match_phases`, which searches the origin shift and the hand, as
CCP4 cphasematch did for the paper (Fig. 6: mean phase error and fraction < 60 deg per
resolution bin). The same search applied to random phases with the true amplitudes
(:func:`pattersolve.phasematch.random_phase_floor`) is reported beside every number: the
search alone makes random phases score about 80 deg, never 90.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pattersolve.errors import ExitCode, PattersolveError

from .files import write_json_atomic
from .stats import RESAMPLES, bootstrap_interval

#: The paper's test results (PHASING_NOTES.md), keyed by (cell edge, residues).
PAPER = {
    (20.0, "dialanine"): {"setup": "1a", "median_cc": 0.93, "median_phase_error": 52.0,
                          "note": "CC over the central 6 A"},
    (10.0, "dialanine"): {"setup": "1b", "median_cc": 0.98, "median_phase_error": 25.0},
    (12.0, "all"): {"setup": "2", "median_cc": 0.87, "median_phase_error": 64.0},
}


#: Seed of the test maps' random choices (placement, orientation), the same for every model:
#: a config's training ``seed`` must not change which maps its test numbers are of, or two
#: cards (and `pattersolve-train paired`) would compare different maps. Every shipped model
#: trained with seed 0, so their cards are of these maps.
TEST_MAPS_SEED = 0
#: Per-example keys whose median gets an interval, and the summary key it is stored under.
INTERVAL_KEYS = {"cc": "median_cc", "twin_cc": "median_twin_cc", "map_cc": "median_map_cc",
                 "phase_error_weighted": "median_phase_error_weighted",
                 "phase_error_unweighted": "median_phase_error_unweighted"}


def median_intervals(rows: list[dict[str, Any]], keys: dict[str, str] = INTERVAL_KEYS,
                     resamples: int = RESAMPLES, seed: int = 0
                     ) -> dict[str, list[float]]:
    """95 % bootstrap (percentile) intervals of the medians over the test examples.

    The sampling noise of a card's numbers: how far another draw of as many test maps from the
    same distribution would move each median. Every key is resampled with the same example
    indices (:func:`pattersolve_train.stats.bootstrap_interval` with one seed), so the
    intervals are those of one set of maps.

    Parameters
    ----------
    rows
        One dict per test example (``examples.jsonl``).
    keys
        Per-example key -> summary key of its median.
    resamples, seed
        Bootstrap resamples and the seed of their draw (deterministic).

    Returns
    -------
    dict
        Summary key -> ``[low, high]``.
    """
    if not rows:
        return {}
    out = {}
    for key, name in keys.items():
        values = np.array([r[key] for r in rows], dtype=np.float64)
        out[name] = list(bootstrap_interval(lambda idx, v=values: np.median(v[idx], axis=1),
                                            len(rows), resamples, seed))
    return out


@dataclass
class EvalSummary:
    """Result of :func:`evaluate`; ``data`` is what ``evaluation.json`` holds."""

    data: dict[str, Any]
    out: Path

    def one_line(self) -> str:
        """A line for the terminal."""
        d, f = self.data, self.data["random_floor"]
        hand = d.get("fraction_true_hand")
        hand_text = "-" if hand is None else f"{hand:.2f}"
        return (f"{self.out}: n={d['n']} median CC {d['median_cc']:.3f} (better hand "
                f"{d['median_twin_cc']:.3f}, centrosymmetry {d['median_centrosymmetry']:.2f}; "
                f"true maps {d['median_true_centrosymmetry']:.2f}), phase error "
                f"{d['median_phase_error_weighted']:.1f} deg weighted / "
                f"{d['median_phase_error_unweighted']:.1f} unweighted, true hand {hand_text} "
                f"of those < 60 (random floor "
                f"{f['median_phase_error_weighted']:.1f} / "
                f"{f['median_phase_error_unweighted']:.1f}, CC {f['median_map_cc']:.2f})")

    def record(self, key: str, value: Any) -> None:
        """Add ``key`` to the summary and rewrite ``evaluation.json`` (atomically)."""
        self.data[key] = value
        write_json_atomic(self.out / "evaluation.json", self.data)


def load_model_dir(model_dir: Path) -> tuple[Any, dict[str, str], dict[str, Any]]:
    """Network (eval mode, fp32), metadata and card of an exported model directory."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from pattersolve.network import NetworkConfig, PattersonNet

    from .train import as_float32

    path = model_dir / "model.safetensors"
    if not path.is_file():
        raise PattersolveError(f"no model.safetensors in {model_dir}",
                               "give a directory written by `pattersolve-train export`",
                               ExitCode.INPUT_MISSING)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("format") != "pattersolve-model-1":
        raise PattersolveError(f"{path}: not a pattersolve-model-1 file", "re-export it",
                               ExitCode.MODEL)
    model = PattersonNet(NetworkConfig.from_json(meta["config"]))
    model.load_state_dict(as_float32(load_file(str(path))))
    model.eval()
    card_path = model_dir / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return model, meta, card


def _aggregate_bins(per_example: list[list[dict]]) -> list[dict[str, float]]:
    n_bins = min(len(b) for b in per_example)
    out = []
    for k in range(n_bins):
        rows = [b[k] for b in per_example]
        out.append({
            "d_low": float(np.mean([r["d_low"] for r in rows])),
            "d_high": float(np.mean([r["d_high"] for r in rows])),
            "n": int(np.sum([r["n"] for r in rows])),
            "mean_weighted_error": float(np.mean([r["weighted_error"] for r in rows])),
            "mean_unweighted_error": float(np.mean([r["unweighted_error"] for r in rows])),
            "fraction_under_60": float(np.mean([r["fraction_under_60"] for r in rows])),
        })
    return out


def evaluate(run_dir: Path | None = None, model_dir: Path | None = None,
             shards: Path | None = None, n_examples: int = 500, out: Path | None = None,
             plots: bool = True, seed: int = 12345, batch_size: int = 16,
             floor_trials: int = 1, average_rotations: bool = False) -> EvalSummary:
    """Evaluate a run's checkpoint or an exported model on the test split.

    Parameters
    ----------
    run_dir, model_dir
        Exactly one: a training run, or a ``models/<name>`` directory (its ``card.json``
        supplies the data configuration).
    shards
        Shard directory with the test split (default: the run's / the card's).
    n_examples
        Number of test examples (the first ones of the split, placed deterministically).
    out
        Output directory (default ``<run>/evaluation``, or ``runs/evaluate/<model name>``
        for a model, so a shipped model folder is never written to; ``evaluation-rotations``
        / ``<model name>-rotations`` with ``average_rotations``): ``evaluation.json``,
        ``examples.jsonl`` and, with ``plots``, ``cc_histogram.png`` and
        ``phase_error_by_resolution.png``.
    seed
        Seed of the random-phase floor.
    floor_trials
        Random-phase trials per example (the floor is the median over examples).
    average_rotations
        Score the prediction averaged over the rotations of each cell onto itself
        (:func:`pattersolve.rotations.rotation_averaged`: 24 Pattersons per map in a cubic
        cell) instead of the single prediction; the network alone either way.
    """
    from .data import FragmentMaps
    from .shards import load_split, read_manifest

    cfg, model, source, base = _model_to_evaluate(run_dir, model_dir)
    shard_dir = Path(shards) if shards is not None else Path(cfg.shards)
    manifest = read_manifest(shard_dir)
    frags = load_split(shard_dir, "test", n_examples)
    if not frags:
        raise PattersolveError(f"{shard_dir} has no test fragments",
                               "prepare shards with a test split", ExitCode.DATA)
    ds = FragmentMaps(frags, cfg.data, TEST_MAPS_SEED, "test", "cpu")
    scores = score_examples(model, ds, batch_size, np.random.default_rng(seed), floor_trials,
                            average_rotations)
    data = {
        "n": len(scores.rows),
        # examples asked for: fragments that do not fit the cell are skipped, so n can be less
        "n_requested": n_examples,
        "test_maps_seed": TEST_MAPS_SEED,
        **source,
        "shards": str(shard_dir),
        "training_data": manifest["sha256"],
        **summarise(scores, cfg.data, floor_trials, average_rotations),
    }
    suffix = "-rotations" if average_rotations else ""
    if out is not None:
        out_dir = Path(out)
    elif run_dir is not None:
        out_dir = base / f"evaluation{suffix}"
    else:  # never into the model's folder (models/ is what ships)
        out_dir = Path("runs") / "evaluate" / f"{base.resolve().name}{suffix}"

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "evaluation.json", data)
    (out_dir / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scores.rows))
    if plots:
        write_plots(data, [r["cc"] for r in scores.rows], out_dir)
    return EvalSummary(data=data, out=out_dir)


def _model_to_evaluate(run_dir: Path | None, model_dir: Path | None
                       ) -> tuple[Any, Any, dict[str, Any], Path]:
    """The training config, the network (eval mode, fp32), what ``evaluation.json`` records
    as its source, and the folder it came from: a run's checkpoint or an exported model."""
    from pattersolve.runtime import sha256_file

    from .train import TrainConfig, load_run_model

    if run_dir is not None:
        cfg, model, ckpt = load_run_model(run_dir)
        return cfg, model, {"run": str(run_dir), "step": ckpt["step"]}, Path(run_dir)
    model, meta, card = load_model_dir(Path(model_dir))
    if "training" not in card:
        raise PattersolveError(f"{model_dir}/card.json has no training configuration",
                               "evaluate the run directory instead (--run)", ExitCode.MODEL)
    cfg = TrainConfig.from_dict(card["training"])
    # the weights evaluated, so a card is refreshed only from its own (`card`)
    source = {"model": str(model_dir), "name": meta.get("name"),
              "model_sha256": sha256_file(Path(model_dir) / "model.safetensors")}
    return cfg, model, source, Path(model_dir)


@dataclass
class Scores:
    """Per-example rows (``examples.jsonl``), per-example resolution bins of the model and of
    the random-phase floor, and the rotations averaged per example (``average_rotations``)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    bins: list[list[dict]] = field(default_factory=list)
    floor_bins: list[list[dict]] = field(default_factory=list)
    n_rotations: list[int] = field(default_factory=list)


def score_examples(model: Any, ds: Any, batch_size: int, rng: np.random.Generator,
                   floor_trials: int, average_rotations: bool) -> Scores:
    """Predict every example of ``ds`` (epoch-0 placements) and score it against the truth,
    beside the random-phase floor (``floor_trials`` draws from ``rng`` per example)."""
    import torch

    from .train import loss_terms, predict

    device = torch.device("cpu")
    scores = Scores()
    for g in ds.groups(list(range(len(ds))), batch_size):
        pred = predict(model, g.patterson, device)
        if average_rotations:
            pred = _rotation_averaged_batch(model, g, device, scores.n_rotations)
        _, cc = loss_terms(pred, g.density, 0.0)
        _, twin_cc = loss_terms(pred, g.density, 0.0, twin=True)
        for j in range(pred.shape[0]):
            _score_example(scores, g, j, pred[j, 0], float(cc[j]), float(twin_cc[j]), rng,
                           floor_trials)
    return scores


def _score_example(scores: Scores, g: Any, j: int, pred: Any, cc: float, twin_cc: float,
                   rng: np.random.Generator, floor_trials: int) -> None:
    """Example ``j`` of group ``g``: phase error and map CC after the origin and hand search,
    centrosymmetry, and the random-phase floor; appended to ``scores``."""
    from pattersolve.fourier import structure_factors_from_map
    from pattersolve.phasematch import match_phases, random_phase_floor
    from pattersolve.phases import centrosymmetry

    rho = pred.double().numpy()
    f_pred = structure_factors_from_map(rho, g.hkl, float(g.cell.volume))
    f_true = g.f[j].detach().cpu().numpy().astype(np.complex128)
    pm = match_phases(g.hkl, f_true, f_pred, g.cell)
    fl = random_phase_floor(g.hkl, f_true, g.cell, rng, trials=floor_trials)
    scores.bins.append(pm.bins)
    scores.floor_bins.append(fl.bins)
    scores.rows.append({"source": g.sources[j], "cc": cc, "twin_cc": twin_cc,
                        "centrosymmetry": centrosymmetry(rho),
                        "true_centrosymmetry": centrosymmetry(g.density[j, 0].double().numpy()),
                        "phase_error_weighted": pm.weighted_error,
                        "phase_error_unweighted": pm.unweighted_error,
                        "map_cc": pm.map_cc, "inverted": pm.inverted,
                        "fraction_under_60": float(pm.fraction_under.get(60, np.nan)),
                        "floor_weighted": fl.weighted_error,
                        "floor_unweighted": fl.unweighted_error,
                        "floor_map_cc": fl.map_cc})


def summarise(scores: Scores, data_cfg: Any, floor_trials: int, average_rotations: bool
              ) -> dict[str, Any]:
    """The summary of ``evaluation.json`` from ``d_min`` on: medians with their intervals,
    the hand, the random floor, the resolution bins and the paper's numbers."""
    rows = scores.rows

    def med(key: str) -> float:
        return float(np.median([r[key] for r in rows]))

    model_bins = _aggregate_bins(scores.bins)
    rand_bins = _aggregate_bins(scores.floor_bins)
    for b, f in zip(model_bins, rand_bins, strict=True):
        b["floor_mean_weighted_error"] = f["mean_weighted_error"]
        b["floor_fraction_under_60"] = f["fraction_under_60"]
    cell_key = (data_cfg.cell[0], data_cfg.residues) if data_cfg.cell else None
    under_60 = [r for r in rows if r["phase_error_weighted"] < 60]
    return {
        "d_min": data_cfg.d_min,
        "cell": list(data_cfg.cell) if data_cfg.cell else None,
        "median_cc": med("cc"),
        "median_twin_cc": med("twin_cc"),
        "median_centrosymmetry": med("centrosymmetry"),
        "median_true_centrosymmetry": med("true_centrosymmetry"),
        "mean_cc": float(np.mean([r["cc"] for r in rows])),
        "median_phase_error_weighted": med("phase_error_weighted"),
        "median_phase_error_unweighted": med("phase_error_unweighted"),
        "median_map_cc": med("map_cc"),
        "intervals_95": median_intervals(rows),
        "fraction_of_examples_under_60": float(np.mean([r["phase_error_weighted"] < 60
                                                        for r in rows])),
        # the hand, where a prediction has one: of the examples under 60 deg, the share whose
        # best alignment needed no inversion (0.5: the network does not know the hand)
        "fraction_true_hand": (float(np.mean([not r["inverted"] for r in under_60]))
                               if under_60 else None),
        "average_rotations": bool(average_rotations),
        "median_rotations": (float(np.median(scores.n_rotations)) if scores.n_rotations
                             else 1.0),
        "random_floor": {"median_phase_error_weighted": med("floor_weighted"),
                         "median_phase_error_unweighted": med("floor_unweighted"),
                         "median_map_cc": med("floor_map_cc"), "trials": floor_trials},
        "bins": model_bins,
        "paper": PAPER.get(cell_key) if cell_key else None,
    }


def _rotation_averaged_batch(model: Any, g: Any, device: Any, counts: list[int]) -> Any:
    """One group's predictions, each averaged over its cell's rotations (appends the number
    of rotations used per example to ``counts``)."""
    import torch

    from pattersolve.rotations import grid_rotations, rotation_averaged

    from .train import predict

    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x[:, None], dtype=np.float32))
        with torch.no_grad():
            return predict(model, t, device)[:, 0].cpu().numpy()

    pats = g.patterson[:, 0].cpu().numpy()
    rots = grid_rotations(g.cell, pats.shape[1:])
    out = []
    for p in pats:
        avg = rotation_averaged(p, rots, run)
        counts.append(avg.n_rotations)
        out.append(avg.density)
    return torch.from_numpy(np.stack(out)[:, None])


def write_plots(data: dict[str, Any], ccs: list[float], out_dir: Path) -> None:
    """``cc_histogram.png`` (like the paper's Fig. 4) and ``phase_error_by_resolution.png``
    (Fig. 6: mean phase error and fraction < 60 deg per resolution bin, random floor dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(ccs, bins=np.linspace(min(0.0, min(ccs)), 1.0, 41), color="tab:blue")
    ax.axvline(data["median_cc"], color="k", lw=1, label=f"median {data['median_cc']:.3f}")
    ax.set_xlabel("Pearson CC, predicted vs true density")
    ax.set_ylabel("test examples")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out_dir / "cc_histogram.png", dpi=120)
    plt.close(fig)

    b = data["bins"]
    x = [0.5 * (1 / r["d_low"] + 1 / r["d_high"]) for r in b]
    labels = [f"{0.5 * (r['d_low'] + r['d_high']):.2f}" for r in b]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(x, [r["mean_weighted_error"] for r in b], "o-", label="model")
    ax1.plot(x, [r["floor_mean_weighted_error"] for r in b], "k--", label="random phases")
    ax1.set_ylabel("mean phase error (deg, |F|-weighted)")
    ax2.plot(x, [r["fraction_under_60"] for r in b], "o-", label="model")
    ax2.plot(x, [r["floor_fraction_under_60"] for r in b], "k--", label="random phases")
    ax2.set_ylabel("fraction < 60 deg")
    for ax in (ax1, ax2):
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=45, fontsize=7)
        ax.set_xlabel("resolution (A)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "phase_error_by_resolution.png", dpi=120)
    plt.close(fig)
