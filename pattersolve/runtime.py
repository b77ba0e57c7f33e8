"""Runtimes for the network: the model registry, ONNX Runtime and PyTorch backends.

A model is a folder ``models/<name>/`` holding ``model.safetensors``, ``model.onnx``,
``card.json`` and ``README.md`` (the model card), written by ``pattersolve-train export``.
``card.json`` holds the metadata (also embedded in both weight files) and the sha256 of
each weight file, verified before a file is used. Weights load from safetensors or ONNX
only; nothing is ever unpickled.

``backend="auto"`` prefers ONNX Runtime (fast start, and that path never imports torch);
torch is used when onnxruntime is not installed or when asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from . import settings
from .errors import ExitCode, PattersolveError

MODEL_FORMAT = "pattersolve-model-1"
WEIGHT_FILES = ("model.safetensors", "model.onnx")


def model_search_path() -> list[Path]:
    """Folders searched for models, in order: ``$PATTERSOLVE_MODELS``, the source tree's
    ``models/``, and ``<prefix>/share/pattersolve/models`` of an installed package."""
    dirs = []
    env = os.environ.get(settings.ENV_MODELS)
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[1] / "models")
    dirs.append(Path(sys.prefix) / "share" / "pattersolve" / "models")
    return [d for d in dirs if d.is_dir()]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ModelInfo:
    """A model folder and its card."""

    path: Path
    card: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.path.name))

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.card["metadata"])

    @property
    def grid_spacing(self) -> float:
        return float(self.metadata["grid_spacing"])

    @property
    def d_min(self) -> float:
        return float(self.metadata["d_min"])

    @property
    def cell(self) -> list[float] | None:
        """Training cell edges, or None for a model trained on packed cells of any size."""
        cell = json.loads(self.metadata["cell"])
        return None if cell is None else [float(x) for x in cell]

    @property
    def task(self) -> str:
        return self.metadata.get("task", "")

    @property
    def learned_hand(self) -> bool:
        """Whether the network was trained to predict the true enantiomorph.

        A network trained on L-amino-acid fragments with a plain loss learns their chirality
        (BENCHMARKS.md: the true hand on every solved 1b test map); one trained with the
        twin-invariant loss (``loss_twin``) is scored against the better hand and so is blind
        to it by construction. False when the card does not say how the model was trained.
        """
        training = self.card.get("training")
        return isinstance(training, dict) and not bool(training.get("loss_twin", False))

    def weight_file(self, kind: str) -> Path:
        """Path of ``model.onnx`` or ``model.safetensors`` after verifying its checksum."""
        path = self.path / kind
        if not path.is_file():
            raise PattersolveError(f"model {self.name} has no {kind}",
                                   "re-export the model with pattersolve-train export",
                                   ExitCode.MODEL)
        expected = self.card.get("sha256", {}).get(kind)
        if expected is None or sha256_file(path) != expected:
            raise PattersolveError(
                f"model file {path} does not match the checksum in its card.json (corrupt or "
                "modified)", "restore the file (git checkout models/) or re-export the model",
                ExitCode.MODEL)
        return path


def load_model_info(path: Path) -> ModelInfo:
    """Read and check a model folder's ``card.json``."""
    card_path = path / "card.json"
    try:
        card = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise PattersolveError(f"{path} is not a model folder (no card.json)",
                               "give a model name from --list-models or a model folder",
                               ExitCode.MODEL) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PattersolveError(f"{card_path} is corrupt ({exc})",
                               "restore it or re-export the model", ExitCode.MODEL) from None
    meta = card.get("metadata", {})
    missing = [k for k in ("format", "config", "grid_spacing", "d_min", "cell") if k not in meta]
    if missing or meta.get("format") != MODEL_FORMAT:
        raise PattersolveError(
            f"{card_path} is not a {MODEL_FORMAT} card (missing {missing or 'format'})",
            "re-export the model with this version of pattersolve-train", ExitCode.MODEL)
    return ModelInfo(path=path, card=card)


def list_models() -> list[ModelInfo]:
    """Every model found on the search path (first occurrence of a name wins)."""
    seen: dict[str, ModelInfo] = {}
    for d in model_search_path():
        for sub in sorted(d.iterdir()):
            if (sub / "card.json").is_file():
                try:
                    info = load_model_info(sub)
                except PattersolveError:
                    continue
                seen.setdefault(info.name, info)
    return list(seen.values())


def model_mismatch(model: ModelInfo, cell_edges: tuple[float, float, float] | None,
                   d_min: float | None) -> float:
    """How far data lie from a model's training domain (0: the training cell and resolution).

    Sum of ``|log|`` ratios of the sorted cell edges and of d_min; a model trained on packed
    cells of any size (``cell`` None) takes a fixed cost of :data:`settings.PACKED_MODEL_COST`
    instead of the edge term.
    """
    score = abs(np.log(d_min / model.d_min)) if d_min else 0.0
    if cell_edges is None:
        return score
    if model.cell is None:
        return score + settings.PACKED_MODEL_COST
    pairs = zip(sorted(cell_edges), sorted(model.cell), strict=True)
    return score + sum(abs(np.log(e / c)) for e, c in pairs)


def resolve_model(name_or_path: str | None, cell_edges: tuple[float, float, float] | None = None,
                  d_min: float | None = None) -> ModelInfo:
    """A model by folder path or name; ``None`` picks the default for the data.

    The default is the model whose training domain (cell edges and resolution) is closest to
    the data (:func:`model_mismatch`), or :data:`settings.DEFAULT_MODEL` without data.
    """
    if name_or_path is not None:
        p = Path(name_or_path)
        if p.is_dir():
            return load_model_info(p)
        if p.suffix in (".onnx", ".safetensors") and p.is_file():
            return load_model_info(p.parent)
        for info in list_models():
            if info.name == name_or_path:
                return info
        names = ", ".join(m.name for m in list_models()) or "none found"
        raise PattersolveError(f"unknown model {name_or_path!r} (available: {names})",
                               "give a name from --list-models or a model folder",
                               ExitCode.MODEL)
    models = list_models()
    if not models:
        raise PattersolveError("no models found", f"set {settings.ENV_MODELS} to a folder of "
                               "models or pass --model PATH", ExitCode.MODEL)
    if cell_edges is None and d_min is None:
        return next((m for m in models if m.name == settings.DEFAULT_MODEL), models[0])
    return min(models, key=lambda m: model_mismatch(m, cell_edges, d_min))


def onnxruntime_available() -> bool:
    """True when onnxruntime can be imported (checked without importing torch)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


class Predictor:
    """Runs one model on scaled Patterson maps with the chosen backend and device.

    Parameters
    ----------
    model
        The model to run.
    backend
        ``"auto"``, ``"onnx"`` or ``"torch"``.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    threads
        CPU threads (``None``: the library default).
    """

    def __init__(self, model: ModelInfo, backend: str = "auto", device: str = "auto",
                 threads: int | None = None) -> None:
        self.model = model
        self.threads = threads
        if backend == "auto":
            backend = "onnx" if onnxruntime_available() else "torch"
        if backend not in ("onnx", "torch"):
            raise PattersolveError(f"unknown backend {backend!r}", "use auto, onnx or torch",
                                   ExitCode.USAGE)
        self.backend = backend
        self.requested_device = device
        self.device = "cpu"
        if backend == "onnx":
            self._session = self._onnx_session(device)
        else:
            self._net = self._torch_net(device)

    # --- ONNX Runtime -----------------------------------------------------------------------
    def _onnx_session(self, device: str) -> Any:
        if not onnxruntime_available():
            raise PattersolveError("ONNX Runtime is not installed",
                                   "pip install 'pattersolve[onnx]' (or [gpu]), or use "
                                   "--backend torch", ExitCode.BACKEND)
        import onnxruntime as ort

        path = self.model.weight_file("model.onnx")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            opts.intra_op_num_threads = self.threads
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device == "cuda":
            raise PattersolveError("ONNX Runtime has no CUDA provider here",
                                   "install pattersolve[gpu] on a GPU machine, or use "
                                   "--device cpu", ExitCode.BACKEND)
        try:
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise PattersolveError(f"{path} is not a loadable ONNX model ({exc})",
                                   "restore or re-export the model", ExitCode.MODEL) from None
        used = sess.get_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in used:
            raise PattersolveError("ONNX Runtime could not start its CUDA provider",
                                   "check the CUDA installation, or use --device cpu",
                                   ExitCode.BACKEND)
        self.device = "cuda" if "CUDAExecutionProvider" in used else "cpu"
        meta = sess.get_modelmeta().custom_metadata_map
        self._check_metadata(meta, path)
        return sess

    # --- PyTorch ----------------------------------------------------------------------------
    def _torch_net(self, device: str) -> Any:
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        from .network import NetworkConfig, PattersonNet

        path = self.model.weight_file("model.safetensors")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise PattersolveError("torch sees no CUDA device", "use --device cpu",
                                   ExitCode.BACKEND)
        self.device = device
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise PattersolveError(f"{path} is not a loadable safetensors file ({exc})",
                                   "restore or re-export the model", ExitCode.MODEL) from None
        self._check_metadata(meta, path)
        net = PattersonNet(NetworkConfig.from_json(self.model.metadata["config"]))
        try:
            net.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as exc:
            raise PattersolveError(f"{path} does not match its network config ({exc})"[:300],
                                   "re-export the model", ExitCode.MODEL) from None
        return net.eval().to(device)

    def _check_metadata(self, meta: dict[str, str], path: Path) -> None:
        card = self.model.metadata
        for key in ("config", "grid_spacing", "d_min", "format"):
            if meta.get(key) != card.get(key):
                raise PattersolveError(
                    f"{path} metadata {key!r} does not match its card.json",
                    "re-export the model so weights and card agree", ExitCode.MODEL)

    # --- inference --------------------------------------------------------------------------
    def predict(self, patterson: np.ndarray) -> np.ndarray:
        """Density (scaled to [-1, 1]) from a Patterson map scaled to [-1, 1].

        ``patterson`` is ``(nx, ny, nz)`` or ``(batch, nx, ny, nz)`` with even sizes.
        """
        x = np.asarray(patterson, dtype=np.float32)
        single = x.ndim == 3
        if single:
            x = x[None]
        if any(n % 2 for n in x.shape[1:]):
            raise ValueError(f"grid sizes must be even, got {x.shape[1:]}")
        x = np.ascontiguousarray(x[:, None])
        if self.backend == "onnx":
            y = self._session.run(["density"], {"patterson": x})[0]
        else:
            import torch

            with torch.inference_mode():
                y = self._net(torch.from_numpy(x).to(self.device)).float().cpu().numpy()
        y = y[:, 0]
        return y[0] if single else y

    @cached_property
    def description(self) -> str:
        return f"{self.model.name} on {self.backend} ({self.device})"
