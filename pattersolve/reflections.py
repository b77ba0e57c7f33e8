"""Reading reflections: choose columns, merge anomalous pairs, expand to P1, cut resolution.

Every input format becomes a :class:`gemmi.Mtz` in the crystal's space group (MTZ files
directly; mmCIF structure factors and SHELX ``.hkl`` through :mod:`pattersolve.formats`; a
:class:`gemmi.Mtz` already in memory is copied, never changed).
Columns are chosen by MTZ type first, then label priority (:mod:`pattersolve.settings`);
ambiguity is an error that lists the candidates and the flag that picks one.

The Patterson takes intensities where the file has them; amplitudes for refinement and the
output come from the file's amplitude column, else from the intensities by French & Wilson
(:mod:`pattersolve.frenchwilson`).

The result, :class:`Reflections`, holds the data as the P1 half-sphere the rest of the
program works on, plus the unique (asymmetric-unit) columns to copy into the output MTZ.

Bad input fails here, at read time, with one :class:`~pattersolve.errors.PattersolveError`
line and a documented exit code: a file that is not one of the formats or is corrupt
(Miller indices that are not integers) INPUT_FORMAT (4); a cell that is no cell or too small
for one atom (:func:`pattersolve.formats.check_cell`), a reflection beyond the resolution any
experiment measures in the cell (d below :data:`~pattersolve.settings.MIN_D_SPACING`), no
usable reflection, or only zero or negative amplitudes/intensities DATA (6); a bad ``--cell``
or ``--spacegroup`` USAGE (2).

Text in the MTZ header (title, history, project/crystal/dataset names, column labels) is read
tolerantly: bytes that are not UTF-8 are taken as Latin-1, and everything is kept as ASCII
(accents dropped, other characters ``?``), so that gemmi can give it back and write it again
(it cuts header lines at 80 bytes, which can split a UTF-8 character). Use
:func:`mtz_text_fields` or :func:`safe_history` on any :class:`gemmi.Mtz` whose text may be
undecodable; the MTZ a :class:`Reflections` holds is already safe.
"""

from __future__ import annotations

import os
import struct
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

from . import frenchwilson, settings
from .errors import ExitCode, PattersolveError
from .formats import CELL_FLAG_FIX, check_cell, find_spacegroup, format_cell
from .fourier import d_spacings, is_half_sphere, miller_sphere

__all__ = ["ColumnChoice", "Reflections", "read_reflections", "load_mtz", "choose_columns",
           "expand_to_p1_half", "find_spacegroup", "mtz_text_fields", "safe_history",
           "ascii_text"]

#: What :func:`read_reflections` reads: a file path or an MTZ in memory.
Source = str | os.PathLike[str] | gemmi.Mtz
IN_MEMORY = "the gemmi.Mtz in memory"


@dataclass
class ColumnChoice:
    """Which MTZ columns were used, and why."""

    kind: str  # "intensity", "amplitude", "anomalous-intensity", "anomalous-amplitude"
    value: list[str]  # one label, or the (+)/(-) pair
    sigma: list[str] = field(default_factory=list)
    amplitude: str | None = None  # amplitude column used for refinement/output, if any
    sigma_amplitude: str | None = None
    free: str | None = None


@dataclass
class Reflections:
    """Measured data, ready for the Patterson and refinement.

    Attributes
    ----------
    cell, spacegroup
        The crystal's cell and space group.
    hkl
        P1 half-sphere Miller indices ``(n, 3)`` (000 excluded, systematic absences dropped).
    intensity
        ``|F|^2`` estimates for the Patterson (negative measured intensities clipped to 0).
    amplitude
        ``|F|`` for refinement (measured amplitudes, or from intensities by French & Wilson).
    sigma
        Standard uncertainty of ``amplitude`` (``None`` when the input has none).
    free
        Free-set flag per P1 reflection (``None`` when the input has none).
    d
        Resolution of each reflection, Angstrom.
    asu_hkl, asu_amplitude, asu_sigma, asu_free
        The unique reflections in the crystal's space group (for copying FP/SIGFP/FREE).
    summary
        What was read and used, for the log and the JSON summary.
    mtz
        The source MTZ (dataset names, wavelength, history).
    """

    cell: gemmi.UnitCell
    spacegroup: gemmi.SpaceGroup
    hkl: np.ndarray
    intensity: np.ndarray
    amplitude: np.ndarray
    sigma: np.ndarray | None
    free: np.ndarray | None
    d: np.ndarray
    asu_hkl: np.ndarray
    asu_amplitude: np.ndarray
    asu_sigma: np.ndarray | None
    asu_free: np.ndarray | None
    summary: dict[str, Any]
    mtz: gemmi.Mtz | None

    @classmethod
    def from_arrays(cls, cell: gemmi.UnitCell, hkl: np.ndarray, amplitude: np.ndarray,
                    sigma: np.ndarray | None = None) -> Reflections:
        """P1 data held in memory (simulations, benchmarks): half-sphere ``hkl``, ``|F|``."""
        hkl = np.asarray(hkl, dtype=np.int64)
        amplitude = np.asarray(amplitude, dtype=np.float64)
        d = d_spacings(cell, hkl)
        return cls(cell=cell, spacegroup=gemmi.SpaceGroup("P 1"), hkl=hkl,
                   intensity=amplitude**2, amplitude=amplitude, sigma=sigma, free=None, d=d,
                   asu_hkl=hkl, asu_amplitude=amplitude, asu_sigma=sigma, asu_free=None,
                   summary={"format": "arrays", "reflections_p1": len(hkl)}, mtz=None)

    @property
    def d_min(self) -> float:
        """High-resolution limit of the data used."""
        return float(self.d.min())

    @property
    def d_max(self) -> float:
        """Low-resolution limit of the data used."""
        return float(self.d.max())


# ---------------------------------------------------------------------------------------------
# header text
# ---------------------------------------------------------------------------------------------
def ascii_text(text: str) -> str:
    """``text`` in printable ASCII: accents dropped (``é`` -> ``e``), tabs as spaces, any
    other character outside ASCII ``?``."""
    out = []
    for ch in unicodedata.normalize("NFKD", text):
        if unicodedata.combining(ch):
            continue
        out.append(" " if ch == "\t" else ch if " " <= ch <= "~" else "?")
    return "".join(out)


def _decode(raw: bytes) -> str:
    """A header field's bytes as text: UTF-8, else Latin-1 (every byte is a character)."""
    raw = raw.rstrip(b" \x00")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _header_records(mtz: gemmi.Mtz) -> list[bytes]:
    """The 80-byte header records of the MTZ as gemmi writes it (its raw text)."""
    raw = mtz.write_to_bytes()
    order = "<" if raw[8] >> 4 == 4 else ">"  # machine stamp: 0x4_ little-endian IEEE
    start = (struct.unpack(order + "i", raw[4:8])[0] - 1) * 4
    return [raw[i:i + 80] for i in range(start, len(raw) - 79, 80)]


def _raw_text_fields(mtz: gemmi.Mtz) -> dict[str, Any]:
    """Title, history, dataset names by id and column labels, decoded from the raw header
    (what is missing or unparsable stays empty)."""
    fields: dict[str, Any] = {"title": "", "history": [], "datasets": {}, "columns": []}
    keys = {b"PROJECT": "project", b"CRYSTAL": "crystal", b"DATASET": "dataset"}
    try:
        records = _header_records(mtz)
    except (RuntimeError, ValueError, IndexError, struct.error):  # gemmi cannot write it
        return fields
    i = 0
    while i < len(records):
        rec = records[i]
        try:
            if rec.startswith(b"TITLE"):
                fields["title"] = _decode(rec[6:])
            elif rec[:7] in keys:
                ds_id, _, name = rec[7:].strip().partition(b" ")
                fields["datasets"].setdefault(int(ds_id), {})[keys[rec[:7]]] = _decode(
                    name.strip())
            elif rec.startswith(b"COLUMN "):
                fields["columns"].append(_decode(rec[7:].split()[0]))
            elif rec.startswith(b"MTZHIST"):
                n = int(rec[7:].split()[0])
                fields["history"] = [_decode(r) for r in records[i + 1:i + 1 + n]]
                i += n
            elif rec.startswith(b"MTZENDOFHEADERS"):
                break
        except (ValueError, IndexError):
            pass
        i += 1
    return fields


def mtz_text_fields(mtz: gemmi.Mtz) -> dict[str, Any]:
    """The MTZ's text, never raising on bytes gemmi cannot decode.

    gemmi reads any header, but raises :class:`UnicodeDecodeError` when Python asks for a
    field that is not UTF-8 (``mtz.history``, ``mtz.title``, ``dataset.crystal_name``,
    ``column.label``). Such fields are decoded here from the raw header as Latin-1.

    Returns
    -------
    dict
        ``title`` (str), ``history`` (list of str), ``datasets`` (list of dicts with ``id``,
        ``project``, ``crystal``, ``dataset``, in ``mtz.datasets`` order) and ``columns``
        (labels in ``mtz.columns`` order), all printable ASCII (:func:`ascii_text`).
    """
    raw: dict[str, Any] = {}

    def fallback() -> dict[str, Any]:
        if not raw:
            raw.update(_raw_text_fields(mtz))
        return raw

    title = _get(lambda: mtz.title, lambda: fallback()["title"])
    history = _get(lambda: list(mtz.history), lambda: fallback()["history"])
    datasets = []
    for ds in mtz.datasets:
        names: dict[str, Any] = {"id": ds.id}
        for key in ("project", "crystal", "dataset"):
            names[key] = ascii_text(_get(
                lambda ds=ds, key=key: getattr(ds, f"{key}_name"),
                lambda ds=ds, key=key: fallback()["datasets"].get(ds.id, {}).get(key, "?")))
        datasets.append(names)
    columns = []
    for i, col in enumerate(mtz.columns):
        labels = _get(lambda col=col: [col.label], lambda: fallback()["columns"])
        columns.append(ascii_text(labels[0] if len(labels) == 1 else
                                  labels[i] if i < len(labels) else f"COL{i + 1}"))
    return {"title": ascii_text(title), "history": [ascii_text(h) for h in history],
            "datasets": datasets, "columns": columns}


def _get(read: Any, fallback: Any) -> Any:
    """``read()``, or ``fallback()`` where gemmi cannot decode the text."""
    try:
        return read()
    except UnicodeDecodeError:
        return fallback()


def safe_history(mtz: gemmi.Mtz) -> list[str]:
    """``mtz.history`` as printable ASCII lines, whatever bytes the file holds."""
    return mtz_text_fields(mtz)["history"]


def _make_text_safe(mtz: gemmi.Mtz) -> list[str]:
    """Replace every header text field gemmi cannot decode, or that is not ASCII, by its
    :func:`mtz_text_fields` value; returns the names of the fields replaced."""
    safe = mtz_text_fields(mtz)
    changed = []
    if _get(lambda: mtz.title, lambda: None) != safe["title"]:
        mtz.title = safe["title"]
        changed.append("title")
    if _get(lambda: list(mtz.history), lambda: None) != safe["history"]:
        mtz.history = safe["history"]
        changed.append("history")
    for ds, names in zip(mtz.datasets, safe["datasets"], strict=True):
        for key in ("project", "crystal", "dataset"):
            if _get(lambda ds=ds, key=key: getattr(ds, f"{key}_name"), lambda: None) \
                    != names[key]:
                setattr(ds, f"{key}_name", names[key])
                changed.append(f"{key} name")
    for col, label in zip(mtz.columns, safe["columns"], strict=True):
        if _get(lambda col=col: col.label, lambda: None) != label:
            col.label = label
            changed.append(f"column label {label}")
    return list(dict.fromkeys(changed))


# ---------------------------------------------------------------------------------------------
# loading and the checks at read time
# ---------------------------------------------------------------------------------------------
@dataclass
class _Loaded:
    """An input read into an MTZ, with what the summary says about it."""

    mtz: gemmi.Mtz
    fmt: str  # "mtz", "mmcif", "shelx" or "mtz (in memory)"
    name: str  # the file, or IN_MEMORY, for messages
    file: str | None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # more summary items (SHELX counts)


def load_mtz(
    path: Source,
    *,
    cell: tuple[float, ...] | None = None,
    spacegroup: str | None = None,
) -> tuple[gemmi.Mtz, str]:
    """Read any supported reflection file (or copy a :class:`gemmi.Mtz`) into a checked
    :class:`gemmi.Mtz`.

    Returns the MTZ and the format name (``"mtz"``, ``"mmcif"``, ``"shelx"`` or
    ``"mtz (in memory)"``). The cell, the space group and every Miller index are checked
    (see the module's docstring) and the header text made safe (:func:`mtz_text_fields`).
    """
    loaded = _load(path, cell, spacegroup)
    return loaded.mtz, loaded.fmt


def _load(source: Source, cell: tuple[float, ...] | None, spacegroup: str | None) -> _Loaded:
    """Read, apply ``cell``/``spacegroup``, check the header and the indices."""
    given_cell = None
    if cell is not None:
        given_cell = check_cell(cell, "--cell", "give six numbers A,B,C,ALPHA,BETA,GAMMA "
                                "(Angstrom, degrees) that make a unit cell with --cell",
                                ExitCode.USAGE)
    given_sg = None if spacegroup is None else find_spacegroup(spacegroup)
    if isinstance(source, gemmi.Mtz):
        loaded = _Loaded(_copy_mtz(source, given_sg), "mtz (in memory)", IN_MEMORY, None)
    else:
        loaded = _read_file(Path(source), given_cell, given_sg)
    mtz = loaded.mtz
    if given_cell is not None:
        mtz.set_cell_for_all(given_cell)
    if given_sg is not None:
        mtz.spacegroup = given_sg
    if mtz.spacegroup is None:
        raise PattersolveError(f"{loaded.name} names no space group", "give --spacegroup",
                               ExitCode.INPUT_FORMAT)
    if given_cell is None:
        check_cell(mtz.cell, f"the cell of {loaded.name}")
    _check_columns(mtz, loaded.name)
    _check_indices(mtz, loaded.name, "the file's cell" if given_cell is None
                   else "the cell given with --cell")
    _check_merged(mtz, loaded.name)
    changed = _make_text_safe(mtz)
    if changed:
        loaded.notes.append("header text kept as ASCII (bytes that are not UTF-8 read as "
                            "Latin-1, accents dropped, other characters '?'): "
                            + ", ".join(changed))
    return loaded


def _read_file(p: Path, cell: gemmi.UnitCell | None, sg: gemmi.SpaceGroup | None) -> _Loaded:
    """An MTZ, mmCIF or SHELX file (by suffix) as an MTZ."""
    if not p.exists():
        raise PattersolveError(f"input file {p} does not exist", "check the path",
                               ExitCode.INPUT_MISSING)
    if not p.is_file() or not os.access(p, os.R_OK):
        raise PattersolveError(f"input file {p} is not a readable file",
                               "check the path and its permissions", ExitCode.INPUT_MISSING)
    suffix = "".join(p.suffixes[-2:]).lower() if p.suffix == ".gz" else p.suffix.lower()
    if suffix in (".cif", ".mmcif", ".cif.gz", ".ent"):
        from .formats import embedded_hkl, read_sf_cif

        text = embedded_hkl(p) if suffix == ".cif" else None
        if text is not None:
            return _read_embedded_hkl(p, text, cell, sg)
        return _Loaded(read_sf_cif(p, cell=cell, spacegroup=sg), "mmcif", str(p), str(p))
    if suffix in (".hkl", ".hkl.gz"):
        from .formats import read_shelx_hkl_with_stats

        mtz, stats = read_shelx_hkl_with_stats(p, cell=cell, spacegroup=sg)
        return _Loaded(mtz, "shelx", str(p), str(p), [_shelx_note(stats)],
                       {"observations": stats})
    try:
        mtz = gemmi.read_mtz_file(str(p))
    except (RuntimeError, ValueError, OSError, MemoryError) as exc:
        raise PattersolveError(
            f"{p} is not a readable MTZ file ({exc})",
            "give an MTZ, an mmCIF structure-factor file (.cif) or a SHELX .hkl file",
            ExitCode.INPUT_FORMAT,
        ) from None
    return _Loaded(mtz, "mtz", str(p), str(p))


def _read_embedded_hkl(p: Path, text: str, cell: gemmi.UnitCell | None,
                       sg: gemmi.SpaceGroup | None) -> _Loaded:
    """A small-molecule CIF's ``_shelx_hkl_file`` read as a SHELX file, with the CIF's own
    cell and symmetry (and its formula, for the first model)."""
    import tempfile

    from .formats import read_shelx_hkl_with_stats

    with tempfile.TemporaryDirectory() as tmp:
        hkl = Path(tmp) / (p.stem + ".hkl")
        hkl.write_text(text)
        mtz, stats = read_shelx_hkl_with_stats(hkl, cell=cell, spacegroup=sg,
                                               ins=None if cell and sg else p)
    if not (cell and sg):
        stats["symmetry_from"] = str(p)
    return _Loaded(mtz, "shelx (in CIF)", str(p), str(p),
                   [_shelx_note(stats) + " (the CIF's _shelx_hkl_file)"],
                   {"observations": stats})


def _shelx_note(stats: dict[str, Any]) -> str:
    """What the SHELX merge read, dropped and kept, for the log."""
    kept = (stats["observations"] - stats["dropped_sigma_le_0"]
            - stats["dropped_systematic_absences"])
    return (f"SHELX file: {stats['observations']} observations; dropped "
            f"{stats['dropped_sigma_zero']} with sigma = 0 (no weight), "
            f"{stats['dropped_sigma_negative']} with sigma < 0 (marked rejected) and "
            f"{stats['dropped_systematic_absences']} systematically absent; merged the other "
            f"{kept} to {stats['unique']} unique reflections")


def _copy_mtz(mtz: gemmi.Mtz, spacegroup: gemmi.SpaceGroup | None) -> gemmi.Mtz:
    """A copy of an MTZ in memory (through a temporary file: gemmi has no copy), so that the
    caller's object is never changed; ``spacegroup`` stands in for a missing one."""
    if mtz.spacegroup is None and spacegroup is None:
        raise PattersolveError(f"{IN_MEMORY} names no space group", "give --spacegroup",
                               ExitCode.INPUT_FORMAT)
    missing_sg = mtz.spacegroup is None
    try:
        if missing_sg:
            mtz.spacegroup = spacegroup
        with tempfile.TemporaryDirectory(prefix="pattersolve-") as tmp:
            copy = os.path.join(tmp, "copy.mtz")
            mtz.write_to_file(copy)
            return gemmi.read_mtz_file(copy)
    except (RuntimeError, ValueError, OSError) as exc:
        raise PattersolveError(f"{IN_MEMORY} cannot be read ({exc})",
                               "check the gemmi.Mtz object (columns, datasets, data)",
                               ExitCode.INPUT_FORMAT) from None
    finally:
        if missing_sg:
            mtz.spacegroup = None


def _check_columns(mtz: gemmi.Mtz, name: str) -> None:
    """The column table is whole: H K L first, every type readable, every column's dataset
    defined (a header cut short or overwritten fails here, not in the output writer)."""
    fix = "give an intact file (write it again from the program that made it)"
    ids = {ds.id for ds in mtz.datasets}
    for i, col in enumerate(mtz.columns):
        what = f"{name}: the header's column {i + 1}"
        try:
            typ = col.type
        except UnicodeDecodeError:
            raise PattersolveError(f"{what} has an unreadable type byte: the file is corrupt",
                                   fix, ExitCode.INPUT_FORMAT) from None
        if i < 3 and typ != "H":
            raise PattersolveError(f"{what} has type {typ!r} where a Miller index (type H) "
                                   "belongs: the file is corrupt", fix, ExitCode.INPUT_FORMAT)
        if col.dataset_id not in ids:
            raise PattersolveError(
                f"{what} belongs to dataset {col.dataset_id}, which the header does not define "
                "(a truncated or damaged header)", fix, ExitCode.INPUT_FORMAT)
    if len(mtz.columns) < 4:
        raise PattersolveError(f"{name} has no data columns besides H K L",
                               "give a file with measured data", ExitCode.COLUMNS)


def _check_merged(mtz: gemmi.Mtz, name: str) -> None:
    """Merged data only: no M/ISYM or BATCH column (the marks of unmerged MTZ files)."""
    fix = ("merge the observations first (e.g. with AIMLESS or gemmi merge) and give the "
           "merged file")
    kinds = {c.type for c in mtz.columns}
    if "B" in kinds or "Y" in kinds:
        raise PattersolveError(f"{name} holds unmerged observations (M/ISYM or BATCH columns)",
                               fix, ExitCode.DATA)


def _check_indices(mtz: gemmi.Mtz, name: str, cell_source: str) -> None:
    """Every Miller index an integer, and none beyond the resolution any experiment reaches
    in the cell (d < MIN_D_SPACING: the cell or the index is wrong)."""
    hkl = np.asarray(mtz.array)[:, :3].astype(np.float64)
    bad = ~np.isfinite(hkl).all(axis=1)
    bad[~bad] = (hkl[~bad] != np.round(hkl[~bad])).any(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise PattersolveError(
            f"{name}: reflection row {row + 1} of {len(hkl)} has Miller indices "
            f"{' '.join(f'{x:g}' for x in hkl[row])} that are not integers: the file is corrupt",
            "give an intact file (write it again from the program that made it)",
            ExitCode.INPUT_FORMAT)
    d = d_spacings(mtz.cell, hkl)
    low = np.flatnonzero(d < settings.MIN_D_SPACING)
    if len(low):
        row = int(low[0])
        more = f" (and {len(low) - 1} more)" if len(low) > 1 else ""
        raise PattersolveError(
            f"{name}: reflection {' '.join(f'{x:g}' for x in hkl[row])} (row {row + 1}){more} "
            f"has d = {d[row]:.3g} A in {cell_source} {format_cell(mtz.cell)}, below the "
            f"{settings.MIN_D_SPACING:g} A that any X-ray or electron experiment reaches: the "
            "cell or the index is wrong", CELL_FLAG_FIX, ExitCode.DATA)


# ---------------------------------------------------------------------------------------------
# column choice
# ---------------------------------------------------------------------------------------------
def _labels_of_type(mtz: gemmi.Mtz, types: str) -> list[str]:
    return [c.label for c in mtz.columns if c.type in types]


def _pick(mtz: gemmi.Mtz, types: str, priority: tuple[str, ...], what: str, flag: str
          ) -> str | None:
    """One column of the given types: the only one, else the first by priority, else error."""
    candidates = _labels_of_type(mtz, types)
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    for label in priority:
        if label in candidates:
            return label
    raise PattersolveError(
        f"ambiguous {what} columns: {', '.join(candidates)}",
        f"pick one with {flag} LABEL",
        ExitCode.COLUMNS,
    )


def _sigma_for(mtz: gemmi.Mtz, label: str, sigma_types: str) -> str | None:
    """The sigma paired with a column: ``SIG``+label, else the next column if of sigma type."""
    labels = mtz.column_labels()
    for cand in ("SIG" + label, "SIG" + label.replace("(", "").replace(")", ""),
                 "SIG" + label.split("_")[0]):
        col = mtz.column_with_label(cand)
        if col is not None and col.type in sigma_types:
            return cand
    i = labels.index(label)
    if i + 1 < len(labels) and mtz.columns[i + 1].type in sigma_types:
        return labels[i + 1]
    return None


def _require(mtz: gemmi.Mtz, label: str, types: str, flag: str) -> str:
    col = mtz.column_with_label(label)
    if col is None:
        raise PattersolveError(
            f"column {label!r} not found; the file has: {', '.join(mtz.column_labels())}",
            f"give an existing label with {flag}", ExitCode.COLUMNS)
    if col.type not in types:
        raise PattersolveError(
            f"column {label!r} has MTZ type {col.type}, expected one of {', '.join(types)}",
            f"give a column of the right type with {flag}", ExitCode.COLUMNS)
    return label


def choose_columns(
    mtz: gemmi.Mtz,
    *,
    i_label: str | None = None,
    sigi_label: str | None = None,
    f_label: str | None = None,
    sigf_label: str | None = None,
    free_label: str | None = None,
) -> ColumnChoice:
    """Choose intensity/amplitude, sigma and free-flag columns (explicit labels win).

    Intensities (type J) are preferred for the Patterson; amplitudes (type F) otherwise;
    anomalous pairs (K, then G) are merged to a mean when no mean column exists. An
    amplitude column, when present, is also used for refinement and copied to the output.
    """
    choice: ColumnChoice | None = None
    amp: str | None = None
    if f_label is not None:
        amp = _require(mtz, f_label, "F", "--f-label")
    if i_label is not None:
        lab = _require(mtz, i_label, "J", "--i-label")
        sig = (_require(mtz, sigi_label, "Q", "--sigi-label") if sigi_label
               else _sigma_for(mtz, lab, "Q"))
        choice = ColumnChoice("intensity", [lab], [sig] if sig else [])
    elif f_label is not None:
        choice = ColumnChoice("amplitude", [amp or f_label], [])
    else:
        lab = _pick(mtz, "J", settings.INTENSITY_LABELS, "intensity", "--i-label")
        if lab is not None:
            sig = _sigma_for(mtz, lab, "Q")
            choice = ColumnChoice("intensity", [lab], [sig] if sig else [])
    if amp is None and f_label is None:
        amp = _pick(mtz, "F", settings.AMPLITUDE_LABELS, "amplitude", "--f-label")
    if choice is None and amp is not None:
        choice = ColumnChoice("amplitude", [amp], [])
    if choice is None:
        for kind, types, sig_type, pairs in (
            ("anomalous-intensity", "K", "M", settings.ANOMALOUS_I_LABELS),
            ("anomalous-amplitude", "G", "L", settings.ANOMALOUS_F_LABELS),
        ):
            cands = _labels_of_type(mtz, types)
            if not cands:
                continue
            pair = next((p for p in pairs if p[0] in cands and p[1] in cands), None)
            if pair is None and len(cands) == 2:
                pair = (cands[0], cands[1])
            if pair is None:
                raise PattersolveError(
                    f"ambiguous anomalous columns: {', '.join(cands)}",
                    "pick a mean column with --i-label or --f-label", ExitCode.COLUMNS)
            sigs = [_sigma_for(mtz, lab, sig_type) for lab in pair]
            choice = ColumnChoice(kind, list(pair), [s for s in sigs if s])
            break
    if choice is None:
        raise PattersolveError(
            "no intensity or amplitude column (MTZ types J, F, K or G) in the file; it has: "
            + ", ".join(f"{c.label}({c.type})" for c in mtz.columns),
            "give a file with measured data, or name columns with --i-label/--f-label",
            ExitCode.COLUMNS,
        )
    if amp is not None:
        choice.amplitude = amp
        choice.sigma_amplitude = (_require(mtz, sigf_label, "Q", "--sigf-label") if sigf_label
                                  else _sigma_for(mtz, amp, "Q"))
        if choice.kind == "amplitude":
            choice.sigma = [choice.sigma_amplitude] if choice.sigma_amplitude else []
    if free_label is not None:
        choice.free = _require(mtz, free_label, "I", "--free-label")
    else:
        frees = _labels_of_type(mtz, "I")
        choice.free = next((lab for lab in settings.FREE_LABELS if lab in frees),
                           frees[0] if len(frees) == 1 else None)
    return choice


# ---------------------------------------------------------------------------------------------
# symmetry expansion
# ---------------------------------------------------------------------------------------------
def expand_to_p1_half(hkl: np.ndarray, values: list[np.ndarray], spacegroup: gemmi.SpaceGroup
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Expand unique reflections of real-valued data to the P1 half-sphere.

    Symmetry mates ``h R`` of each reflection carry the same intensity or amplitude; Friedel
    mates are folded onto the half-sphere. Duplicates (from centring or special positions)
    keep their first occurrence.
    """
    hkl = np.asarray(hkl, dtype=np.int64)
    rots = [np.array(op.rot, dtype=np.int64) // op.DEN for op in spacegroup.operations().sym_ops]
    all_h = np.concatenate([hkl @ r for r in rots])
    all_h = np.where(is_half_sphere(all_h)[:, None], all_h, -all_h)
    all_v = [np.concatenate([v] * len(rots)) for v in values]
    _, first = np.unique(all_h, axis=0, return_index=True)
    first = np.sort(first)
    out_h = all_h[first]
    order = np.lexsort((out_h[:, 2], out_h[:, 1], out_h[:, 0]))
    return out_h[order], [v[first][order] for v in all_v]


# ---------------------------------------------------------------------------------------------
# the reader
# ---------------------------------------------------------------------------------------------
def read_reflections(
    path: Source,
    *,
    i_label: str | None = None,
    sigi_label: str | None = None,
    f_label: str | None = None,
    sigf_label: str | None = None,
    free_label: str | None = None,
    d_min: float | None = None,
    d_max: float | None = None,
    cell: tuple[float, ...] | None = None,
    spacegroup: str | None = None,
    french_wilson: bool = True,
) -> Reflections:
    """Read measured data and prepare the P1 half-sphere the program works on.

    Parameters
    ----------
    path
        MTZ, mmCIF structure factors (``.cif``) or SHELX HKLF4 (``.hkl``), or a
        :class:`gemmi.Mtz` in memory (copied: the object is not changed; the summary's
        ``file`` is then ``None`` and its ``format`` ``"mtz (in memory)"``).
    i_label, sigi_label, f_label, sigf_label, free_label
        Explicit column labels; otherwise chosen by type and priority.
    d_min, d_max
        Resolution cut (Angstrom).
    cell, spacegroup
        Override (or, for SHELX files and mmCIF blocks without them, supply) the cell and
        space group.
    french_wilson
        Where amplitudes come from intensities with sigmas, take the French & Wilson
        posterior (:mod:`pattersolve.frenchwilson`); False: ``sqrt(max(I, 0))``. The
        Patterson always uses the intensities themselves.

    Returns
    -------
    Reflections
        Raises :class:`~pattersolve.errors.PattersolveError` for unusable input (the
        module's docstring lists the checks and their exit codes).

    Examples
    --------
    >>> refl = read_reflections("share/examples/alaala_10A.mtz")  # doctest: +SKIP
    >>> refl.summary["columns"]  # doctest: +SKIP
    {'intensity': None, 'amplitude': 'FP', 'sigma': 'SIGFP', 'free': 'FreeR_flag'}
    """
    loaded = _load(path, cell, spacegroup)
    mtz, notes = loaded.mtz, loaded.notes
    if mtz.nreflections == 0:
        raise PattersolveError(f"{loaded.name} holds no reflections", "give a file with data",
                               ExitCode.DATA)
    choice = choose_columns(mtz, i_label=i_label, sigi_label=sigi_label, f_label=f_label,
                            sigf_label=sigf_label, free_label=free_label)
    hkl = mtz.make_miller_array().astype(np.int64)
    val, sig = _measured_values(mtz, choice, notes)
    is_intensity = choice.kind in ("intensity", "anomalous-intensity")
    ok = _usable(mtz, hkl, val, sig, is_intensity, notes)
    ok = _cut_resolution(mtz.cell, hkl, ok, d_min, d_max, loaded.name)
    _check_some_positive(val, ok, is_intensity, choice, loaded.name)
    if is_intensity:
        n_neg = int((val[ok] < 0).sum())
        if n_neg:
            notes.append(f"{n_neg} negative intensities set to 0 for the Patterson")
        intensity = np.clip(val, 0, None)
    else:
        intensity = val**2
    amplitude, sigma_amp, amplitudes_from = _amplitudes(mtz, choice, hkl, val, sig, ok,
                                                        french_wilson, notes)
    refl = _assemble(mtz, hkl, ok, intensity, amplitude, sigma_amp,
                     _column(mtz, choice.free))
    refl.summary = {
        "file": loaded.file,
        "format": loaded.fmt,
        "cell": [round(x, 4) for x in mtz.cell.parameters],
        "spacegroup": mtz.spacegroup.hm,
        "columns": {
            "kind": choice.kind,
            "value": choice.value,
            "sigma": choice.sigma,
            "amplitude": choice.amplitude,
            "sigma_amplitude": choice.sigma_amplitude,
            "free": choice.free,
        },
        "patterson_from": "intensities" if is_intensity else "amplitudes squared",
        "amplitudes_from": amplitudes_from,
        "reflections_in_file": int(mtz.nreflections),
        "reflections_used": int(ok.sum()),
        **refl.summary,
        **loaded.extra,
        "notes": notes,
    }
    return refl


def _column(mtz: gemmi.Mtz, label: str | None) -> np.ndarray | None:
    """A column as float64, infinities as missing (NaN); ``None`` for no label."""
    if label is None:
        return None
    values = np.array(mtz.column_with_label(label), dtype=np.float64)
    values[np.isinf(values)] = np.nan
    return values


def _measured_values(mtz: gemmi.Mtz, choice: ColumnChoice, notes: list[str]
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """The Patterson's values and their sigmas: one column, or an anomalous pair's mean."""
    if choice.kind in ("intensity", "amplitude"):
        val = _column(mtz, choice.value[0])
        assert val is not None
        return val, _column(mtz, choice.sigma[0]) if choice.sigma else None
    plus, minus = _column(mtz, choice.value[0]), _column(mtz, choice.value[1])
    assert plus is not None and minus is not None
    val = np.where(np.isnan(plus), minus, np.where(np.isnan(minus), plus, (plus + minus) / 2))
    sig = None
    if len(choice.sigma) == 2:
        sp, sm = _column(mtz, choice.sigma[0]), _column(mtz, choice.sigma[1])
        assert sp is not None and sm is not None
        sig = np.where(np.isnan(sp), sm, np.where(np.isnan(sm), sp,
                                                  0.5 * np.sqrt(sp**2 + sm**2)))
    notes.append(f"merged anomalous pair {choice.value[0]}/{choice.value[1]} to a mean")
    return val, sig


def _usable(mtz: gemmi.Mtz, hkl: np.ndarray, val: np.ndarray, sig: np.ndarray | None,
            is_intensity: bool, notes: list[str]) -> np.ndarray:
    """Rows with a finite value (and a finite positive sigma), no negative amplitude, not
    systematically absent and not 000; what is dropped goes into ``notes``."""
    ok = np.isfinite(val)
    n_nan = int((~ok).sum())
    if sig is not None:
        good_sig = np.isfinite(sig) & (sig > 0)
        bad_sig = ok & ~good_sig
        if bad_sig.any():
            notes.append(f"dropped {int(bad_sig.sum())} reflections with sigma <= 0 or missing")
        ok &= good_sig
    if n_nan:
        notes.append(f"skipped {n_nan} missing (NaN or infinite) reflections")
    if not is_intensity:
        neg = ok & (val < 0)
        if neg.any():
            notes.append(f"dropped {int(neg.sum())} negative amplitudes")
        ok &= val >= 0
    absent = mtz.spacegroup.operations().systematic_absences(hkl.astype(np.int32))
    if absent.any():
        notes.append(f"ignored {int((absent & ok).sum())} systematically absent reflections")
        ok &= ~absent
    return ok & np.any(hkl != 0, axis=1)


def _cut_resolution(cell: gemmi.UnitCell, hkl: np.ndarray, ok: np.ndarray,
                    d_min: float | None, d_max: float | None, name: str) -> np.ndarray:
    """``ok`` within ``d_min``/``d_max``; an error when nothing is left."""
    d_all = d_spacings(cell, hkl)
    if d_min is not None:
        ok = ok & (d_all >= d_min - settings.D_MIN_EPS)
    if d_max is not None:
        ok = ok & (d_all <= d_max + settings.D_MIN_EPS)
    if not ok.any():
        raise PattersolveError(
            f"no usable reflections in {name} (all missing, NaN, or cut by the resolution "
            "limits)", "check the columns and --d-min/--d-max", ExitCode.DATA)
    return ok


def _check_some_positive(val: np.ndarray, ok: np.ndarray, is_intensity: bool,
                         choice: ColumnChoice, name: str) -> None:
    """Refuse data whose every usable value is zero or negative (a blank map)."""
    if (val[ok] > 0).any():
        return
    what = "intensities" if is_intensity else "amplitudes"
    flag = "--i-label" if is_intensity else "--f-label"
    raise PattersolveError(
        f"all {int(ok.sum())} usable {what} in {name} ({'/'.join(choice.value)}) are zero "
        "or negative: there is nothing to phase", f"check the file, or name another column "
        f"with {flag}", ExitCode.DATA)


def _amplitudes(mtz: gemmi.Mtz, choice: ColumnChoice, hkl: np.ndarray, val: np.ndarray,
                sig: np.ndarray | None, ok: np.ndarray, french_wilson: bool, notes: list[str]
                ) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``|F|`` and its sigma for refinement and output, and where they came from."""
    if choice.kind in ("amplitude", "anomalous-amplitude"):
        return val, sig, "file"
    if choice.amplitude is None:
        return _amplitudes_from_intensities(hkl, val, sig, ok, mtz, french_wilson, notes)
    # the file's amplitudes; intensities only where that column is empty
    amp = _column(mtz, choice.amplitude)
    assert amp is not None
    samp = _column(mtz, choice.sigma_amplitude)
    amp_ok = np.isfinite(amp)
    amplitude, sigma_amp = amp, samp
    if (ok & ~amp_ok).any():
        from_i, sig_from_i, how = _amplitudes_from_intensities(  # Wilson's prior from all
            hkl, val, sig, ok, mtz, french_wilson, [])
        amplitude = np.where(amp_ok, amp, from_i)
        if samp is not None or sig_from_i is not None:
            sigma_amp = np.where(amp_ok, np.nan if samp is None else samp,
                                 np.nan if sig_from_i is None else sig_from_i)
        notes.append(f"{int((ok & ~amp_ok).sum())} reflections without "
                     f"{choice.amplitude} take their amplitude from the intensity ({how})")
    return amplitude, sigma_amp, "file"


def _assemble(mtz: gemmi.Mtz, hkl: np.ndarray, ok: np.ndarray, intensity: np.ndarray,
              amplitude: np.ndarray, sigma_amp: np.ndarray | None, free: np.ndarray | None
              ) -> Reflections:
    """The used rows, expanded to the P1 half-sphere; ``summary`` holds the P1 numbers
    (reflections, resolution, completeness) for the caller to complete."""
    n = int(ok.sum())
    asu_hkl = hkl[ok]
    values = [intensity[ok], amplitude[ok],
              np.zeros(n) if sigma_amp is None else np.nan_to_num(sigma_amp[ok], nan=0.0),
              np.full(n, -1.0) if free is None else np.nan_to_num(free[ok], nan=-1)]
    p1_hkl, p1_vals = expand_to_p1_half(asu_hkl, values, mtz.spacegroup)
    d = d_spacings(mtz.cell, p1_hkl)
    d_lo, d_hi = float(d.max()), float(d.min())
    n_possible = _count_possible(mtz.cell, mtz.spacegroup, d_hi, d_lo)
    completeness = min(1.0, len(p1_hkl) / n_possible) if n_possible else 1.0
    summary = {"reflections_p1": int(len(p1_hkl)), "resolution": [round(d_lo, 3), round(d_hi, 3)],
               "completeness": round(completeness, 4)}
    return Reflections(
        cell=mtz.cell, spacegroup=mtz.spacegroup, hkl=p1_hkl, intensity=p1_vals[0],
        amplitude=p1_vals[1], sigma=p1_vals[2] if sigma_amp is not None else None,
        free=p1_vals[3] if free is not None else None, d=d, asu_hkl=asu_hkl,
        asu_amplitude=amplitude[ok],
        asu_sigma=None if sigma_amp is None else sigma_amp[ok],
        asu_free=None if free is None else free[ok],
        summary=summary, mtz=mtz,
    )


def _amplitudes_from_intensities(hkl: np.ndarray, val: np.ndarray, sig: np.ndarray | None,
                                 ok: np.ndarray, mtz: gemmi.Mtz, french_wilson: bool,
                                 notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``|F|`` and its sigma from intensities (rows outside ``ok`` are NaN or unused).

    French & Wilson where sigmas exist and it is wanted; otherwise ``sqrt(max(I, 0))`` with
    first-order sigmas (floored at ``I ~ 0``). Returns the method's name as the third value.
    """
    if french_wilson and sig is not None:
        amplitude = np.full(len(val), np.nan)
        sigma_amp = np.full(len(val), np.nan)
        amplitude[ok], sigma_amp[ok] = frenchwilson.french_wilson(
            hkl[ok], val[ok], sig[ok], mtz.cell, mtz.spacegroup)
        n_weak = int((ok & (val < sig)).sum())
        notes.append(f"amplitudes from intensities by French & Wilson (Wilson prior in "
                     f"resolution shells; {n_weak} reflections with I < sigma(I))")
        return amplitude, sigma_amp, "french-wilson"
    amplitude = np.sqrt(np.clip(val, 0, None))
    sigma_amp = None
    if sig is not None:
        sigma_amp = np.where(amplitude > 0, sig / (2 * np.maximum(amplitude, 1e-6)),
                             np.sqrt(sig))
    why = "no sigmas in the file" if sig is None else "French-Wilson turned off"
    notes.append(f"amplitudes taken as sqrt(max(I, 0)) ({why})")
    return amplitude, sigma_amp, "sqrt(max(I, 0))"


def _count_possible(cell: gemmi.UnitCell, sg: gemmi.SpaceGroup, d_min: float, d_max: float
                    ) -> int:
    """Reflections a complete data set would have in the P1 half-sphere (absences excluded).

    Counted exactly for ordinary cells; estimated from the reciprocal volume of the shell
    when the index box is too large to enumerate.
    """
    box = np.prod([2 * np.floor(x / d_min) + 1 for x in (cell.a, cell.b, cell.c)])
    if box > 2e7:
        shell = 4.0 / 3.0 * np.pi * (d_min**-3 - d_max**-3) * cell.volume / 2.0
        absent_fraction = 1.0 - 1.0 / max(1, len(sg.operations().cen_ops))
        return int(shell * (1.0 - absent_fraction))
    hkl = miller_sphere(cell, d_min, half=True)
    d = d_spacings(cell, hkl)
    hkl = hkl[d <= d_max + 1e-6]
    absent = sg.operations().systematic_absences(hkl.astype(np.int32))
    return int((~absent).sum())
