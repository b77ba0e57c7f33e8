"""Evaluation on the test split: CC of the predicted density and phase error, with floors.

For each test example the network's density is compared with the true density (Pearson CC
over the grid, the paper's Fig. 4) and its structure factors (``V * ifftn`` of the predicted
map, :func:`pattersolve.simulate.structure_factors_from_map`) with the true ones through
:func:`pattersolve.phasematch.match_phases`, which searches the origin shift and the hand, as
CCP4 cphasematch did for the paper (Fig. 6: mean phase error and fraction < 60 deg per
resolution bin). The same search applied to random phases with the true amplitudes
(:func:`pattersolve.phasematch.random_phase_floor`) is reported beside every number: the
search alone makes random phases score about 80 deg, never 90.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pattersolve.errors import ExitCode, PattersolveError

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
        tmp = self.out / "evaluation.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(tmp, self.out / "evaluation.json")


def load_model_dir(model_dir: Path) -> tuple[Any, dict[str, str], dict[str, Any]]:
    """Network (eval mode, fp32), metadata and card of an exported model directory."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from pattersolve.network import NetworkConfig, PattersonNet

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
    state = {k: (v.float() if v.is_floating_point() else v)
             for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
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
    import torch

    from pattersolve.fourier import structure_factors_from_map
    from pattersolve.phasematch import match_phases, random_phase_floor
    from pattersolve.phases import centrosymmetry
    from pattersolve.rotations import grid_rotations, rotation_averaged
    from pattersolve.runtime import sha256_file

    from .data import DataConfig, FragmentMaps
    from .shards import load_split, read_manifest
    from .train import (
        TrainConfig,
        config_for_run,
        loss_terms,
        model_weights,
        predict,
        read_checkpoint,
    )

    if run_dir is not None:
        cfg = config_for_run(run_dir)
        tensors, ckpt = read_checkpoint(Path(run_dir))
        from pattersolve.network import PattersonNet

        model = PattersonNet(cfg.network)
        model.load_state_dict(model_weights(tensors))
        model.eval()
        source = {"run": str(run_dir), "step": ckpt["step"]}
        base = Path(run_dir)
    else:
        model, meta, card = load_model_dir(Path(model_dir))
        if "training" not in card:
            raise PattersolveError(f"{model_dir}/card.json has no training configuration",
                                   "evaluate the run directory instead (--run)", ExitCode.MODEL)
        cfg = TrainConfig.from_dict(card["training"])
        # the weights evaluated, so a card is refreshed only from its own (`card`)
        source = {"model": str(model_dir), "name": meta.get("name"),
                  "model_sha256": sha256_file(Path(model_dir) / "model.safetensors")}
        base = Path(model_dir)
    data_cfg: DataConfig = cfg.data
    shard_dir = Path(shards) if shards is not None else Path(cfg.shards)
    manifest = read_manifest(shard_dir)
    frags = load_split(shard_dir, "test", n_examples)
    if not frags:
        raise PattersolveError(f"{shard_dir} has no test fragments",
                               "prepare shards with a test split", ExitCode.DATA)
    ds = FragmentMaps(frags, data_cfg, TEST_MAPS_SEED, "test", "cpu")
    device = torch.device("cpu")
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    bins, floor_bins = [], []
    n_rotations: list[int] = []
    for start in range(0, len(ds), batch_size):
        idx = list(range(start, min(len(ds), start + batch_size)))
        for g in ds.batch(idx, epoch=0):
            pred = predict(model, g.patterson, device)
            if average_rotations:
                pred = _rotation_averaged_batch(model, g, device, grid_rotations,
                                                rotation_averaged, n_rotations)
            _, cc = loss_terms(pred, g.density, 0.0)
            _, twin_cc = loss_terms(pred, g.density, 0.0, twin=True)
            volume = float(g.cell.volume)
            for j in range(pred.shape[0]):
                rho = pred[j, 0].double().numpy()
                f_pred = structure_factors_from_map(rho, g.hkl, volume)
                f_true = g.f[j].detach().cpu().numpy().astype(np.complex128)
                pm = match_phases(g.hkl, f_true, f_pred, g.cell)
                fl = random_phase_floor(g.hkl, f_true, g.cell, rng, trials=floor_trials)
                bins.append(pm.bins)
                floor_bins.append(fl.bins)
                rows.append({"source": g.sources[j], "cc": float(cc[j]),
                             "twin_cc": float(twin_cc[j]),
                             "centrosymmetry": centrosymmetry(rho),
                             "true_centrosymmetry": centrosymmetry(
                                 g.density[j, 0].double().numpy()),
                             "phase_error_weighted": pm.weighted_error,
                             "phase_error_unweighted": pm.unweighted_error,
                             "map_cc": pm.map_cc, "inverted": pm.inverted,
                             "fraction_under_60": float(pm.fraction_under.get(60, np.nan)),
                             "floor_weighted": fl.weighted_error,
                             "floor_unweighted": fl.unweighted_error,
                             "floor_map_cc": fl.map_cc})

    def med(key: str) -> float:
        return float(np.median([r[key] for r in rows]))

    model_bins = _aggregate_bins(bins)
    rand_bins = _aggregate_bins(floor_bins)
    for b, f in zip(model_bins, rand_bins, strict=True):
        b["floor_mean_weighted_error"] = f["mean_weighted_error"]
        b["floor_fraction_under_60"] = f["fraction_under_60"]
    cell_key = (data_cfg.cell[0], data_cfg.residues) if data_cfg.cell else None
    data = {
        "n": len(rows),
        # examples asked for: fragments that do not fit the cell are skipped, so n can be less
        "n_requested": n_examples,
        "test_maps_seed": TEST_MAPS_SEED,
        **source,
        "shards": str(shard_dir),
        "training_data": manifest["sha256"],
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
        "fraction_true_hand": (float(np.mean([not r["inverted"] for r in rows
                                              if r["phase_error_weighted"] < 60]))
                               if any(r["phase_error_weighted"] < 60 for r in rows)
                               else None),
        "average_rotations": bool(average_rotations),
        "median_rotations": float(np.median(n_rotations)) if n_rotations else 1.0,
        "random_floor": {"median_phase_error_weighted": med("floor_weighted"),
                         "median_phase_error_unweighted": med("floor_unweighted"),
                         "median_map_cc": med("floor_map_cc"), "trials": floor_trials},
        "bins": model_bins,
        "paper": PAPER.get(cell_key) if cell_key else None,
    }
    suffix = "-rotations" if average_rotations else ""
    if out is not None:
        out_dir = Path(out)
    elif run_dir is not None:
        out_dir = base / f"evaluation{suffix}"
    else:  # never into the model's folder (models/ is what ships)
        out_dir = Path("runs") / "evaluate" / f"{base.resolve().name}{suffix}"

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "evaluation.json.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, out_dir / "evaluation.json")
    (out_dir / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if plots:
        write_plots(data, [r["cc"] for r in rows], out_dir)
    return EvalSummary(data=data, out=out_dir)


def _rotation_averaged_batch(model: Any, g: Any, device: Any, grid_rotations: Any,
                             rotation_averaged: Any, counts: list[int]) -> Any:
    """One group's predictions, each averaged over its cell's rotations (appends the number
    of rotations used per example to ``counts``)."""
    import torch

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
