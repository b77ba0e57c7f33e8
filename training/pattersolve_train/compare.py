"""Tensor-by-tensor comparison of two networks' weights: the reproduction check.

A re-run of ``fit`` (and ``recalibrate``) is meant to give the shipped weights again. Two
SHA-256 sums say only *whether* the files differ; :func:`compare_weights` says *where*: the
trained parameters, or only the BatchNorm running statistics (which ``recalibrate`` rewrites
and training never optimises), and by how much.

Each side is a run folder (its checkpoint, fp32) or an exported model (a folder, or a name
found the way ``pattersolve --model`` finds one; fp16 or fp32 as stored). Where either side is
stored in fp16 both are compared after the cast ``export`` applies (``Tensor.half``), so a run
compares equal to the model exported from it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pattersolve.errors import ExitCode, PattersolveError

from .files import write_json_atomic

#: suffixes of the BatchNorm buffers (``recalibrate`` rewrites these; no gradient reaches them)
BATCHNORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class TensorDiff:
    """One tensor of the state dict on both sides."""

    name: str
    kind: str  # "parameter" or "batchnorm statistic"
    identical: bool
    max_abs: float  # largest |a - b|
    norm: float  # ||a||
    diff_norm: float  # ||a - b||

    @property
    def rel_rms(self) -> float:
        """``||a - b|| / ||a||`` (0 where both are 0)."""
        if self.norm > 0:
            return self.diff_norm / self.norm
        return 0.0 if self.diff_norm == 0 else math.inf


@dataclass(frozen=True)
class WeightComparison:
    """The result of :func:`compare_weights`."""

    a: str
    b: str
    precision: str  # "fp16" (both cast as export does) or "fp32"
    tensors: tuple[TensorDiff, ...]

    def counts(self, kind: str) -> tuple[int, int]:
        """(identical, total) tensors of one kind."""
        sel = [t for t in self.tensors if t.kind == kind]
        return sum(t.identical for t in sel), len(sel)

    def relative_difference(self, kind: str) -> float:
        """``||a - b|| / ||a||`` over all tensors of one kind taken as one vector (a
        near-zero tensor, such as a convolution bias before BatchNorm, does not dominate it
        the way it dominates its own relative RMS)."""
        sel = [t for t in self.tensors if t.kind == kind]
        norm = math.sqrt(sum(t.norm ** 2 for t in sel))
        diff = math.sqrt(sum(t.diff_norm ** 2 for t in sel))
        return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)

    @property
    def identical(self) -> bool:
        """True when every tensor is bit-identical at the compared precision."""
        return all(t.identical for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary and per-tensor table."""
        out: dict[str, Any] = {"a": self.a, "b": self.b, "precision": self.precision,
                               "identical": self.identical}
        for kind in ("parameter", "batchnorm statistic"):
            same, total = self.counts(kind)
            out[kind.replace(" ", "_") + "s"] = {
                "identical": same, "total": total,
                "relative_difference": self.relative_difference(kind)}
        out["tensors"] = [{**asdict(t), "rel_rms": t.rel_rms} for t in self.tensors]
        return out

    def one_line(self) -> str:
        """``A vs B (fp16): parameters 60 of 60 identical; BatchNorm statistics ...``."""
        parts = []
        for kind, label in (("parameter", "parameters"),
                            ("batchnorm statistic", "BatchNorm statistics")):
            same, total = self.counts(kind)
            text = f"{label} {same} of {total} identical"
            diff = [t for t in self.tensors if t.kind == kind and not t.identical]
            if diff:
                text += (f" (largest difference {max(t.max_abs for t in diff):.3g}, "
                         f"relative difference {self.relative_difference(kind):.3g})")
            parts.append(text)
        return f"{self.a} vs {self.b} ({self.precision}): " + "; ".join(parts)


def load_weights(ref: str | Path) -> tuple[dict[str, torch.Tensor], bool, str]:
    """State dict of a run folder or exported model, whether it is stored in fp16, its label.

    A run's checkpoint is checked against its JSON and a model's weight file against its card
    (the checks ``fit --resume`` and ``pattersolve`` make), so a corrupt file is refused, not
    compared.
    """
    from .train import read_weights

    state, _ = read_weights(ref)
    if not state:
        raise PattersolveError(f"{ref}: no network weights found",
                               "give a run folder or an exported model", ExitCode.MODEL)
    fp16 = any(v.dtype == torch.float16 for v in state.values())
    return state, fp16, str(ref)


def _kind(name: str) -> str:
    return "batchnorm statistic" if name.endswith(BATCHNORM_STATISTICS) else "parameter"


def compare_state_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                        fp16: bool, label_a: str = "a", label_b: str = "b"
                        ) -> WeightComparison:
    """Compare two state dicts tensor by tensor.

    Parameters
    ----------
    a, b
        State dicts of the same architecture (same keys and shapes).
    fp16
        Cast floating tensors of both to fp16 first (the precision a model is stored at).

    Raises
    ------
    PattersolveError
        The two are different networks (keys or shapes differ).
    """
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise PattersolveError(f"{label_a} and {label_b} are different networks (tensors "
                               f"{', '.join(only[:3])}{' ...' if len(only) > 3 else ''} are "
                               "on one side only)", "compare runs or models of one config",
                               ExitCode.MODEL)
    rows = []
    for name in sorted(a):
        x, y = a[name], b[name]
        if x.shape != y.shape:
            raise PattersolveError(f"{label_a} and {label_b} are different networks ({name}: "
                                   f"{tuple(x.shape)} vs {tuple(y.shape)})",
                                   "compare runs or models of one config", ExitCode.MODEL)
        if x.is_floating_point() and y.is_floating_point():
            if fp16:
                x, y = x.half(), y.half()
            else:
                x, y = x.float(), y.float()
        identical = bool(torch.equal(x, y))
        xd, yd = x.double(), y.double()
        diff = (xd - yd).abs()
        max_abs = float(diff.max()) if diff.numel() else 0.0
        rows.append(TensorDiff(name, _kind(name), identical, max_abs, float(xd.norm()),
                               float((xd - yd).norm())))
    return WeightComparison(label_a, label_b, "fp16" if fp16 else "fp32", tuple(rows))


def compare_weights(ref_a: str | Path, ref_b: str | Path,
                    json_out: str | Path | None = None) -> WeightComparison:
    """Compare the weights of two runs or models (see the module docstring).

    Parameters
    ----------
    ref_a, ref_b
        Run folders, model folders or model names.
    json_out
        Also write :meth:`WeightComparison.to_dict` there (atomically).
    """
    if json_out is not None and not Path(json_out).parent.is_dir():
        raise PattersolveError(f"--json {json_out}: no folder {Path(json_out).parent}",
                               "create it or write the JSON elsewhere", ExitCode.OUTPUT)
    a, fp16_a, label_a = load_weights(ref_a)
    b, fp16_b, label_b = load_weights(ref_b)
    result = compare_state_dicts(a, b, fp16_a or fp16_b, label_a, label_b)
    if json_out is not None:
        write_json_atomic(json_out, result.to_dict())
    return result
