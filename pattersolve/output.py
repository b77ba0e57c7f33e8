"""Outputs: CCP4 maps, the phased MTZ and the JSON summary, all written atomically.

Every file is written to a temporary file in the destination folder and renamed into place,
so an error never leaves a partial output. An existing file is replaced only when the caller
says so (``overwrite=True``, the CLI's ``--overwrite``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

from . import PROGRAM, __version__
from .errors import ExitCode, PattersolveError


def check_writable(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an existing output (unless ``overwrite``) or an unwritable folder, up front."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise PattersolveError(f"output {p} already exists",
                               "remove it, choose another name, or pass --overwrite",
                               ExitCode.OUTPUT)
    if p.is_dir():
        raise PattersolveError(f"output {p} is a folder", "give a file name", ExitCode.OUTPUT)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise PattersolveError(f"output folder {parent} does not exist",
                               "create it or choose another path", ExitCode.OUTPUT)
    if not os.access(parent, os.W_OK):
        raise PattersolveError(f"output folder {parent} is not writable",
                               "choose a folder you can write to", ExitCode.OUTPUT)
    return p


@contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it into place on success."""
    p = check_writable(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike[str], writer: Callable[[str], None],
                 overwrite: bool = False) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path``."""
    try:
        with atomic_path(path, overwrite) as tmp:
            writer(tmp)
    except OSError as exc:
        raise PattersolveError(f"could not write {path}: {exc.strerror or exc}",
                               "check the disk and the folder's permissions",
                               ExitCode.OUTPUT) from None
    return Path(path)


def _label(text: str) -> str:
    return text[:80].ljust(80)


def write_ccp4_map(path: str | os.PathLike[str], rho: np.ndarray, cell: gemmi.UnitCell,
                   spacegroup: gemmi.SpaceGroup, title: str, overwrite: bool = False) -> Path:
    """Write a full-cell CCP4 map: mode 2, NSTART 0, axes 1,2,3, header statistics, a label.

    ``rho`` is ``(nu, nv, nw)`` over the P1 cell (gemmi's grid layout).
    """
    grid = gemmi.FloatGrid(np.ascontiguousarray(rho, dtype=np.float32), cell, spacegroup)
    ccp4 = gemmi.Ccp4Map()
    ccp4.grid = grid
    ccp4.update_ccp4_header(2, True)
    ccp4.set_header_i32(56, 1)  # NLABL
    ccp4.set_header_str(57, _label(f"{PROGRAM} {__version__}: {title}"))

    def writer(tmp: str) -> None:
        ccp4.write_ccp4_map(tmp)

    return write_atomic(path, writer, overwrite)


def lookup_p1(hkl: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Values at ``query`` Miller indices from a P1 half-sphere table (Friedel mates conj)."""
    table = {tuple(h): v for h, v in zip(hkl.tolist(), values, strict=True)}
    out = np.empty(len(query), dtype=values.dtype)
    for i, h in enumerate(query.tolist()):
        v = table.get(tuple(h))
        if v is None:
            v = table.get((-h[0], -h[1], -h[2]))
            if v is None:
                v = np.nan
            elif np.iscomplexobj(values):
                v = np.conj(v)
        out[i] = v
    return out


def write_phased_mtz(
    path: str | os.PathLike[str],
    source: gemmi.Mtz,
    hkl: np.ndarray,
    amplitude: np.ndarray,
    sigma: np.ndarray | None,
    free: np.ndarray | None,
    f_model: np.ndarray,
    fom: np.ndarray,
    hl: Sequence[np.ndarray],
    spacegroup: gemmi.SpaceGroup,
    history: str,
    overwrite: bool = False,
) -> Path:
    """Write a phased MTZ that Coot opens without flags.

    Columns: FP, SIGFP (if known), FreeR_flag (if known), FWT/PHWT (``m |Fo|``, the
    best map), PHIB/FOM and HLA-HLD.

    Parameters
    ----------
    source
        The input MTZ (cell, dataset names, wavelength, history are copied).
    hkl, amplitude, sigma, free
        Reflections to write, in ``spacegroup``'s asymmetric unit (or the P1 half-sphere).
    f_model
        Complex structure factors of the solution (their phases are written).
    fom, hl
        Figure of merit and Hendrickson-Lattman coefficients per reflection.
    """
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = spacegroup
    mtz.set_cell_for_all(source.cell)
    ds_src = next((d for d in source.datasets if d.id != 0), None)
    ds = mtz.add_dataset(ds_src.dataset_name if ds_src else "pattersolve")
    if ds_src is not None:
        ds.project_name = ds_src.project_name
        ds.crystal_name = ds_src.crystal_name
        ds.wavelength = ds_src.wavelength
    ds.cell = source.cell
    phase = np.degrees(np.angle(f_model))
    cols: list[tuple[str, str, np.ndarray]] = [("FP", "F", amplitude)]
    if sigma is not None:
        cols.append(("SIGFP", "Q", sigma))
    if free is not None:
        cols.append(("FreeR_flag", "I", free))
    cols += [
        ("FWT", "F", fom * amplitude), ("PHWT", "P", phase),
        ("PHIB", "P", phase), ("FOM", "W", fom),
        ("HLA", "A", hl[0]), ("HLB", "A", hl[1]), ("HLC", "A", hl[2]), ("HLD", "A", hl[3]),
    ]
    for label, typ, _ in cols:
        mtz.add_column(label, typ)
    data = np.column_stack([hkl.astype(np.float64)] + [np.asarray(v, dtype=np.float64)
                                                        for _, _, v in cols])
    mtz.set_data(data.astype(np.float32))
    mtz.update_reso()
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M")
    lines = [f"From {PROGRAM} {__version__}, {stamp}: {history}"[:80]]
    mtz.history = (lines + list(source.history))[:30]
    mtz.title = f"{PROGRAM} {__version__} phases"

    def writer(tmp: str) -> None:
        mtz.write_to_file(tmp)

    return write_atomic(path, writer, overwrite)


def write_json(path: str | os.PathLike[str], data: dict[str, Any], overwrite: bool = False
               ) -> Path:
    """Write the JSON summary (numpy scalars converted)."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o)}")

    text = json.dumps(data, indent=2, default=default) + "\n"

    def writer(tmp: str) -> None:
        Path(tmp).write_text(text)

    return write_atomic(path, writer, overwrite)

