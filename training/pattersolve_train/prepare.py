"""PDB / mmCIF files -> fragment shards (see :mod:`pattersolve_train.shards`).

What is extracted from each entry (gemmi):

* model 1 only; hydrogens, waters, ligands and other non-polymer residues removed; only the
  first alternate conformation kept;
* runs of ``length`` consecutive standard amino acids of one chain, each peptide-bonded to the
  next (C(i)-N(i+1) shorter than ``max_peptide_bond``, 1.6 A by default), each with its complete
  standard heavy-atom set (OXT is neither required nor kept);
* ``dialanine=True`` (the paper's "Ala-Ala"): every residue truncated at CB (N, CA, C, O, CB)
  and renamed ALA. Glycine has no CB, so a run containing GLY is skipped in this mode rather
  than kept as GLY (the paper's sets are Ala-Ala only).

Entries are split by entry id, never by fragment, so a test entry is never in a train shard:
from split files (``*split_train.txt``, ``*split_val.txt``, ``*split_test.txt``, one id per
line) found next to the source or given with ``split_dir``, or, when there are none, by a
deterministic hash of the id (90 / 5 / 5 %). Each split's entries, sorted by id, are cut into
blocks of ``entries_per_shard``; block ``i`` becomes ``<split>/shard-0000i.npz``. A shard whose
file exists is skipped (preparation is resumable), ``shard=(k, n)`` prepares only every
``n``-th shard starting at ``k`` (array jobs), and the manifest is written once every shard of
the directory exists.
"""

from __future__ import annotations

import gzip
import hashlib
import multiprocessing as mp
import os
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import gemmi
import numpy as np

from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.simulate import ELEMENTS

from .shards import (
    SPLITS,
    Fragment,
    read_shard,
    sha256_file,
    shard_path,
    write_manifest,
    write_shard,
)

#: Heavy atoms of the 20 standard amino acids (OXT excluded).
_BACKBONE = ("N", "CA", "C", "O")
AMINO_ACID_ATOMS: dict[str, tuple[str, ...]] = {
    "GLY": _BACKBONE,
    "ALA": _BACKBONE + ("CB",),
    "SER": _BACKBONE + ("CB", "OG"),
    "CYS": _BACKBONE + ("CB", "SG"),
    "VAL": _BACKBONE + ("CB", "CG1", "CG2"),
    "THR": _BACKBONE + ("CB", "OG1", "CG2"),
    "PRO": _BACKBONE + ("CB", "CG", "CD"),
    "LEU": _BACKBONE + ("CB", "CG", "CD1", "CD2"),
    "ILE": _BACKBONE + ("CB", "CG1", "CG2", "CD1"),
    "MET": _BACKBONE + ("CB", "CG", "SD", "CE"),
    "ASP": _BACKBONE + ("CB", "CG", "OD1", "OD2"),
    "ASN": _BACKBONE + ("CB", "CG", "OD1", "ND2"),
    "GLU": _BACKBONE + ("CB", "CG", "CD", "OE1", "OE2"),
    "GLN": _BACKBONE + ("CB", "CG", "CD", "OE1", "NE2"),
    "LYS": _BACKBONE + ("CB", "CG", "CD", "CE", "NZ"),
    "ARG": _BACKBONE + ("CB", "CG", "CD", "NE", "CZ", "NH1", "NH2"),
    "HIS": _BACKBONE + ("CB", "CG", "ND1", "CD2", "CE1", "NE2"),
    "PHE": _BACKBONE + ("CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ"),
    "TYR": _BACKBONE + ("CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "OH"),
    "TRP": _BACKBONE + ("CB", "CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2"),
}
_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")


@dataclass(frozen=True)
class PrepareOptions:
    """What to extract (stored as the manifest's ``config``)."""

    length: int = 2
    dialanine: bool = False
    max_peptide_bond: float = 1.6
    max_per_entry: int | None = None
    max_entries: int | None = None
    entries_per_shard: int = 64
    seed: int = 0


def default_source() -> Path:
    """The shared PDownB tarball, ``../shared/data/pdb/pdownb_PDB.tar.xz`` from the repo root."""
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data" / "pdb" / "pdownb_PDB.tar.xz"


def entry_id(name: str) -> str | None:
    """PDB id from a file name (``1abc.pdb``, ``pdb1abc.ent.gz``, ``1ABC.cif``); None if not
    a coordinate file."""
    base = os.path.basename(name).lower()
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            stem = base[: -len(suffix)]
            if suffix.startswith(".ent") and stem.startswith("pdb"):
                stem = stem[3:]
            return stem or None
    return None


# ---------------------------------------------------------------------------------------------
# extraction from one entry
# ---------------------------------------------------------------------------------------------
def read_structure(name: str, data: bytes) -> gemmi.Structure:
    """Parse PDB or mmCIF bytes (optionally gzipped) named ``name``."""
    if name.lower().endswith(".gz"):
        data = gzip.decompress(data)
    text = data.decode("latin-1")
    base = name.lower().removesuffix(".gz")
    if base.endswith((".cif", ".mmcif")):
        return gemmi.make_structure_from_block(gemmi.cif.read_string(text).sole_block())
    return gemmi.read_pdb_string(text)


def _residue_atoms(res: gemmi.Residue, dialanine: bool
                   ) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """Elements, coordinates and B of a residue's standard heavy atoms; None if incomplete."""
    names = AMINO_ACID_ATOMS.get(res.name)
    if names is None:
        return None
    if dialanine:
        if res.name == "GLY":
            return None
        names = AMINO_ACID_ATOMS["ALA"]
    elements, xyz, b = [], [], []
    for atom_name in names:
        atom = res.find_atom(atom_name, "*")
        if atom is None:
            return None
        symbol = atom.element.name
        if symbol not in ELEMENTS:
            return None
        elements.append(symbol)
        xyz.append((atom.pos.x, atom.pos.y, atom.pos.z))
        b.append(atom.b_iso)
    return elements, np.array(xyz, dtype=np.float64), np.array(b, dtype=np.float64)


def _peptide_bonded(a: gemmi.Residue, b: gemmi.Residue, max_bond: float) -> bool:
    c, n = a.find_atom("C", "*"), b.find_atom("N", "*")
    return c is not None and n is not None and c.pos.dist(n.pos) < max_bond


def _label(res: gemmi.Residue) -> str:
    return f"{res.seqid.num}{res.seqid.icode.strip()}"


def extract_fragments(st: gemmi.Structure, entry: str, opts: PrepareOptions) -> list[Fragment]:
    """Fragments of ``opts.length`` peptide-bonded complete residues from model 1.

    Parameters
    ----------
    st
        The parsed structure (modified in place: hydrogens, waters, ligands and alternate
        conformations beyond the first are removed).
    entry
        The entry id used in ``Fragment.source``.
    opts
        Extraction options.
    """
    while len(st) > 1:
        del st[len(st) - 1]
    st.setup_entities()
    st.remove_hydrogens()
    st.remove_ligands_and_waters()
    st.remove_alternative_conformations()
    out: list[Fragment] = []
    if len(st) == 0:
        return out
    for chain in st[0]:
        residues = list(chain)
        atoms = [_residue_atoms(r, opts.dialanine) for r in residues]
        bonded = [_peptide_bonded(residues[i], residues[i + 1], opts.max_peptide_bond)
                  for i in range(len(residues) - 1)]
        for i in range(len(residues) - opts.length + 1):
            window = range(i, i + opts.length)
            if any(atoms[j] is None for j in window):
                continue
            if not all(bonded[j] for j in range(i, i + opts.length - 1)):
                continue
            elements = [e for j in window for e in atoms[j][0]]
            xyz = np.concatenate([atoms[j][1] for j in window])
            b = np.concatenate([atoms[j][2] for j in window])
            last = residues[i + opts.length - 1]
            src = f"{entry}/{chain.name}/{_label(residues[i])}-{_label(last)}"
            out.append(Fragment(elements=elements, xyz=xyz, b_iso=b, source=src))
    if opts.max_per_entry is not None and len(out) > opts.max_per_entry:
        rng = np.random.default_rng([opts.seed, _stable_int(entry)])
        keep = np.sort(rng.choice(len(out), size=opts.max_per_entry, replace=False))
        out = [out[k] for k in keep]
    return out


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _work(item: tuple[str, str, bytes, PrepareOptions]) -> tuple[str, list[Fragment], str]:
    """Worker: parse one entry; errors are returned (as text), not raised."""
    entry, name, data, opts = item
    try:
        return entry, extract_fragments(read_structure(name, data), entry, opts), ""
    except Exception as exc:  # noqa: BLE001 - a bad file must not stop a 2,000-entry run
        return entry, [], f"{name}: {exc}"


# ---------------------------------------------------------------------------------------------
# sources and splits
# ---------------------------------------------------------------------------------------------
def _is_tarball(path: Path) -> bool:
    return path.is_file() and any(str(path).endswith(s) for s in (".tar", ".tar.gz", ".tgz",
                                                                   ".tar.xz", ".tar.bz2"))


def list_source(source: Path) -> dict[str, str]:
    """Entry id -> member name (tarball) or file path (directory)."""
    found: dict[str, str] = {}
    if _is_tarball(source):
        with tarfile.open(source) as tar:
            names = [m.name for m in tar if m.isfile()]
    elif source.is_dir():
        names = [str(p) for p in sorted(source.rglob("*")) if p.is_file()]
    else:
        raise PattersolveError(f"source {source} is neither a directory nor a tarball",
                               "give a directory or .tar(.gz/.xz) of .pdb/.cif/.ent(.gz) files",
                               ExitCode.INPUT_MISSING)
    for name in names:
        ident = entry_id(name)
        if ident is not None and ident not in found:
            found[ident] = name
    if not found:
        raise PattersolveError(f"no .pdb/.cif/.ent(.gz) files in {source}",
                               "point --source at PDB or mmCIF coordinate files",
                               ExitCode.INPUT_MISSING)
    return found


def read_split_files(split_dir: Path) -> dict[str, str] | None:
    """Entry id -> split from ``*split_{train,val,test}.txt`` in ``split_dir``; None if absent."""
    mapping: dict[str, str] = {}
    for split in SPLITS:
        files = sorted(split_dir.glob(f"*split_{split}.txt"))
        if not files:
            return None
        for line in files[0].read_text().split():
            mapping[line.strip().lower()] = split
    return mapping


def hash_split(entry: str) -> str:
    """Deterministic split of an entry id: 90 % train, 5 % val, 5 % test."""
    u = _stable_int(entry) / 2**64
    return "train" if u < 0.90 else ("val" if u < 0.95 else "test")


def plan_shards(entries: dict[str, str], split_of: dict[str, str] | None,
                opts: PrepareOptions) -> list[tuple[str, int, list[str]]]:
    """``(split, shard index, entry ids)`` for every shard of the output directory."""
    by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for ident in sorted(entries):
        split = hash_split(ident) if split_of is None else split_of.get(ident)
        if split is not None:
            by_split[split].append(ident)
    plan = []
    for split in SPLITS:
        ids = by_split[split][: opts.max_entries] if opts.max_entries else by_split[split]
        for k in range(0, len(ids), opts.entries_per_shard):
            plan.append((split, k // opts.entries_per_shard, ids[k: k + opts.entries_per_shard]))
    return plan


def _read_members(source: Path, wanted: dict[str, str]) -> Iterator[tuple[str, str, bytes]]:
    """Yield ``(entry, name, bytes)`` for the wanted entries (one sequential tarball pass)."""
    if _is_tarball(source):
        by_name = {name: ident for ident, name in wanted.items()}
        with tarfile.open(source, mode="r|*") as tar:
            for member in tar:
                ident = by_name.get(member.name)
                if ident is not None and member.isfile():
                    fh = tar.extractfile(member)
                    if fh is not None:
                        yield ident, member.name, fh.read()
    else:
        for ident, name in wanted.items():
            yield ident, name, Path(name).read_bytes()


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
@dataclass
class PrepareReport:
    """What :func:`prepare` did."""

    n_entries: int
    n_fragments: int
    n_shards_written: int
    n_shards_skipped: int
    manifest_written: bool
    errors: list[str]
    seconds: float


def prepare(source: str | os.PathLike[str] | None, out: str | os.PathLike[str],
            opts: PrepareOptions, split_dir: str | os.PathLike[str] | None = None,
            workers: int = 1, shard: tuple[int, int] = (0, 1),
            progress: bool = True) -> PrepareReport:
    """Extract fragments from a source and write shards plus ``manifest.json`` to ``out``.

    Parameters
    ----------
    source
        Directory or tarball of ``.pdb/.cif/.ent(.gz)`` files; None for :func:`default_source`.
    out
        Output shard directory.
    opts
        Extraction options.
    split_dir
        Directory with ``*split_{train,val,test}.txt``; by default the source's directory (a
        tarball's parent) is searched, and a hash of the entry id is used when none are found.
    workers
        Worker processes for parsing (1 = in this process).
    shard
        ``(k, n)``: prepare only shards ``k, k + n, k + 2n, ...`` (array jobs).
    progress
        Show a tqdm progress bar.
    """
    import time

    t0 = time.perf_counter()
    src = Path(source) if source is not None else default_source()
    _check_request(src, shard, opts)
    k, n = shard
    entries = list_source(src)
    sdir = Path(split_dir) if split_dir is not None else (src.parent if src.is_file() else src)
    split_of = read_split_files(sdir)
    if split_dir is not None and split_of is None:
        raise PattersolveError(f"no *split_train/val/test.txt files in {split_dir}",
                               "give the directory holding all three split files",
                               ExitCode.INPUT_MISSING)
    plan = plan_shards(entries, split_of, opts)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    mine = [p for i, p in enumerate(plan) if i % n == k]
    todo = [p for p in mine if not (outdir / shard_path(p[0], p[1])).is_file()]
    wanted = {ident: entries[ident] for _, _, ids in todo for ident in ids}
    written, errors = write_shards(src, outdir, todo, wanted, opts, workers, progress)

    manifest_written = False
    n_frag_total = 0
    if all((outdir / shard_path(s, i)).is_file() for s, i, _ in plan):
        split_method = "hash-90-5-5" if split_of is None else f"files:{sdir.name}"
        n_frag_total = _write_full_manifest(outdir, plan, opts, src.name, split_method)
        manifest_written = True
    return PrepareReport(n_entries=len(wanted), n_fragments=n_frag_total, n_shards_written=written,
                         n_shards_skipped=len(mine) - len(todo), manifest_written=manifest_written,
                         errors=errors, seconds=time.perf_counter() - t0)


def _check_request(src: Path, shard: tuple[int, int], opts: PrepareOptions) -> None:
    """Refuse a missing source, a bad ``--shard k/n`` and a fragment length under 1."""
    if not src.exists():
        raise PattersolveError(f"source {src} does not exist",
                               "give --source DIR|TARBALL (the default is the shared PDownB "
                               "tarball in ../shared/data/pdb)", ExitCode.INPUT_MISSING)
    k, n = shard
    if not (n >= 1 and 0 <= k < n):
        raise PattersolveError(f"--shard {k}/{n} is invalid", "use k/n with 0 <= k < n",
                               ExitCode.USAGE)
    if opts.length < 1:
        raise PattersolveError("--length must be at least 1", "use --length 2 for dipeptides",
                               ExitCode.USAGE)


def write_shards(src: Path, outdir: Path, todo: list[tuple[str, int, list[str]]],
                 wanted: dict[str, str], opts: PrepareOptions, workers: int,
                 progress: bool) -> tuple[int, list[str]]:
    """Extract the ``wanted`` entries (id -> member or path) in one pass over the source and
    write each shard of ``todo`` as soon as all its entries are parsed.

    Returns the number of shards written and the errors (one line per entry that failed).
    """
    from tqdm import tqdm

    results: dict[str, list[Fragment]] = {}
    errors: list[str] = []
    written = 0
    pending = {(s, i): ids for s, i, ids in todo}
    remaining = {key: set(ids) for key, ids in pending.items()}
    shard_of = {ident: key for key, ids in pending.items() for ident in ids}

    def finish(key: tuple[str, int]) -> None:
        nonlocal written
        frags = [f for ident in pending[key] for f in results.pop(ident, [])]
        write_shard(outdir / shard_path(*key), frags)
        written += 1

    for key, ids in pending.items():  # shards whose entries are all absent (cannot happen
        if not ids:  # with plan_shards, kept for safety)
            finish(key)
    items = ((ident, name, data, opts) for ident, name, data in _read_members(src, wanted))
    bar = tqdm(total=len(wanted), desc="prepare", unit="entry", disable=not progress or None)
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        stream = pool.imap_unordered(_work, items, chunksize=4) if pool else map(_work, items)
        for ident, frags, err in stream:
            bar.update(1)
            if err:
                errors.append(err)
            results[ident] = frags
            key = shard_of[ident]
            remaining[key].discard(ident)
            if not remaining[key]:
                finish(key)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    for key, left in remaining.items():  # entries listed but not found in a tarball pass
        if left and not (outdir / shard_path(*key)).is_file():
            errors.extend(f"{ident}: not read from the source" for ident in left)
            finish(key)
    return written, errors


def _write_full_manifest(outdir: Path, plan: list[tuple[str, int, list[str]]],
                         opts: PrepareOptions, source_name: str, split_method: str) -> int:
    """``manifest.json`` over every shard of the plan (all written); returns the number of
    fragments in them."""
    shards = []
    n_frag_total = 0
    for s, i, _ in plan:
        path = outdir / shard_path(s, i)
        count = len(read_shard(path))
        n_frag_total += count
        shards.append({"path": shard_path(s, i), "split": s, "n_fragments": count,
                       "sha256": sha256_file(path)})
    config = asdict(opts) | {
        "source": source_name,
        "split_method": split_method,
        "n_entries": {s: sum(len(ids) for sp, _, ids in plan if sp == s) for s in SPLITS},
    }
    write_manifest(outdir, config, shards)
    return n_frag_total
