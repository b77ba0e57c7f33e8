"""Carry a training run off a machine and back in files of bounded size.

A lent GPU returns at most a few files of bounded size per call (training/gpu/README.md) and
keeps nothing between sessions. A run's full checkpoint (weights, AdamW moments, RNG states)
is about three times its fp32 weights: 29 MB for the 2.45 M-parameter release networks, over
the 16 MiB one returned file may hold. :func:`pack_run` writes a run as one tar
(``<name>.tar``) or, when larger than ``part_bytes``, as numbered parts
(``<name>.tar.part1of3`` ...); :func:`restore_run` joins them, checks the checkpoint's SHA-256
and lays the run out again, so ``pattersolve-train fit --out RUN --resume`` continues it
exactly on any machine. ``weights_only=True`` keeps the fp32 weights alone (a third of the
size): such a run can be evaluated and exported, and continued only as a new run with
``fit --init`` (``fit --resume`` refuses it).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Literal

from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.runtime import sha256_file
from pattersolve_train.train import (
    CHECKPOINT,
    CHECKPOINT_JSON,
    CONFIG_JSON,
    METRICS,
    read_checkpoint,
)

PART_BYTES = 15 * 2**20  # under the 16 MiB a returned file may hold
_PART = re.compile(r"^(?P<stem>.+\.tar)\.part(?P<i>\d+)of(?P<n>\d+)$")

Kind = Literal["full", "weights"]


def _consistent_copy(run_dir: Path, into: Path, tries: int = 10) -> dict:
    """Copy checkpoint tensors and JSON of a run that may be checkpointing right now."""
    import time

    for _ in range(tries):
        shutil.copyfile(run_dir / CHECKPOINT, into / CHECKPOINT)
        shutil.copyfile(run_dir / CHECKPOINT_JSON, into / CHECKPOINT_JSON)
        meta = json.loads((into / CHECKPOINT_JSON).read_text())
        if sha256_file(into / CHECKPOINT) == meta.get("sha256"):
            return meta
        time.sleep(2)  # tensors replaced, JSON not yet: try again
    raise PattersolveError(f"{run_dir}: checkpoint and its JSON keep disagreeing",
                           "let the run write its next checkpoint, then pack again",
                           ExitCode.MODEL)


def pack_run(run_dir: str | Path, out_dir: str | Path, *, weights_only: bool = False,
             part_bytes: int | None = None) -> list[Path]:
    """Write a run directory as a tar, split into parts of at most ``part_bytes``.

    Parameters
    ----------
    run_dir
        A ``pattersolve-train fit`` run: ``config.json``, ``metrics.jsonl``, ``checkpoint.*``.
        It may still be training: the checkpoint is copied until tensors and JSON match.
    out_dir
        Where the tar (or its parts) go; existing files of the same name are replaced.
    weights_only
        Keep only the model's weights (fp32) instead of the full checkpoint.
    part_bytes
        Largest file written; default :data:`PART_BYTES`.

    Returns
    -------
    list of Path
        ``[<name>.tar]``, or ``<name>.tar.part1ofN`` ... ``partNofN`` in order.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    part_bytes = part_bytes or PART_BYTES
    name = run_dir.name
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        meta = _consistent_copy(run_dir, tmp)
        if weights_only:
            import torch
            from safetensors.torch import save_file

            tensors, _ = read_checkpoint(tmp)
            model = {k: (v.float() if torch.is_floating_point(v) else v).contiguous()
                     for k, v in tensors.items() if k.startswith("model.")}
            save_file(model, str(tmp / CHECKPOINT))
            meta["sha256"] = sha256_file(tmp / CHECKPOINT)
            meta["weights_only"] = True
            (tmp / CHECKPOINT_JSON).write_text(json.dumps(meta, indent=1) + "\n")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for fname in (CONFIG_JSON, METRICS):
                if (run_dir / fname).is_file():
                    tar.add(run_dir / fname, arcname=f"{name}/{fname}")
            for fname in (CHECKPOINT, CHECKPOINT_JSON):
                tar.add(tmp / fname, arcname=f"{name}/{fname}")
    data = buf.getvalue()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{name}.tar*"):
        if old.name == f"{name}.tar" or _PART.match(old.name):
            old.unlink()
    if len(data) <= part_bytes:
        path = out_dir / f"{name}.tar"
        path.write_bytes(data)
        return [path]
    n = -(-len(data) // part_bytes)
    paths = []
    for i in range(n):
        path = out_dir / f"{name}.tar.part{i + 1}of{n}"
        path.write_bytes(data[i * part_bytes:(i + 1) * part_bytes])
        paths.append(path)
    return paths


def _weights_bytes(path: Path) -> int:
    """Bytes of the ``model.*`` tensors in fp32, read from a safetensors header alone."""
    import struct

    itemsize = {"F64": 8, "F32": 4, "F16": 4, "BF16": 4, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    total = 0
    for key, info in header.items():
        if key.startswith("model."):
            count = 1
            for dim in info["shape"]:
                count *= dim
            total += count * itemsize.get(info["dtype"], 8)
    return total + n


def snapshot_size(run_dir: str | Path, *, weights_only: bool = False) -> int:
    """Bytes :func:`pack_run` will write for a run: an upper bound, within one 10 KiB record."""
    run_dir = Path(run_dir)
    sizes = [(run_dir / f).stat().st_size for f in (CONFIG_JSON, METRICS, CHECKPOINT_JSON)
             if (run_dir / f).is_file()]
    sizes.append(_weights_bytes(run_dir / CHECKPOINT) if weights_only
                 else (run_dir / CHECKPOINT).stat().st_size)
    # tar: a 512-byte header per file, each file padded to 512 bytes, 1 KiB at the end, the
    # whole padded to 10 KiB records (the weights-only JSON grows by a few bytes: +512)
    n = sum(512 + -(-size // 512) * 512 for size in sizes) + 1024 + 512
    return -(-n // 10240) * 10240


def plan_snapshots(sizes: dict[str, tuple[int, int]], *, max_files: int, max_bytes: int,
                   part_bytes: int | None = None) -> dict[str, Kind]:
    """Choose full or weights-only snapshots so that all runs fit the return limits.

    Parameters
    ----------
    sizes
        Run name -> (full size, weights-only size) in bytes, in order of priority.
    max_files, max_bytes
        How many files and bytes may come back for the runs together.

    Returns
    -------
    dict
        Run name -> ``"full"`` or ``"weights"``. Every run gets at least its weights; runs
        earlier in ``sizes`` get full snapshots first.

    Raises
    ------
    PattersolveError
        If even weights-only snapshots of every run do not fit.
    """
    part = part_bytes or PART_BYTES

    def files(n_bytes: int) -> int:
        return max(1, -(-n_bytes // part))

    plan: dict[str, Kind] = {name: "weights" for name in sizes}
    used_files = sum(files(w) for _, w in sizes.values())
    used_bytes = sum(w for _, w in sizes.values())
    if used_files > max_files or used_bytes > max_bytes:
        raise PattersolveError(f"weights-only snapshots of {len(sizes)} runs need {used_files} "
                               f"files and {used_bytes / 2**20:.1f} MiB, over the "
                               f"{max_files} files / {max_bytes / 2**20:.0f} MiB allowed",
                               "snapshot fewer runs per call", ExitCode.RESOURCES)
    for name, (full, weights) in sizes.items():
        extra_files, extra_bytes = files(full) - files(weights), full - weights
        if used_files + extra_files <= max_files and used_bytes + extra_bytes <= max_bytes:
            plan[name] = "full"
            used_files += extra_files
            used_bytes += extra_bytes
    return plan


def snapshot_parts(path: str | Path) -> list[Path]:
    """All files of the snapshot that ``path`` (the tar or any of its parts) belongs to."""
    path = Path(path)
    m = _PART.match(path.name)
    if not m:
        return [path]
    n = int(m["n"])
    parts = [path.with_name(f"{m['stem']}.part{i + 1}of{n}") for i in range(n)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise PattersolveError(f"snapshot {m['stem']} lacks {', '.join(missing)}",
                               "bring back every part of the snapshot", ExitCode.INPUT_MISSING)
    return parts


def restore_run(path: str | Path, into: str | Path) -> Path:
    """Lay a packed run out again under ``into`` and check its checkpoint.

    Parameters
    ----------
    path
        ``<name>.tar`` or any of its ``.partIofN`` files.
    into
        Parent folder: the run becomes ``into/<name>``, which must not hold a run yet.

    Returns
    -------
    Path
        The run directory, ready for ``evaluate --run`` / ``export --run`` and, for a full
        snapshot, ``fit --out RUN --resume``.
    """
    parts = snapshot_parts(path)
    if not parts[0].is_file():
        raise PattersolveError(f"no snapshot at {parts[0]}", "give a <name>.tar or one of its "
                               "parts", ExitCode.INPUT_MISSING)
    data = b"".join(p.read_bytes() for p in parts)
    into = Path(into)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            members = tar.getmembers()
            names = {Path(m.name).parts[0] for m in members}
            if len(names) != 1:
                raise PattersolveError(f"{parts[0]} holds {len(names)} runs, not one",
                                       "pack each run on its own (pack_run)",
                                       ExitCode.INPUT_FORMAT)
            run_dir = into / names.pop()
            if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
                raise PattersolveError(f"{run_dir} already exists and is not empty",
                                       "restore into another folder or move it away",
                                       ExitCode.OUTPUT)
            with tempfile.TemporaryDirectory(dir=into if into.is_dir() else None) as tmpdir:
                tar.extractall(tmpdir, filter="data")
                staged = Path(tmpdir) / run_dir.name
                read_checkpoint(staged)  # SHA-256 of tensors against the JSON
                into.mkdir(parents=True, exist_ok=True)
                if run_dir.exists():
                    run_dir.rmdir()  # empty: anything in it was refused above
                shutil.move(str(staged), str(run_dir))
    except tarfile.TarError as exc:
        raise PattersolveError(f"{parts[0]}: not a complete snapshot ({exc})",
                               "bring back every part unaltered", ExitCode.INPUT_FORMAT) from exc
    return run_dir
