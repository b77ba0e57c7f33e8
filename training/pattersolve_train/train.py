"""Training loop for the Patterson-to-density network, readable top to bottom (nanoGPT style).

Run with ``pattersolve-train fit --config training/configs/cpu_1b.toml`` or, for several
processes, ``torchrun --nproc_per_node 2 -m pattersolve_train.cli fit --config ...``.

The sections, in the order a run uses them:

1. config: :class:`TrainConfig`, loaded from TOML (:func:`load_config`);
2. processes and devices: torchrun's rank and world size, the device, the machine's name;
3. data (:class:`pattersolve_train.data.FragmentMaps`): batch ``m`` of step ``s`` is a pure
   function of (seed, s, m), so resuming and any DDP world size see the same examples;
4. model and optimiser: a fresh network from the seed, or weights from a model or run
   (:func:`initialise_from`); the learning rate (:func:`lr_at`) is a pure function of the
   step (no scheduler state);
5. loss and step: MSE + ``w`` (1 - Pearson CC) per example (:func:`loss_terms`);
   micro-batches and cell groups accumulate gradients (:func:`forward_backward`);
6. evaluation: validation loss, CC and centrosymmetry (:func:`evaluate_loss`);
7. checkpoints (:func:`save_checkpoint` / :func:`load_checkpoint`): safetensors for every
   tensor (weights, optimiser moments, RNG states), JSON for the rest, both written
   atomically; nothing is ever unpickled;
8. the loop, :func:`fit`: evaluation, JSONL metrics, checkpoints every N steps and on
   SIGTERM/SIGINT;
9. after training: :func:`recalibrate_run` (BatchNorm statistics of a finished run).

Exact resume: training N steps, stopping, resuming and training N more gives bit-identical
weights to 2N steps in one go on CPU (tests/test_train_fit.py checks it).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import signal
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.network import NetworkConfig, PattersonNet, count_parameters
from pattersolve.runtime import sha256_file

from .data import DataConfig, FragmentMaps, Group, fixed_indices
from .files import write_file_atomic, write_json_atomic, write_text_atomic
from .shards import load_split, read_manifest

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_JSON = "checkpoint.json"
METRICS = "metrics.jsonl"
CONFIG_JSON = "config.json"


# =============================================================================================
# 1. config
# =============================================================================================
@dataclass
class TrainConfig:
    """Everything a training run depends on.

    TOML layout: top-level ``name`` and ``shards``; tables ``[data]`` (:class:`DataConfig`),
    ``[network]`` (:class:`pattersolve.network.NetworkConfig`), and ``[optim]``,
    ``[schedule]``, ``[run]`` whose keys are the fields below (the tables only group them).

    Batching: ``batch_size`` examples per micro-batch summed over all DDP ranks (each rank
    takes ``batch_size / world_size``), ``grad_accum`` micro-batches per optimiser step; one
    optimiser step sees ``batch_size * grad_accum`` examples whatever the world size. An
    epoch is ``n_train // (batch_size * grad_accum)`` steps.

    Cell buckets (``bucket_by_cell``, packed cells): the epoch's order is cut into chunks of
    ``bucket_chunk`` micro-batches, and each chunk is regrouped so that a micro-batch mostly
    shares one cell (:meth:`FragmentMaps.bucketed_batches`): a few forward passes instead of
    one per example. Batches stay a pure function of (seed, epoch, step).

    Loss: ``MSE + loss_cc_weight (1 - CC)`` per example; ``loss_twin`` scores each example
    against whichever hand of its target it fits better (:func:`loss_terms`).

    Schedules (``schedule``): ``"exp2"`` the paper's two-phase exponential decay, lr x
    ``gamma1`` per epoch for the first ``phase1_epochs`` epochs then x ``gamma2`` per epoch
    (``per_step = true`` decays continuously, by the same amount per epoch); ``"cosine"``
    from ``lr`` to ``min_lr``; ``"onecycle"`` (warm up over ``onecycle_pct`` of the run from
    lr/25, then cosine to lr/1e4); ``"constant"``. ``warmup_steps`` applies to all but
    onecycle.
    """

    name: str = "run"
    shards: str = "data/shards/alaala"
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    # [optim]
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    batch_size: int = 16
    grad_accum: int = 1
    loss_cc_weight: float = 0.1
    loss_twin: bool = False
    grad_clip: float = 0.0
    bucket_by_cell: bool = False
    bucket_chunk: int = 64
    # [schedule]
    schedule: str = "exp2"
    gamma1: float = 0.86
    phase1_epochs: int = 12
    gamma2: float = 0.9991
    per_step: bool = False
    warmup_steps: int = 0
    min_lr: float = 0.0
    onecycle_pct: float = 0.3
    # [run]
    epochs: float | None = None
    max_steps: int | None = None
    max_train_fragments: int | None = None
    eval_every: int = 200
    eval_examples: int = 128
    eval_batch_size: int = 32
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    num_threads: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', not {self.optimizer!r}")
        if self.schedule not in ("exp2", "cosine", "onecycle", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError("give exactly one of run.epochs and run.max_steps")
        if self.bucket_chunk < 1:
            raise ValueError(f"bucket_chunk must be >= 1, not {self.bucket_chunk}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (``data`` and ``network`` nested)."""
        out = asdict(self)
        out["network"] = json.loads(self.network.to_json())
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """Build from TOML tables or :meth:`to_dict` output; unknown keys are an error."""
        flat: dict[str, Any] = {}
        for key, value in raw.items():
            if key in ("optim", "schedule", "run") and isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}")
        data = flat.pop("data", {})
        net = flat.pop("network", {})
        if data.get("padding") is not None and "cell" not in data:
            data["cell"] = None  # packed cells replace the default cube
        if "cell" in data and data["cell"] is not None:
            data["cell"] = tuple(data["cell"])
        return cls(data=DataConfig(**data), network=NetworkConfig.from_json(json.dumps(net)),
                   **flat)


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a TOML training config."""
    p = Path(path)
    if not p.is_file():
        raise PattersolveError(f"config {p} not found",
                               "give a TOML file, e.g. training/configs/cpu_1b.toml",
                               ExitCode.INPUT_MISSING)
    try:
        return TrainConfig.from_dict(tomllib.loads(p.read_text()))
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        raise PattersolveError(f"config {p}: {exc}", "fix the TOML (see training/configs/)",
                               ExitCode.INPUT_FORMAT) from exc


def config_for_run(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """The configuration a run was trained with (its ``config.json``)."""
    path = Path(run_dir) / CONFIG_JSON
    if not path.is_file():
        raise PattersolveError(f"{run_dir} is not a training run (no {CONFIG_JSON})",
                               "give the --out directory of `pattersolve-train fit`",
                               ExitCode.INPUT_MISSING)
    return TrainConfig.from_dict(json.loads(path.read_text()))


def with_overrides(cfg: TrainConfig, **kw: Any) -> TrainConfig:
    """A copy of ``cfg`` with some top-level fields replaced (None values ignored)."""
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})


# =============================================================================================
# 2. processes and devices
# =============================================================================================
def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PattersolveError("device cuda requested but CUDA is not available",
                                   "set run.device = 'cpu' or 'auto'", ExitCode.BACKEND)
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)


def start_processes(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """This process's rank, the world size and its device (torchrun's environment).

    Joins the process group when there are several processes, and applies the config's
    thread count and the cuDNN autotuning choice.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    if cfg.batch_size % world:
        raise PattersolveError(f"batch_size {cfg.batch_size} is not divisible by the world "
                               f"size {world}", "choose a batch size divisible by the number "
                               "of processes", ExitCode.USAGE)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":
        # autotune convolutions for a fixed cell (one map shape); packed cells change shape
        # every group, where autotuning each new shape costs more than it saves
        torch.backends.cudnn.benchmark = cfg.data.cell is not None
    return rank, world, device


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description(device: torch.device) -> str:
    """One line naming the machine (GPU name, or CPU model, the vector instruction set torch's
    kernels use, CPU and thread count; torch version; OS).

    On a CPU a re-run is bit-identical only with the same thread count and the same kernels,
    and torch picks those by instruction set (``torch.backends.cpu.get_cpu_capability``), so
    both are recorded.
    """
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = (f"{cpu_model()} (torch kernels {torch.backends.cpu.get_cpu_capability()}), "
                f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    return f"{what}; torch {torch.__version__}; {platform.platform()}"


def hardware_segments(meta: dict[str, Any] | None, step: int, hardware: str
                      ) -> list[dict[str, Any]]:
    """Where each part of a run ran: the resumed checkpoint's segments (``meta``; None for a
    new run), plus this machine from ``step`` on when it is another.

    A run resumed elsewhere (another GPU, a CPU with other kernels) is not the run an
    uninterrupted one would have been, and its card says so.
    """
    segments: list[dict[str, Any]] = []
    if meta is not None:
        segments = list(meta.get("hardware_segments")
                        or [{"from_step": 0, "hardware": meta.get("hardware")}])
    if not segments or segments[-1]["hardware"] != hardware:
        segments.append({"from_step": step, "hardware": hardware})
    return segments


# =============================================================================================
# 3. data
# =============================================================================================
def check_shards(cfg: TrainConfig) -> dict[str, Any]:
    """The manifest of ``cfg.shards``, checked against the config's residues and length."""
    manifest = read_manifest(cfg.shards)
    prep = manifest["config"]
    want_dialanine = cfg.data.residues == "dialanine"
    if bool(prep.get("dialanine")) != want_dialanine or int(prep.get("length", 0)) != \
            cfg.data.length:
        raise PattersolveError(
            f"shards {cfg.shards} hold length={prep.get('length')} "
            f"dialanine={prep.get('dialanine')}, the config wants length={cfg.data.length} "
            f"residues={cfg.data.residues}",
            "prepare matching shards (pattersolve-train prepare --dialanine/--length) or "
            "point `shards` at them", ExitCode.DATA)
    return manifest


def load_datasets(cfg: TrainConfig, device: torch.device) -> tuple[FragmentMaps, FragmentMaps]:
    """The training and validation maps (``max_train_fragments`` and ``eval_examples``
    fragments at most), computed on ``device``."""
    train_frags = load_split(cfg.shards, "train", cfg.max_train_fragments)
    val_frags = load_split(cfg.shards, "val", cfg.eval_examples)
    train_ds = FragmentMaps(train_frags, cfg.data, cfg.seed, "train", str(device))
    val_ds = FragmentMaps(val_frags, cfg.data, cfg.seed, "val", str(device))
    return train_ds, val_ds


def steps_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    """Optimiser steps in one pass over the training fragments."""
    return max(1, n_train // (cfg.batch_size * cfg.grad_accum))


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    """Length of the run (the schedule's horizon)."""
    if cfg.max_steps is not None:
        return int(cfg.max_steps)
    return max(1, math.ceil(float(cfg.epochs) * steps_per_epoch(cfg, n_train)))


def micro_batch_indices(ds: FragmentMaps, cfg: TrainConfig, step: int, micro: int,
                        spe: int, rank: int = 0, world: int = 1) -> tuple[list[int], int]:
    """Fragment indices of one rank's share of micro-batch ``micro`` of ``step``, and the epoch."""
    epoch, pos = divmod(step, spe)
    order = ds.order(epoch)
    g = pos * cfg.grad_accum + micro  # micro-batch number within the epoch
    if cfg.bucket_by_cell:
        chunk, j = divmod(g, cfg.bucket_chunk)
        per_epoch = spe * cfg.grad_accum * cfg.batch_size
        lo = chunk * cfg.bucket_chunk * cfg.batch_size
        hi = min(lo + cfg.bucket_chunk * cfg.batch_size, per_epoch)
        glob = _bucketed(ds, cfg, epoch, chunk, order[lo:hi])[j]
    else:
        start = g * cfg.batch_size
        glob = order[start: start + cfg.batch_size]
    local = len(glob) // world
    return [int(i) for i in glob[rank * local: (rank + 1) * local]], epoch


def _bucketed(ds: FragmentMaps, cfg: TrainConfig, epoch: int, chunk: int,
              indices: np.ndarray) -> list[list[int]]:
    """The micro-batches of one chunk (kept on the dataset: a chunk serves many steps)."""
    key = (epoch, chunk, cfg.batch_size, cfg.bucket_chunk)
    if key not in ds.chunk_cache:
        ds.chunk_cache.clear()
        ds.chunk_cache[key] = ds.bucketed_batches(indices, epoch, cfg.batch_size,
                                                  (ds.seed, epoch, chunk))
    return ds.chunk_cache[key]


# =============================================================================================
# 4. model and optimiser
# =============================================================================================
def build_model(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The network on ``device``, initialised from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    model = PattersonNet(cfg.network).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def as_float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with its floating-point tensors in float32 (fp16 or bf16 weights)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def initialise_from(model: nn.Module, cfg: TrainConfig, model_ref: str) -> dict[str, str]:
    """Load a model's weights (``models/<name>``, a model folder, or a run folder) into ``model``.

    For continuing a model on other hardware (e.g. the CPU-trained release models on a GPU)
    or from a run's weights-only checkpoint: the weights are checksum-verified safetensors
    (never a pickle) and the network config must equal ``cfg.network``. The optimiser state
    and data position start afresh (``fit --init``); use ``fit --resume`` on a run directory
    with a full checkpoint for an exact continuation instead, on this machine or any other.
    """
    state, source = read_weights(model_ref, cfg.network)
    model.load_state_dict(as_float32(state))
    return source


def wrap_model(model: nn.Module, cfg: TrainConfig, device: torch.device, ddp: bool
               ) -> nn.Module:
    """The model the loop calls, in training mode: under DDP and/or ``torch.compile`` when
    configured (the optimiser and checkpoints keep the unwrapped one)."""
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index]
                                        if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    model.train()
    return model


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW with the configured weight decay."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
               weight_decay=cfg.weight_decay)


def lr_at(cfg: TrainConfig, step: int, spe: int, horizon: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based)."""
    if cfg.schedule == "onecycle":
        up = max(1, int(cfg.onecycle_pct * horizon))
        lo, hi, end = cfg.lr / 25.0, cfg.lr, cfg.lr / 1e4
        if step < up:
            return lo + (hi - lo) * 0.5 * (1 - math.cos(math.pi * step / up))
        t = min(1.0, (step - up) / max(1, horizon - up))
        return end + (hi - end) * 0.5 * (1 + math.cos(math.pi * t))
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        t = min(1.0, (step - cfg.warmup_steps) / max(1, horizon - cfg.warmup_steps))
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    epoch = step / spe if cfg.per_step else float(step // spe)
    first = min(epoch, cfg.phase1_epochs)
    return cfg.lr * cfg.gamma1**first * cfg.gamma2 ** max(0.0, epoch - cfg.phase1_epochs)


# =============================================================================================
# 5. loss and one optimiser step
# =============================================================================================
def invert_maps(maps: torch.Tensor) -> torch.Tensor:
    """``rho(-x)`` of a batch ``(b, c, n1, n2, n3)`` of periodic maps: voxel ``i -> -i mod n``.

    Inversion through the origin is inversion through the cell centre too (fractional
    ``x -> 1 - x``), where the fragments are centred (:func:`pattersolve.simulate.
    place_fragment`): the enantiomorph in the same frame, with the same Patterson.
    """
    dims = (-3, -2, -1)
    return torch.roll(torch.flip(maps, dims=dims), shifts=(1, 1, 1), dims=dims)


def loss_terms(pred: torch.Tensor, target: torch.Tensor, cc_weight: float, twin: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example loss ``MSE + w (1 - CC)`` and Pearson CC, both of shape ``(b,)``.

    With ``twin`` each example is scored against whichever of the target and its
    enantiomorph (:func:`invert_maps`) it fits better. A Patterson is the same for both hands,
    so a plain loss rewards the network for averaging them: a near-centrosymmetric map
    (phases near 0 or 180 deg) that no phase retrieval can start from.
    """
    p = pred.flatten(1).float()

    def terms(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = target.flatten(1).float()
        mse = ((p - t) ** 2).mean(1)
        pc = p - p.mean(1, keepdim=True)
        tc = t - t.mean(1, keepdim=True)
        cc = (pc * tc).sum(1) / (pc.norm(dim=1) * tc.norm(dim=1)).clamp_min(1e-12)
        return mse + cc_weight * (1.0 - cc), cc

    loss, cc = terms(target)
    if not twin:
        return loss, cc
    loss_inv, cc_inv = terms(invert_maps(target))
    better = loss_inv < loss
    return torch.where(better, loss_inv, loss), torch.where(better, cc_inv, cc)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _prepare_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def forward_backward(model: nn.Module, micro_batches: list[list[Group]], n_examples: int,
                     cc_weight: float, device: torch.device, ddp: bool = False,
                     twin: bool = False) -> tuple[float, list[float]]:
    """Accumulate the gradient of one optimiser step over micro-batches and cell groups.

    Each group's summed per-example loss is divided by ``n_examples`` (this rank's examples
    in the step), so the accumulated gradient is that of the mean loss; DDP averages it over
    ranks. Under DDP only the last backward synchronises (``no_sync`` for the others).

    Returns
    -------
    loss, ccs
        Mean loss over this rank's examples, and each example's CC.
    """
    chunks = [g for mb in micro_batches for g in mb]
    total, ccs = 0.0, []
    for k, g in enumerate(chunks):
        sync = (not ddp) or k == len(chunks) - 1
        with (nullcontext() if sync else model.no_sync()):
            with _autocast(device):
                pred = model(_prepare_input(g.patterson, device))
            per_ex, cc = loss_terms(pred, g.density.to(device), cc_weight, twin)
            (per_ex.sum() / n_examples).backward()
        total += float(per_ex.detach().sum())
        ccs.extend(cc.detach().cpu().tolist())
    return total / max(1, n_examples), ccs


# =============================================================================================
# 6. evaluation
# =============================================================================================
@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Network output for a batch of Patterson maps (eval mode must be set by the caller)."""
    with _autocast(device):
        return model(_prepare_input(x, device)).float()


@torch.no_grad()
def evaluate_loss(model: nn.Module, ds: FragmentMaps, n: int, batch_size: int,
                  cc_weight: float, device: torch.device, twin: bool = False
                  ) -> tuple[float, float, float]:
    """Mean loss, median CC and median centrosymmetry on the first ``n`` examples of ``ds``.

    Epoch 0 placements. ``twin``: the loss and CC against the better-fitting hand
    (:func:`loss_terms`). The centrosymmetry of each prediction
    (:func:`pattersolve.phases.centrosymmetry`) shows whether the network hedges between
    the hands (near 1) or commits to one (true maps: ~0.4-0.65).
    """
    from pattersolve.phases import centrosymmetry

    was_training = model.training
    model.eval()
    losses, ccs, centro = [], [], []
    idx = fixed_indices(len(ds), n)
    for g in ds.groups(idx, batch_size):
        pred = predict(model, g.patterson, device)
        per_ex, cc = loss_terms(pred, g.density.to(device), cc_weight, twin)
        losses.extend(per_ex.cpu().tolist())
        ccs.extend(cc.cpu().tolist())
        centro.extend(centrosymmetry(p) for p in pred.float().cpu().numpy().reshape(
            len(per_ex), *pred.shape[-3:]))
    model.train(was_training)
    if not losses:
        return float("nan"), float("nan"), float("nan")
    return float(np.mean(losses)), float(np.median(ccs)), float(np.median(centro))


def validation_metrics(model: nn.Module, val_ds: FragmentMaps, cfg: TrainConfig,
                       device: torch.device) -> dict[str, float]:
    """``val_loss``, ``val_cc`` and ``val_centrosymmetry`` of :func:`evaluate_loss` on the
    config's ``eval_examples`` validation examples."""
    loss, cc, centro = evaluate_loss(model, val_ds, cfg.eval_examples, cfg.eval_batch_size,
                                     cfg.loss_cc_weight, device, cfg.loss_twin)
    return {"val_loss": loss, "val_cc": cc, "val_centrosymmetry": centro}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, ds: FragmentMaps, n: int, batch_size: int,
                          device: torch.device) -> int:
    """Re-estimate every BatchNorm's running statistics over ``n`` examples of ``ds``.

    Running statistics are an exponential average (momentum 0.1) of the last batches'
    statistics. With cell-bucketed batches most forward passes hold one map, so in eval mode
    the network normalises with the statistics of the last few maps it trained on: the
    validation loss of a finished run can jump with them (hard-tri's continuation: 0.094 at
    step 3,000, 0.111 at the end). Here they are reset and re-estimated as the plain average
    over ``n`` training examples (epoch-0 placements, :func:`fixed_indices`), forward passes
    grouped by cell as in training; no weight changes. Deterministic; returns the number of
    examples used.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or n <= 0 or not len(ds):
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    idx = fixed_indices(len(ds), n)
    try:
        for g in ds.groups(idx, batch_size):
            with _autocast(device):
                model(_prepare_input(g.patterson, device))
    finally:
        for m, mom in zip(norms, momenta, strict=True):
            m.momentum = mom
        model.train(was_training)
    return len(idx)


# =============================================================================================
# 7. checkpoints: safetensors + JSON, atomic, no pickle
# =============================================================================================
def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as checkpoint tensors (``model.<key>``, CPU copies)."""
    return {f"model.{key}": value.detach().cpu().contiguous().clone()
            for key, value in model.state_dict().items()}


def write_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor],
                     meta: dict[str, Any]) -> None:
    """Write the tensors, then the JSON with the safetensors file's SHA-256 (both atomic)."""
    from safetensors.torch import save_file

    path = run_dir / CHECKPOINT
    write_file_atomic(path, lambda tmp: save_file(tensors, tmp))
    meta["sha256"] = sha256_file(path)
    write_json_atomic(run_dir / CHECKPOINT_JSON, meta)


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    """Write ``checkpoint.safetensors`` (every tensor) and ``checkpoint.json`` (the rest).

    Tensors: ``model.*`` (state dict), ``optim.<param>.<key>`` (optimiser state),
    ``rng.torch`` / ``rng.cuda.<i>`` / ``rng.numpy`` (RNG states). JSON: ``state`` plus the
    optimiser's param-group hyperparameters, the numpy and python RNG scalars and the
    SHA-256 of the safetensors file (a mismatched pair is refused on load).
    """
    tensors = _model_tensors(model)
    osd = optimizer.state_dict()
    optim_scalars: dict[str, Any] = {}
    for pid, st in osd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                optim_scalars[f"{pid}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py_state = random.getstate()
    meta = dict(state)
    meta["optimizer"] = {
        "param_groups": [{k: v for k, v in g.items() if k != "params"}
                         for g in osd["param_groups"]],
        "scalars": optim_scalars,
    }
    meta["rng"] = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
                   "python": [py_state[0], list(py_state[1]), py_state[2]]}
    write_checkpoint(run_dir, tensors, meta)


def read_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON of a run's checkpoint, checking that they belong together."""
    from safetensors.torch import load_file

    path, meta_path = run_dir / CHECKPOINT, run_dir / CHECKPOINT_JSON
    if not path.is_file() or not meta_path.is_file():
        raise PattersolveError(f"no checkpoint in {run_dir}",
                               "train first (pattersolve-train fit) or give the run directory",
                               ExitCode.INPUT_MISSING)
    meta = json.loads(meta_path.read_text())
    if sha256_file(path) != meta.get("sha256"):
        raise PattersolveError(f"{path} does not match {meta_path} (SHA-256 differs)",
                               "the run was interrupted while saving or edited; restore both "
                               "files", ExitCode.MODEL)
    return load_file(str(path)), meta


def model_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state dict from checkpoint tensors."""
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}


def load_run_model(run_dir: str | os.PathLike[str]) -> tuple[TrainConfig, nn.Module,
                                                              dict[str, Any]]:
    """A run's configuration, its network with the checkpoint's weights (CPU, eval mode) and
    the checkpoint's JSON."""
    cfg = config_for_run(run_dir)
    tensors, meta = read_checkpoint(Path(run_dir))
    model = PattersonNet(cfg.network)
    model.load_state_dict(model_weights(tensors))
    model.eval()
    return cfg, model, meta


def read_weights(ref: str | os.PathLike[str], network: NetworkConfig | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The network weights of a run folder (its checkpoint) or of a model (``models/<name>``,
    a model folder), as stored, and where they came from (name and SHA-256; a run's also
    ``kind`` and ``step``).

    Both are checksum-verified (a run's checkpoint against its JSON, a model's weight file
    against its card). With ``network``, a run or model of another network config is refused
    before its weights are read.
    """
    from safetensors.torch import load_file

    from pattersolve.runtime import resolve_model

    run = Path(ref)
    if (run / CHECKPOINT_JSON).is_file():
        if network is not None and config_for_run(run).network != network:
            raise PattersolveError(f"run {run} has another network config than the training "
                                   "config", "use the run's own [network] section",
                                   ExitCode.USAGE)
        tensors, meta = read_checkpoint(run)
        return model_weights(tensors), {"name": run.name, "sha256": meta["sha256"],
                                        "kind": "run", "step": str(meta.get("step"))}
    info = resolve_model(str(ref))
    if network is not None and NetworkConfig.from_json(info.metadata["config"]) != network:
        raise PattersolveError(f"model {info.name} has another network config than the "
                               "training config", "use the model's own config "
                               "(its card.json 'training' entry)", ExitCode.USAGE)
    path = info.weight_file("model.safetensors")
    return load_file(str(path)), {"name": info.name, "sha256": sha256_file(path)}


def load_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer
                    ) -> dict[str, Any]:
    """Restore weights, optimiser state and RNG states; return the saved ``state``."""
    tensors, meta = read_checkpoint(run_dir)
    if meta.get("weights_only"):
        raise PattersolveError(f"{run_dir} holds the weights of step {meta.get('step')} "
                               "without optimiser and RNG state (a weights-only checkpoint), "
                               "so it cannot be resumed exactly",
                               "start a new run from it: fit --config CONFIG --init RUN_DIR",
                               ExitCode.USAGE)
    model.load_state_dict(model_weights(tensors))
    fresh = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta["optimizer"]["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    groups = [dict(saved, params=g["params"])
              for saved, g in zip(meta["optimizer"]["param_groups"], fresh["param_groups"],
                                  strict=True)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(64) if f"rng.cuda.{i}" in tensors]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    name, pos, has_gauss, cached = meta["rng"]["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss,
                         cached))
    version, internal, gauss = meta["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    return meta


# =============================================================================================
# 8. the loop
# =============================================================================================
@dataclass
class FitResult:
    """Summary of :func:`fit`."""

    run_dir: Path
    step: int
    total_steps: int
    interrupted: bool
    last_metrics: dict[str, Any]
    wall_time: float


@dataclass
class Run:
    """What the loop works on: the run's data, model and optimiser, and where it stands."""

    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    rank: int
    world: int
    train_ds: FragmentMaps
    val_ds: FragmentMaps
    training_data: str  # the shards' manifest SHA-256
    raw_model: nn.Module  # the network itself; ``model`` is what the loop calls (DDP, compile)
    model: nn.Module
    optimizer: torch.optim.Optimizer
    spe: int  # steps per epoch
    horizon: int  # the schedule's length
    stop: int  # where this call stops (``stop_at``)
    initialised: dict[str, str] | None = None
    hardware: str = ""
    segments: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    examples_seen: int = 0
    wall_before: float = 0.0  # wall time of the run before this call
    t_start: float = 0.0

    @property
    def ddp(self) -> bool:
        """Several processes (DistributedDataParallel)."""
        return self.world > 1

    def wall_time(self) -> float:
        """Seconds of training so far, over every call that trained this run."""
        return self.wall_before + time.perf_counter() - self.t_start

    def checkpoint_state(self) -> dict[str, Any]:
        """The ``state`` of :func:`save_checkpoint`: position, provenance and wall time."""
        epoch, pos = divmod(self.step, self.spe)
        return {"step": self.step, "epoch": epoch, "position_in_epoch": pos,
                "steps_per_epoch": self.spe, "total_steps": self.horizon, "seed": self.cfg.seed,
                "examples_seen": self.examples_seen, "world_size": self.world,
                "wall_time": self.wall_time(), "hardware": self.hardware,
                "hardware_segments": self.segments,
                "n_parameters": count_parameters(self.raw_model),
                "n_train_fragments": len(self.train_ds),
                "n_train_dropped": self.train_ds.n_dropped,
                "training_data": self.training_data, "init_from": self.initialised}

    def save(self) -> None:
        """Checkpoint the run where it stands."""
        save_checkpoint(self.run_dir, self.raw_model, self.optimizer, self.checkpoint_state())


def prepare_run_dir(cfg: TrainConfig, run_dir: Path, resume: bool, rank: int) -> None:
    """Check that ``run_dir`` holds a run exactly when resuming (with this config), and write
    ``config.json`` there."""
    has_ckpt = (run_dir / CHECKPOINT_JSON).is_file()
    if resume and not has_ckpt:
        raise PattersolveError(f"--resume given but {run_dir} holds no checkpoint",
                               "drop --resume to start a new run", ExitCode.INPUT_MISSING)
    if not resume and has_ckpt:
        raise PattersolveError(f"{run_dir} already holds a run",
                               "add --resume to continue it, or choose another --out",
                               ExitCode.OUTPUT)
    if resume:
        # through TrainConfig, so a run saved before a key existed takes its default
        saved = TrainConfig.from_dict(json.loads((run_dir / CONFIG_JSON).read_text())).to_dict()
        if json.loads(json.dumps(saved)) != json.loads(json.dumps(cfg.to_dict())):
            raise PattersolveError(f"the config differs from {run_dir / CONFIG_JSON}",
                                   "resume with the run's own config (omit --config)",
                                   ExitCode.USAGE)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / CONFIG_JSON, cfg.to_dict())


def _read_metrics(path: Path, upto: int) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= upto]


def start_run(cfg: TrainConfig, run_dir: Path, rank: int, world: int, device: torch.device,
              resume: bool, stop_at: int | None, init_from: str | None) -> Run:
    """Data, model and optimiser of a run: a new one (from ``cfg.seed``, or from a model's
    weights with ``init_from``) or, with ``resume``, the checkpoint's exact state."""
    manifest = check_shards(cfg)
    train_ds, val_ds = load_datasets(cfg, device)
    if len(train_ds) < cfg.batch_size * cfg.grad_accum:
        raise PattersolveError(f"{len(train_ds)} training fragments, fewer than one step's "
                               f"{cfg.batch_size * cfg.grad_accum}",
                               "prepare more entries or lower batch_size", ExitCode.DATA)
    horizon = total_steps(cfg, len(train_ds))
    model = build_model(cfg, device)
    run = Run(cfg, run_dir, device, rank, world, train_ds, val_ds, manifest["sha256"],
              raw_model=model, model=model, optimizer=build_optimizer(cfg, model),
              spe=steps_per_epoch(cfg, len(train_ds)), horizon=horizon,
              stop=min(horizon, stop_at) if stop_at is not None else horizon)
    if resume and init_from:
        raise PattersolveError("--init and --resume exclude each other",
                               "--resume continues a run; --init starts a new one",
                               ExitCode.USAGE)
    run.initialised = initialise_from(model, cfg, init_from) if init_from else None
    meta = load_checkpoint(run_dir, model, run.optimizer) if resume else None
    if meta is not None:
        run.step, run.wall_before = int(meta["step"]), float(meta["wall_time"])
        run.examples_seen = int(meta["examples_seen"])
    run.model = wrap_model(model, cfg, device, run.ddp)
    if rank == 0:  # a resumed run's metrics end at its checkpoint
        kept = _read_metrics(run_dir / METRICS, run.step)
        write_text_atomic(run_dir / METRICS, "".join(line + "\n" for line in kept))
    run.hardware = hardware_description(device)
    run.segments = hardware_segments(meta, run.step, run.hardware)
    return run


@contextmanager
def stop_signals() -> Iterator[dict[str, int]]:
    """SIGTERM and SIGINT only note the signal (in the dict yielded): the loop finishes its
    step, checkpoints and returns. Not in the main thread: no handlers."""
    stop_signal: dict[str, int] = {}
    previous: dict[int, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        stop_signal["signum"] = signum

    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    except ValueError:  # not the main thread: no handlers
        previous.clear()
    try:
        yield stop_signal
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_requested(stop_signal: dict[str, int], ddp: bool) -> bool:
    """Whether any process got a stop signal (every rank stops at the same step)."""
    flag = torch.tensor([1 if stop_signal else 0])
    if ddp:
        import torch.distributed as dist

        dist.all_reduce(flag)
    return bool(flag.item())


def train_step(run: Run) -> tuple[float, float, list[float], int]:
    """One optimiser step; returns its learning rate, this rank's mean loss, each example's
    CC and this rank's number of examples."""
    cfg = run.cfg
    lr = lr_at(cfg, run.step, run.spe, run.horizon)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    micro = []
    n_local = 0
    for m in range(cfg.grad_accum):
        idx, epoch = micro_batch_indices(run.train_ds, cfg, run.step, m, run.spe, run.rank,
                                         run.world)
        micro.append(run.train_ds.batch(idx, epoch))
        n_local += len(idx)
    run.optimizer.zero_grad(set_to_none=True)
    loss, ccs = forward_backward(run.model, micro, n_local, cfg.loss_cc_weight, run.device,
                                 run.ddp, cfg.loss_twin)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.step += 1
    run.examples_seen += n_local * run.world
    return lr, loss, ccs, n_local


@dataclass
class TrainWindow:
    """Training loss and CC since the last logged step."""

    t: float = field(default_factory=time.perf_counter)
    n: int = 0
    losses: list[float] = field(default_factory=list)
    ccs: list[float] = field(default_factory=list)

    def add(self, loss: float, ccs: list[float], n: int) -> None:
        """One step's mean loss, CCs and examples (over all ranks)."""
        self.n += n
        self.losses.append(loss)
        self.ccs.extend(ccs)

    def flush(self) -> dict[str, float]:
        """Mean loss, median CC and throughput since the last flush; starts a new window."""
        dt = time.perf_counter() - self.t
        out = {"train_loss": float(np.mean(self.losses)), "train_cc": float(np.median(self.ccs)),
               "examples_per_s": self.n / max(dt, 1e-9)}
        self.t, self.n, self.losses, self.ccs = time.perf_counter(), 0, [], []
        return out


def step_record(run: Run, window: TrainWindow, lr: float) -> dict[str, Any]:
    """The metrics line of the step just taken: training numbers every ``log_every`` steps,
    validation numbers every ``eval_every`` (rank 0), both at the last; empty otherwise."""
    cfg, step = run.cfg, run.step
    record: dict[str, Any] = {}
    if step % cfg.log_every == 0 or step == run.stop:
        record = {"step": step, "epoch": step / run.spe, "lr": lr, **window.flush()}
    if run.rank == 0 and (step % cfg.eval_every == 0 or step == run.stop) and len(run.val_ds):
        record = record or {"step": step, "epoch": step / run.spe, "lr": lr}
        record.update(validation_metrics(run.raw_model, run.val_ds, cfg, run.device))
    return record


def train_loop(run: Run, stop_signal: dict[str, int], progress: bool
               ) -> tuple[bool, dict[str, Any]]:
    """Train from ``run.step`` to ``run.stop`` (or a stop signal), logging and checkpointing;
    returns whether a signal stopped it and the last metrics logged."""
    from tqdm import tqdm

    cfg = run.cfg
    run.t_start = time.perf_counter()
    last: dict[str, Any] = {}
    window = TrainWindow()
    bar = tqdm(total=run.stop, initial=run.step, desc=cfg.name, unit="step",
               disable=(run.rank != 0) or (not progress) or None)
    interrupted = False
    try:
        while run.step < run.stop:
            lr, loss, ccs, n_local = train_step(run)
            window.add(loss, ccs, n_local * run.world)
            bar.update(1)
            record = step_record(run, window, lr)
            if record and run.rank == 0:
                record["wall_time"] = run.wall_time()
                last.update(record)
                with open(run.run_dir / METRICS, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                bar.set_postfix({k: f"{record[k]:.4g}" for k in ("train_loss", "val_cc")
                                 if k in record})
            if stop_requested(stop_signal, run.ddp):
                interrupted = True
                break
            if run.rank == 0 and run.step % cfg.checkpoint_every == 0 and run.step < run.stop:
                run.save()
        if run.rank == 0:
            run.save()
    finally:
        bar.close()
    return interrupted, last


def fit(cfg: TrainConfig, run_dir: str | os.PathLike[str], resume: bool = False,
        stop_at: int | None = None, progress: bool = True,
        init_from: str | None = None) -> FitResult:
    """Train (or resume) a run in ``run_dir``.

    Parameters
    ----------
    cfg
        The configuration. On resume it must equal the run's ``config.json``.
    run_dir
        Output directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.*``.
    resume
        Continue from the checkpoint in ``run_dir``.
    stop_at
        Stop after this many optimiser steps in total (the schedule still spans the
        configured run, so a later resume continues it exactly).
    progress
        Show a tqdm bar (rank 0 only).
    init_from
        Start a new run from a shipped model's weights (:func:`initialise_from`).
    """
    run_dir = Path(run_dir)
    rank, world, device = start_processes(cfg)
    prepare_run_dir(cfg, run_dir, resume, rank)
    run = start_run(cfg, run_dir, rank, world, device, resume, stop_at, init_from)
    try:
        with stop_signals() as stop_signal:
            interrupted, last = train_loop(run, stop_signal, progress)
    finally:
        if run.ddp:
            import torch.distributed as dist

            dist.barrier()
    return FitResult(run_dir=run_dir, step=run.step, total_steps=run.horizon,
                     interrupted=interrupted, last_metrics=last, wall_time=run.wall_time())


# =============================================================================================
# 9. after training
# =============================================================================================
def recalibrate_run(run_dir: str | os.PathLike[str], n: int) -> dict[str, Any]:
    """:func:`recalibrate_batchnorm` on a run's checkpoint, rewritten in place.

    Only the BatchNorm buffers change; the optimiser and RNG state stay, so the run can still
    be resumed (a later step would average the statistics anew). The checkpoint's JSON gets
    ``bn_recalibrated`` (examples used, validation loss/CC/centrosymmetry before and after)
    and the record is appended to ``metrics.jsonl``. Returns that record.
    """
    run_dir = Path(run_dir)
    cfg = config_for_run(run_dir)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    tensors, meta = read_checkpoint(run_dir)
    model = build_model(cfg, device)
    model.load_state_dict(model_weights(tensors))
    check_shards(cfg)
    train_ds, val_ds = load_datasets(cfg, device)
    before = validation_metrics(model, val_ds, cfg, device)
    used = recalibrate_batchnorm(model, train_ds, n, cfg.eval_batch_size, device)
    after = validation_metrics(model, val_ds, cfg, device)
    record = {"step": int(meta["step"]), "bn_recalibrated": used, **after,
              "before": before}
    tensors.update(_model_tensors(model))
    meta["bn_recalibrated"] = record
    write_checkpoint(run_dir, tensors, meta)
    with open(run_dir / METRICS, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return record
