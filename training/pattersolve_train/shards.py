"""The fragment shard format: coordinates of peptide fragments, split by PDB entry.

A shard directory (the contract shared with the rest of the project, keep it exactly)::

    <out>/manifest.json
    <out>/train/shard-00000.npz
    <out>/val/shard-00000.npz
    <out>/test/shard-00000.npz

``manifest.json``::

    {"format": "pattersolve-shards-1",
     "config": {...the prepare options...},
     "shards": [{"path": "train/shard-00000.npz", "split": "train",
                 "n_fragments": 123, "sha256": "<hex of the file>"}, ...],
     "sha256": "<hex>"}

The top-level ``sha256`` is :func:`manifest_hash`: the SHA-256 of the shard hashes, in manifest
order, each followed by a newline. Each shard is an ``.npz`` readable with
``allow_pickle=False`` holding

* ``coords``  float32 ``(n_atoms_total, 3)``, Cartesian Angstrom, as in the PDB file;
* ``element`` uint8 ``(n_atoms_total,)``, indices into :data:`pattersolve.simulate.ELEMENTS`;
* ``b_iso``   float32 ``(n_atoms_total,)``;
* ``offsets`` int64 ``(n_fragments + 1,)``: fragment ``i`` owns atoms
  ``offsets[i]:offsets[i+1]``;
* ``source``  unicode ``(n_fragments,)``, e.g. ``"1abc/A/12-13"`` (entry/chain/first-last).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.runtime import sha256_file
from pattersolve.simulate import ELEMENTS

from .files import write_file_atomic, write_json_atomic

FORMAT = "pattersolve-shards-1"
SPLITS: tuple[str, ...] = ("train", "val", "test")
_ELEMENT_INDEX = {e: i for i, e in enumerate(ELEMENTS)}


@dataclass
class Fragment:
    """One peptide fragment.

    Attributes
    ----------
    elements
        Element symbol per atom (members of :data:`pattersolve.simulate.ELEMENTS`).
    xyz
        Cartesian coordinates in Angstrom, shape ``(n, 3)``.
    b_iso
        Isotropic B per atom, Angstrom^2, shape ``(n,)``.
    source
        ``"entry/chain/first-last"``, e.g. ``"1abc/A/12-13"``.
    """

    elements: list[str]
    xyz: np.ndarray
    b_iso: np.ndarray
    source: str

    @property
    def entry(self) -> str:
        """The PDB entry id the fragment comes from."""
        return self.source.split("/", 1)[0]


def manifest_hash(shard_hashes: Sequence[str]) -> str:
    """SHA-256 of the shard hashes in manifest order, each followed by ``"\\n"``."""
    return hashlib.sha256("".join(f"{s}\n" for s in shard_hashes).encode()).hexdigest()


def shard_path(split: str, index: int) -> str:
    """Relative path of shard ``index`` of a split, e.g. ``train/shard-00000.npz``."""
    return f"{split}/shard-{index:05d}.npz"


def write_shard(path: str | os.PathLike[str], fragments: Sequence[Fragment]) -> str:
    """Write fragments to one ``.npz`` shard atomically and return its SHA-256.

    The file appears under its final name only once complete (temporary file plus
    ``os.replace``), so an interrupted preparation never leaves a truncated shard.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = [len(f.elements) for f in fragments]
    offsets = np.zeros(len(fragments) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    if fragments:
        coords = np.concatenate([np.asarray(f.xyz, dtype=np.float32) for f in fragments])
        b_iso = np.concatenate([np.asarray(f.b_iso, dtype=np.float32) for f in fragments])
        element = np.array([_ELEMENT_INDEX[e] for f in fragments for e in f.elements],
                           dtype=np.uint8)
    else:
        coords = np.zeros((0, 3), dtype=np.float32)
        b_iso = np.zeros(0, dtype=np.float32)
        element = np.zeros(0, dtype=np.uint8)
    source = np.array([f.source for f in fragments], dtype=np.str_)
    if source.size == 0:
        source = np.zeros(0, dtype="<U1")

    def writer(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a handle: np.savez would add .npz to a name
            np.savez(fh, coords=coords.reshape(-1, 3), element=element, b_iso=b_iso,
                     offsets=offsets, source=source)

    write_file_atomic(path, writer)
    return sha256_file(path)


def read_shard(path: str | os.PathLike[str]) -> list[Fragment]:
    """Read every fragment of one shard (no checksum check; see :func:`iter_fragments`)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            coords, element, b_iso = z["coords"], z["element"], z["b_iso"]
            offsets, source = z["offsets"], z["source"]
    except (OSError, ValueError, KeyError) as exc:
        raise PattersolveError(f"cannot read shard {path}: {exc}",
                               "re-run `pattersolve-train prepare` for this directory",
                               ExitCode.INPUT_FORMAT) from exc
    out = []
    for i in range(len(offsets) - 1):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        out.append(Fragment(elements=[ELEMENTS[int(e)] for e in element[lo:hi]],
                            xyz=coords[lo:hi].astype(np.float64), b_iso=b_iso[lo:hi].copy(),
                            source=str(source[i])))
    return out


def write_manifest(out: str | os.PathLike[str], config: dict, shards: list[dict]) -> dict:
    """Write ``manifest.json`` atomically; return the manifest dictionary."""
    manifest = {
        "format": FORMAT,
        "config": config,
        "shards": shards,
        "sha256": manifest_hash([s["sha256"] for s in shards]),
    }
    write_json_atomic(Path(out) / "manifest.json", manifest)
    return manifest


def read_manifest(shard_dir: str | os.PathLike[str]) -> dict:
    """Read and validate ``manifest.json`` (format tag and the hash of the shard hashes)."""
    path = Path(shard_dir) / "manifest.json"
    if not path.is_file():
        raise PattersolveError(f"no manifest.json in {shard_dir}",
                               "run `pattersolve-train prepare --out DIR` first (or let it "
                               "finish: the manifest is written last)", ExitCode.INPUT_MISSING)
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PattersolveError(f"{path} is not valid JSON: {exc}", "re-run prepare",
                               ExitCode.INPUT_FORMAT) from exc
    if manifest.get("format") != FORMAT:
        raise PattersolveError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}",
                               "re-run prepare with this version", ExitCode.INPUT_FORMAT)
    if manifest_hash([s["sha256"] for s in manifest["shards"]]) != manifest["sha256"]:
        raise PattersolveError(f"{path}: the manifest hash does not match its shard list",
                               "the manifest was edited; re-run prepare", ExitCode.INPUT_FORMAT)
    return manifest


def iter_fragments(shard_dir: str | os.PathLike[str], split: str) -> Iterator[Fragment]:
    """Yield the fragments of one split, shard by shard, verifying each shard's SHA-256.

    Raises
    ------
    PattersolveError
        When the manifest is missing or corrupt, the split is unknown, or a shard's checksum
        differs from the manifest.
    """
    if split not in SPLITS:
        raise PattersolveError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}",
                               ExitCode.USAGE)
    manifest = read_manifest(shard_dir)
    for entry in manifest["shards"]:
        if entry["split"] != split:
            continue
        path = Path(shard_dir) / entry["path"]
        if not path.is_file():
            raise PattersolveError(f"shard {path} listed in the manifest is missing",
                                   "re-run prepare for this directory", ExitCode.INPUT_MISSING)
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise PattersolveError(f"shard {path} has SHA-256 {digest[:12]}..., the manifest "
                                   f"says {entry['sha256'][:12]}...",
                                   "the file changed after preparation; re-run prepare",
                                   ExitCode.INPUT_FORMAT)
        yield from read_shard(path)


def load_split(shard_dir: str | os.PathLike[str], split: str,
               limit: int | None = None) -> list[Fragment]:
    """All fragments of a split (at most ``limit``), in manifest order."""
    out: list[Fragment] = []
    for frag in iter_fragments(shard_dir, split):
        if limit is not None and len(out) >= limit:
            break
        out.append(frag)
    return out
