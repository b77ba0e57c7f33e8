"""Outputs: CCP4 maps, the phased MTZ and the JSON summary.

``ccp4_map``, ``phased_mtz`` and ``json_text`` build an output in memory; the ``write_*``
functions write one file atomically through :mod:`pattersolve.transaction` (a temporary file
beside it, renamed into place; an existing file replaced only with ``overwrite=True``). A
whole run's outputs go through one :class:`~pattersolve.transaction.OutputSet` instead.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

from . import PROGRAM, __version__
from .reflections import ascii_text, safe_history
from .transaction import write_atomic


def _label(text: str) -> str:
    return text[:80].ljust(80)


def ccp4_map(rho: np.ndarray, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup, title: str
             ) -> gemmi.Ccp4Map:
    """A full-cell CCP4 map: mode 2, NSTART 0, axes 1,2,3, header statistics, a label.

    ``rho`` is ``(nu, nv, nw)`` over the P1 cell (gemmi's grid layout).
    """
    grid = gemmi.FloatGrid(np.ascontiguousarray(rho, dtype=np.float32), cell, spacegroup)
    ccp4 = gemmi.Ccp4Map()
    ccp4.grid = grid
    ccp4.update_ccp4_header(2, True)
    ccp4.set_header_i32(56, 1)  # NLABL
    ccp4.set_header_str(57, _label(f"{PROGRAM} {__version__}: {title}"))
    return ccp4


def write_ccp4_map(path: str | os.PathLike[str], rho: np.ndarray, cell: gemmi.UnitCell,
                   spacegroup: gemmi.SpaceGroup, title: str, overwrite: bool = False) -> Path:
    """Write :func:`ccp4_map` to ``path`` atomically."""
    return write_atomic(path, ccp4_map(rho, cell, spacegroup, title).write_ccp4_map, overwrite)


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


def source_dataset(source: gemmi.Mtz | None, label: str | None = None) -> gemmi.Mtz.Dataset | None:
    """The dataset of the input that holds ``label`` (else its first non-base dataset)."""
    if source is None:
        return None
    if label is not None:
        col = source.column_with_label(label)
        if col is not None and col.dataset_id != 0:
            return source.dataset(col.dataset_id)
    return next((d for d in source.datasets if d.id != 0), None)


def _copy_dataset(mtz: gemmi.Mtz, src: gemmi.Mtz.Dataset | None, cell: gemmi.UnitCell) -> None:
    """Add the output's dataset: names and wavelength of the input's (base dataset alike)."""
    ds = mtz.add_dataset(src.dataset_name if src else PROGRAM)
    if src is not None:
        ds.project_name = src.project_name
        ds.crystal_name = src.crystal_name
        ds.wavelength = src.wavelength
        # one wavelength in the file: readers such as reciprocalspaceship warn otherwise
        mtz.datasets[0].wavelength = src.wavelength
    ds.cell = cell


def phased_mtz(
    source: gemmi.Mtz | None,
    hkl: np.ndarray,
    amplitude: np.ndarray,
    sigma: np.ndarray | None,
    free: np.ndarray | None,
    f_model: np.ndarray,
    fom: np.ndarray,
    hl: Sequence[np.ndarray],
    spacegroup: gemmi.SpaceGroup,
    history: str,
    *,
    cell: gemmi.UnitCell | None = None,
    source_label: str | None = None,
) -> gemmi.Mtz:
    """A phased MTZ that Coot opens without flags.

    Columns: FP, SIGFP (if known), FreeR_flag (if known), FWT/PHWT (``m |Fo|``, the
    best map), PHIB/FOM and HLA-HLD.

    Parameters
    ----------
    source
        The input MTZ (dataset names, wavelength and history are copied), or None.
    hkl, amplitude, sigma, free
        Reflections to write, in ``spacegroup``'s asymmetric unit (or the P1 half-sphere).
    f_model
        Complex structure factors of the solution (their phases are written).
    fom, hl
        Figure of merit and Hendrickson-Lattman coefficients per reflection.
    cell
        The unit cell (default: the source's).
    source_label
        The input column the amplitudes came from: its dataset's names and wavelength are the
        ones copied.
    """
    cell = cell if cell is not None else source.cell
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = spacegroup
    mtz.set_cell_for_all(cell)
    _copy_dataset(mtz, source_dataset(source, source_label), cell)
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
    lines = [ascii_text(f"From {PROGRAM} {__version__}, {stamp}: {history}")[:80]]
    mtz.history = (lines + ([] if source is None else safe_history(source)))[:30]
    mtz.title = f"{PROGRAM} {__version__} phases"
    return mtz


def write_phased_mtz(path: str | os.PathLike[str], source: gemmi.Mtz | None, *args: Any,
                     overwrite: bool = False, **kwargs: Any) -> Path:
    """Write :func:`phased_mtz` (same arguments) to ``path`` atomically."""
    mtz = phased_mtz(source, *args, **kwargs)
    return write_atomic(path, mtz.write_to_file, overwrite)


def json_text(data: dict[str, Any]) -> str:
    """The JSON summary as text (numpy scalars and arrays, paths converted)."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o)}")

    return json.dumps(data, indent=2, default=default) + "\n"


def write_json(path: str | os.PathLike[str], data: dict[str, Any], overwrite: bool = False
               ) -> Path:
    """Write the JSON summary atomically."""
    text = json_text(data)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text), overwrite)
