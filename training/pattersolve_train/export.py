"""Export a training run to ``models/<name>/`` (the contract ``pattersolve/runtime.py`` loads).

Files:

* ``model.safetensors``: the network's state dict in eval form (BatchNorm kept, not folded),
  fp16 when the output on a batch of real validation maps changes by less than 1e-3 relative
  RMS per map (measured 3-5e-4 for the GPU-trained models, whose test-split median CC was
  then unchanged and phase error 0.1 deg higher), else fp32; the metadata dict below in the
  safetensors header;
* ``model.onnx``: legacy exporter (``dynamo=False``, opset 17: circular padding becomes
  Slice + Concat), input ``patterson`` and output ``density`` of shape
  ``(batch, 1, nu, nv, nw)`` with batch and the three grid sizes dynamic (even sizes), the same
  metadata in ``metadata_props``; checked against torch with ONNX Runtime on a 20 x 24 x 18
  grid (max abs difference < 1e-4); exported from the weights as stored (fp16-rounded when
  the safetensors file is fp16), so both files compute the same function; with fp16 weights
  BatchNorm stays unfused and the initializers are stored as fp16 behind exact Casts
  (:func:`fp16_initializers`), halving the file;
* ``card.json``: ``{"name", "metadata", "sha256": {"model.safetensors", "model.onnx"},
  "evaluation", "training"}``;
* ``README.md``: the model card (a head from the checkpoint, then the evaluation:
  :mod:`pattersolve_train.card`, which can also refresh it later from a new evaluation).

Metadata keys (str -> str): ``format`` = ``pattersolve-model-1``, ``name``, ``config``
(``NetworkConfig.to_json()``), ``grid_spacing`` and ``d_min`` (A), ``cell`` (JSON list of the
training cell edges, ``null`` for packed cells), ``task``, ``normalisation`` =
``minmax-per-map``, ``training_data`` (manifest SHA-256), ``metrics`` (JSON),
``pattersolve_version``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pattersolve import __version__
from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.network import PattersonNet, count_parameters
from pattersolve.runtime import sha256_file

from .card import card_body
from .evaluate import PAPER
from .train import METRICS, TrainConfig, as_float32, load_run_model

FP16_TOLERANCE = 1e-3  # relative RMS change of a map's output, fp16 vs fp32 weights
ONNX_TOLERANCE = 1e-4
ONNX_CHECK_SHAPE = (2, 1, 20, 24, 18)


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    directory: Path
    weights_dtype: str
    fp16_rel_rms: float
    onnx_max_diff: float
    card: dict[str, Any]


def describe_task(cfg: TrainConfig) -> str:
    """One line saying what the model was trained to do."""
    d = cfg.data
    what = {2: "dipeptides", 3: "tripeptides"}.get(d.length, f"{d.length}-residue peptides")
    residues = "Ala-Ala (truncated at CB)" if d.residues == "dialanine" else f"any {what}"
    if d.cell is not None:
        cell = "x".join(f"{x:g}" for x in d.cell) + " A P1 cell"
    else:
        cell = f"packed P1 cells (extent + {d.padding:g} A)"
    orient = ", random orientation" if d.rotation else ""
    return (f"Patterson map -> electron density of {residues} in a {cell}{orient}, "
            f"{d.d_min:g} A data on a {d.grid_spacing:g} A grid")


def validation_batch(cfg: TrainConfig) -> torch.Tensor:
    """Real Patterson maps from the validation split (random maps if the shards are gone)."""
    from .data import FragmentMaps
    from .shards import load_split

    try:
        frags = load_split(cfg.shards, "val", 8)
        groups = FragmentMaps(frags, cfg.data, cfg.seed, "val").batch(range(len(frags)), 0)
        if groups:
            return groups[0].patterson
    except PattersolveError:
        pass
    gen = torch.Generator().manual_seed(0)
    return torch.rand((4, 1, 20, 20, 20), generator=gen) * 2 - 1


def _init_line(init: dict[str, str]) -> str:
    """The card's line on what a run started from (``fit --init``)."""
    if init.get("kind") == "run":
        return (f"- started from the weights of run `{init['name']}` at step {init['step']} "
                f"(SHA-256 `{init['sha256']}` of its checkpoint)")
    return (f"- started from the weights of model `{init['name']}` (SHA-256 "
            f"`{init['sha256']}` of its safetensors file)")


def _hardware_text(ckpt: dict[str, Any]) -> str:
    """The machine a run trained on, or each machine with its steps where it was resumed on
    another (``hardware_segments``)."""
    segments = ckpt.get("hardware_segments") or []
    if len(segments) < 2:
        return str(ckpt.get("hardware"))
    ends = [s["from_step"] for s in segments[1:]] + [ckpt.get("step")]
    return "; then ".join(f"steps {s['from_step']}-{end} on {s['hardware']}"
                          for s, end in zip(segments, ends, strict=True))


def _paper(cfg: TrainConfig, evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """The paper's numbers for the run's setup (None for setups the paper did not have)."""
    return (evaluation or {}).get("paper") or (
        PAPER.get((cfg.data.cell[0], cfg.data.residues)) if cfg.data.cell else None)


def _card_head(name: str, meta: dict[str, str], cfg: TrainConfig, ckpt: dict[str, Any],
               sums: dict[str, str], weights_dtype: str) -> str:
    """The card's README.md up to its evaluation: task, files, network, data and training
    (what the checkpoint knows; :func:`pattersolve_train.card.card_body` follows it)."""
    lines = [
        f"# {name}", "",
        f"{meta['task']}.", "",
        "A 3D CNN after Pan et al., IUCrJ 10 (2023): Patterson map in, density out, both scaled "
        "to [-1, 1] by their own minimum and maximum (`minmax-per-map`).", "",
        "## Files", "",
        f"- `model.safetensors` ({weights_dtype}), SHA-256 `{sums['model.safetensors']}`",
        f"- `model.onnx` (opset 17, dynamic batch and even grid sizes), SHA-256 "
        f"`{sums['model.onnx']}`",
        "- `card.json`: the same metadata, checksums and evaluation as JSON", "",
        "## Network", "",
        f"`{meta['config']}` ({ckpt.get('n_parameters', 'n/a')} parameters)", "",
        "## Data", "",
        f"- training shards: manifest SHA-256 `{meta['training_data']}` "
        f"({ckpt.get('n_train_fragments', 'n/a')} training fragments; split by PDB entry, "
        "so no test entry is in the training set)",
        f"- residues: {cfg.data.residues}, fragment length {cfg.data.length}, B = "
        f"{cfg.data.b_iso if cfg.data.b_iso is not None else 'from the PDB'} A^2",
        (f"- cell: {meta['cell']} A" if cfg.data.cell else
         f"- cells: packed, one per example, edges = the rotated fragment's extent + "
         f"{cfg.data.padding} A rounded up to {cfg.data.cell_round} A")
        + f"; d_min {meta['d_min']} A, grid spacing {meta['grid_spacing']} A"
        + ("; random orientations" if cfg.data.rotation else ""), "",
        "## Training", "",
        f"- {ckpt.get('step')} steps of {cfg.batch_size * cfg.grad_accum} examples "
        f"({ckpt.get('examples_seen')} example passes), {cfg.optimizer}, lr {cfg.lr:g}, "
        f"schedule {cfg.schedule}; loss MSE + {cfg.loss_cc_weight:g} (1 - CC)"
        + (" against the better-fitting hand (`loss_twin`)" if cfg.loss_twin else ""),
        *([_init_line(ckpt["init_from"])] if ckpt.get("init_from") else []),
        *([f"- then BatchNorm statistics re-estimated over "
           f"{ckpt['bn_recalibrated']['bn_recalibrated']} training examples (`pattersolve-train "
           f"recalibrate`): validation CC {ckpt['bn_recalibrated']['before']['val_cc']:.3f} -> "
           f"{ckpt['bn_recalibrated']['val_cc']:.3f}"] if ckpt.get("bn_recalibrated") else []),
        f"- run name `{cfg.name}`; the full configuration is in card.json (`training`)",
        f"- hardware: {_hardware_text(ckpt)}",
        f"- wall time: {float(ckpt.get('wall_time', 0)) / 60:.1f} min", "",
    ]
    return "\n".join(lines) + "\n"


def fp16_initializers(proto: Any) -> int:
    """Store the float32 initializers that are fp16 values as fp16, each behind a Cast.

    Halves the ONNX file of an fp16 model without changing the function it computes (the
    Cast back to float32 is exact); ONNX Runtime folds the casts and fuses BatchNorm into
    the convolutions when it loads the model (checked with onnxruntime 1.32: its optimised
    graph of alaala-10A has no Cast or BatchNormalization left). Returns the number of
    converted tensors.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    keep, casts = [], []
    for init in graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype != np.float32 or a.size < 16 or not np.array_equal(
                a.astype(np.float16).astype(np.float32), a):
            keep.append(init)
            continue
        half = numpy_helper.from_array(a.astype(np.float16), f"{init.name}.fp16")
        keep.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}.cast"))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return len(casts)


def export_model(run_dir: str | os.PathLike[str], name: str,
                 models_dir: str | os.PathLike[str] = "models", task: str | None = None,
                 overwrite: bool = False) -> ExportResult:
    """Write ``<models_dir>/<name>/`` from the run's latest checkpoint.

    The directory is assembled under a temporary name and renamed into place, so a reader
    never sees a half-written model.
    """
    import onnx  # noqa: F401  (missing ONNX tools fail before anything is read or written)
    import onnxruntime  # noqa: F401
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    cfg, model, ckpt = load_run_model(run_dir)
    target = Path(models_dir) / name
    if target.exists() and not overwrite:
        raise PattersolveError(f"{target} exists", "add --overwrite or choose another --name",
                               ExitCode.OUTPUT)
    if not name or "/" in name or name.startswith("."):
        raise PattersolveError(f"bad model name {name!r}", "use e.g. alaala-10A", ExitCode.USAGE)
    x = validation_batch(cfg)
    half, model16, fp16_diff = fp16_weights(model, x)
    use_fp16 = fp16_diff < FP16_TOLERANCE
    stored, exported = (half, model16) if use_fp16 else (model.state_dict(), model)
    evaluation = _read_json(run_dir / "evaluation" / "evaluation.json")
    rotations = _read_json(run_dir / "evaluation-rotations" / "evaluation.json")
    meta = model_metadata(name, cfg, ckpt, task or describe_task(cfg), evaluation,
                          last_validation(run_dir))

    Path(models_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir))
    try:
        save_file({k: v.contiguous() for k, v in stored.items()}, str(work / "model.safetensors"),
                  metadata=meta)
        onnx_path = work / "model.onnx"
        write_onnx(exported, onnx_path, meta, use_fp16)
        onnx_diff = check_onnx(onnx_path, exported, x, meta)
        weights_dtype = "fp16" if use_fp16 else "fp32"
        card = {"name": name, "metadata": meta,
                "sha256": {"model.safetensors": sha256_file(work / "model.safetensors"),
                           "model.onnx": sha256_file(onnx_path)},
                "evaluation": evaluation,
                **({"evaluation_rotations": rotations} if rotations else {}),
                "training": cfg.to_dict(),
                "export": {"weights_dtype": weights_dtype, "fp16_rel_rms": fp16_diff,
                           "onnx_max_diff": onnx_diff, "step": ckpt.get("step")}}
        _write_card(work, run_dir, card, cfg, dict(ckpt, n_parameters=count_parameters(model)))
        _publish(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportResult(directory=target, weights_dtype=weights_dtype, fp16_rel_rms=fp16_diff,
                        onnx_max_diff=onnx_diff, card=card)


def fp16_weights(model: nn.Module, x: torch.Tensor
                 ) -> tuple[dict[str, torch.Tensor], nn.Module, float]:
    """The state dict in fp16, a copy of the network computing with those values (in fp32,
    eval mode), and the largest relative RMS change of a map's output on the batch ``x``."""
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    model16 = PattersonNet(model.cfg)
    model16.load_state_dict(as_float32(half))
    model16.eval()
    with torch.no_grad():
        a, b = model(x).flatten(1), model16(x).flatten(1)
        fp16_diff = float(((b - a).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)).max())
    return half, model16, fp16_diff


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON file's content, or ``{}`` where there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else {}


def last_validation(run_dir: Path) -> dict[str, Any]:
    """The run's last validation record in ``metrics.jsonl`` (loss, CC, centrosymmetry, step)."""
    last_val: dict[str, Any] = {}
    metrics_path = run_dir / METRICS
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            rec = json.loads(line)
            if "val_cc" in rec:
                last_val = {k: rec[k] for k in ("val_loss", "val_cc", "val_centrosymmetry",
                                                "step") if k in rec}
    return last_val


def model_metadata(name: str, cfg: TrainConfig, ckpt: dict[str, Any], task: str,
                   evaluation: dict[str, Any], last_val: dict[str, Any]) -> dict[str, str]:
    """The metadata both weight files carry (the module docstring lists the keys)."""
    metrics = {k: evaluation[k] for k in ("n", "median_cc", "median_twin_cc",
                                          "median_centrosymmetry",
                                          "median_phase_error_weighted",
                                          "median_phase_error_unweighted", "median_map_cc")
               if k in evaluation}
    if evaluation:
        metrics["random_floor"] = evaluation["random_floor"]
    metrics.update(last_val)
    return {
        "format": "pattersolve-model-1",
        "name": name,
        "config": cfg.network.to_json(),
        "grid_spacing": str(float(cfg.data.grid_spacing)),
        "d_min": str(float(cfg.data.d_min)),
        "cell": json.dumps(list(cfg.data.cell) if cfg.data.cell else None),
        "task": task,
        "normalisation": "minmax-per-map",
        "training_data": str(ckpt.get("training_data", "")),
        "metrics": json.dumps(metrics, sort_keys=True),
        "pattersolve_version": __version__,
    }


def write_onnx(model: nn.Module, path: Path, meta: dict[str, str], fp16: bool) -> None:
    """Export ``model`` to ``path`` (legacy exporter, opset 17, dynamic batch and grid) with
    ``meta`` as its ``metadata_props``; with ``fp16`` weights the initializers are stored as
    the fp16 values themselves (:func:`fp16_initializers`)."""
    import onnx

    dyn = {0: "batch", 2: "nu", 3: "nv", 4: "nw"}
    with warnings.catch_warnings():  # the legacy exporter announces its removal
        warnings.simplefilter("ignore", DeprecationWarning)
        # fp16 weights: keep BatchNorm unfused (PRESERVE on an eval-mode model), so
        # every initializer is exactly the fp16 value stored in the safetensors file
        mode = torch.onnx.TrainingMode.PRESERVE if fp16 else torch.onnx.TrainingMode.EVAL
        torch.onnx.export(model, (torch.zeros(1, 1, 16, 16, 16),), str(path),
                          dynamo=False, opset_version=17, input_names=["patterson"],
                          output_names=["density"], training=mode,
                          do_constant_folding=not fp16,  # keep initializers as stored
                          dynamic_axes={"patterson": dyn, "density": dyn})
    proto = onnx.load(str(path))
    if fp16:
        fp16_initializers(proto)
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def check_onnx(path: Path, model: nn.Module, x: torch.Tensor, meta: dict[str, str]) -> float:
    """The largest absolute difference of ONNX Runtime's output from torch's; raises
    ``RuntimeError`` when it reaches :data:`ONNX_TOLERANCE` or the metadata does not read back.

    Two probes: the real Patterson maps ``x`` of the fp16 check (in distribution; a random map
    can drive tanh into saturation, where any two backends agree) and random values on a grid
    of other, unequal sizes (the dynamic axes).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    probe = torch.rand(ONNX_CHECK_SHAPE, generator=gen) * 2 - 1
    onnx_diff = 0.0
    for batch in (x, probe):
        with torch.no_grad():
            want = model(batch).numpy()
        got = sess.run(["density"], {"patterson": batch.numpy()})[0]
        onnx_diff = max(onnx_diff, float(np.abs(got - want).max()))
    if onnx_diff >= ONNX_TOLERANCE or sess.get_modelmeta().custom_metadata_map != meta:
        raise RuntimeError(f"ONNX check failed: max diff {onnx_diff:.2e} on validation "
                           f"maps and {ONNX_CHECK_SHAPE}, or metadata not read back")
    return onnx_diff


def _write_card(work: Path, run_dir: Path, card: dict[str, Any], cfg: TrainConfig,
                ckpt: dict[str, Any]) -> None:
    """``card.json``, the run's evaluation figures and ``README.md`` (head and body)."""
    (work / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    plots = sorted((run_dir / "evaluation").glob("*.png"))
    for png in plots:  # the evaluation's figures travel with the card
        shutil.copyfile(png, work / png.name)
    name, evaluation = card["name"], card["evaluation"]
    (work / "README.md").write_text(
        _card_head(name, card["metadata"], cfg, ckpt, card["sha256"],
                   card["export"]["weights_dtype"])
        + card_body(name, evaluation, card.get("evaluation_rotations") or {},
                    _paper(cfg, evaluation), [png.name for png in plots]))


def _publish(work: Path, target: Path) -> None:
    """Move the assembled folder into place (replacing ``target``), world-readable."""
    if target.exists():
        shutil.rmtree(target)
    work.chmod(0o755)  # mkdtemp makes 0700: a published model is world-readable
    for child in work.iterdir():
        child.chmod(0o644)
    os.replace(work, target)
