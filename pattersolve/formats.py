"""Readers for reflection formats other than MTZ: mmCIF structure factors and SHELX HKLF4.

Every reader returns an in-memory :class:`gemmi.Mtz` in the crystal's space group holding
unique (merged) reflections; :func:`pattersolve.reflections.read_reflections` then chooses
columns, expands to P1 and applies the resolution cuts, exactly as for an MTZ file.

* :func:`read_sf_cif`: ``*-sf.cif`` files from the PDB (first block with reflections),
  amplitudes (``F_meas_au``) or intensities (``intensity_meas``) with sigmas; the free flag
  (``status``) is kept, as gemmi's ``cif2mtz`` does.
* :func:`read_shelx_hkl`: SHELX HKLF 4 files (``3I4,2F8.2``: h k l I sigma(I), terminated by
  ``0 0 0``). Cell and symmetry come from a ``.ins``/``.res`` file, a small-molecule CIF, or
  explicit ``cell``/``spacegroup`` arguments; symmetry-equivalent and repeated observations
  are merged by a 1/sigma^2-weighted mean (Friedel mates included: no anomalous signal is
  kept).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import gemmi
import numpy as np

from .errors import ExitCode, PattersolveError

__all__ = ["read_sf_cif", "read_shelx_hkl", "symmetry_from_file", "merge_to_unique"]

_CELL_FIX = (
    "give the cell and space group with --cell A B C ALPHA BETA GAMMA and --spacegroup NAME, "
    "or put the .ins/.res/.cif file with the same name beside the .hkl file"
)


# ---------------------------------------------------------------------------------------------
# mmCIF structure factors
# ---------------------------------------------------------------------------------------------
def read_sf_cif(path: str | Path) -> gemmi.Mtz:
    """Read the first block with reflections of an mmCIF structure-factor file.

    Parameters
    ----------
    path
        A ``*-sf.cif`` file (PDB structure factors).

    Returns
    -------
    gemmi.Mtz
        Columns as gemmi's ``cif2mtz`` names them: ``FP``/``SIGFP`` (type F/Q) for amplitudes,
        ``I``/``SIGI`` (type J/Q) for intensities, ``FreeR_flag`` (type I) for the free set,
        plus anomalous columns where present. Space group and cell from the block.

    Raises
    ------
    PattersolveError
        INPUT_MISSING for an unreadable file, INPUT_FORMAT when it is not CIF or has no
        reflection block, DATA when the block lacks a cell, a space group or data columns.
    """
    path = Path(path)
    if not path.is_file():
        raise PattersolveError(f"{path}: no such file", "check the path",
                               ExitCode.INPUT_MISSING)
    try:
        doc = gemmi.cif.read(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError with a parser message
        raise PattersolveError(
            f"{path}: not a readable CIF file ({str(exc).splitlines()[0] if str(exc) else exc})",
            "give an mmCIF structure-factor file (*-sf.cif), an MTZ or a SHELX .hkl file",
            ExitCode.INPUT_FORMAT,
        ) from exc
    try:
        blocks = gemmi.as_refln_blocks(doc)
    except Exception as exc:
        raise PattersolveError(f"{path}: cannot interpret the reflection blocks ({exc})",
                               "check that the file is an mmCIF structure-factor file",
                               ExitCode.INPUT_FORMAT) from exc
    block = next((b for b in blocks if b.default_loop is not None), None)
    if block is None:
        raise PattersolveError(
            f"{path}: no block with a _refln (or _diffrn_refln) loop",
            "give an mmCIF structure-factor file such as the PDB's *-sf.cif",
            ExitCode.INPUT_FORMAT,
        )
    if block.spacegroup is None:
        raise PattersolveError(
            f"{path}: block {block.block.name} has no space group (_symmetry.space_group_name_H-M)",
            "add the space group to the file or convert it with gemmi cif2mtz and a --spacegroup",
            ExitCode.DATA,
        )
    cell = block.cell
    if not (cell.a > 0 and cell.b > 0 and cell.c > 0 and cell.volume > 0):
        raise PattersolveError(f"{path}: block {block.block.name} has no unit cell (_cell.*)",
                               "add the _cell.length_* and _cell.angle_* items",
                               ExitCode.DATA)
    labels = block.column_labels()
    if not block.is_merged():
        raise PattersolveError(
            f"{path}: block {block.block.name} holds unmerged data (_diffrn_refln)",
            "merge the data first (e.g. with AIMLESS or DIALS) and give the merged file",
            ExitCode.DATA,
        )
    try:
        mtz = gemmi.CifToMtz().convert_block_to_mtz(block)
    except Exception as exc:
        raise PattersolveError(f"{path}: conversion of block {block.block.name} failed ({exc})",
                               "check the _refln loop", ExitCode.INPUT_FORMAT) from exc
    data_types = {"F", "J", "G", "K"}
    if not any(c.type in data_types for c in mtz.columns):
        raise PattersolveError(
            f"{path}: block {block.block.name} has no amplitude or intensity column "
            f"(found {', '.join(labels)})",
            "the file needs _refln.F_meas_au or _refln.intensity_meas (with sigmas)",
            ExitCode.DATA,
        )
    if mtz.nreflections == 0:
        raise PattersolveError(f"{path}: the reflection loop is empty",
                               "give a file with reflections", ExitCode.DATA)
    mtz.update_reso()
    return mtz


# ---------------------------------------------------------------------------------------------
# cell and symmetry from SHELX .ins/.res or a small-molecule CIF
# ---------------------------------------------------------------------------------------------
_LATT_CENTRING = {1: "P", 2: "I", 3: "R", 4: "F", 5: "A", 6: "B", 7: "C"}
_CENTRING_VECTORS = {
    "P": [],
    "I": ["x+1/2,y+1/2,z+1/2"],
    "R": ["x+2/3,y+1/3,z+1/3", "x+1/3,y+2/3,z+2/3"],
    "F": ["x,y+1/2,z+1/2", "x+1/2,y,z+1/2", "x+1/2,y+1/2,z"],
    "A": ["x,y+1/2,z+1/2"],
    "B": ["x+1/2,y,z+1/2"],
    "C": ["x+1/2,y+1/2,z"],
}


def _spacegroup_from_ops(triplets: Sequence[str], source: str) -> gemmi.SpaceGroup:
    try:
        ops = gemmi.GroupOps([gemmi.Op(t) for t in triplets])
        ops.add_missing_elements()
        sg = gemmi.find_spacegroup_by_ops(ops)
    except Exception as exc:
        raise PattersolveError(
            f"{source}: the symmetry operators do not form a space group ({exc})",
            "check the SYMM/LATT cards or give --spacegroup NAME",
            ExitCode.INPUT_FORMAT,
        ) from exc
    if sg is None:
        raise PattersolveError(
            f"{source}: the symmetry operators match no tabulated space-group setting",
            "give --spacegroup NAME (and reindex the data to a standard setting if needed)",
            ExitCode.DATA,
        )
    return sg


def _parse_ins(path: Path) -> tuple[gemmi.UnitCell, gemmi.SpaceGroup]:
    """CELL, LATT and SYMM cards of a SHELX .ins/.res file."""
    cell = None
    latt = 1
    symm: list[str] = []
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise PattersolveError(f"{path}: cannot read ({exc})", "check the file",
                               ExitCode.INPUT_MISSING) from exc
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        # '=' at the end continues a card on the next line
        while line.rstrip().endswith("=") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i]
        i += 1
        words = line.split()
        if not words:
            continue
        card = words[0].upper()[:4]
        try:
            if card == "CELL":
                # CELL lambda a b c alpha beta gamma
                vals = [float(w) for w in words[2:8]]
                if len(vals) != 6:
                    raise ValueError("CELL needs wavelength and six parameters")
                cell = gemmi.UnitCell(*vals)
            elif card == "LATT":
                latt = int(words[1])
            elif card == "SYMM":
                symm.append(line.split(None, 1)[1].replace(" ", ""))
            elif card in ("HKLF", "END"):
                break
        except (ValueError, IndexError) as exc:
            raise PattersolveError(f"{path}: malformed {card} card: {line.strip()!r} ({exc})",
                                   "fix the card or give --cell and --spacegroup",
                                   ExitCode.INPUT_FORMAT) from exc
    if cell is None:
        raise PattersolveError(f"{path}: no CELL card", _CELL_FIX, ExitCode.DATA)
    centring = _LATT_CENTRING.get(abs(latt))
    if centring is None:
        raise PattersolveError(f"{path}: LATT {latt} is not a SHELX lattice type (1-7)",
                               "fix the LATT card or give --spacegroup", ExitCode.INPUT_FORMAT)
    triplets = ["x,y,z", *symm, *_CENTRING_VECTORS[centring]]
    if latt > 0:  # centrosymmetric
        triplets.append("-x,-y,-z")
    return cell, _spacegroup_from_ops(triplets, str(path))


def _cif_number(value: str) -> float:
    """A CIF number with an optional standard uncertainty: ``7.7727(9)`` -> 7.7727."""
    return float(re.sub(r"\(\d+\)$", "", value.strip()))


def _parse_small_cif(path: Path) -> tuple[gemmi.UnitCell, gemmi.SpaceGroup]:
    """Cell and space group of a small-molecule (coreCIF) file: the first block with a cell."""
    try:
        doc = gemmi.cif.read(str(path))
    except Exception as exc:
        raise PattersolveError(f"{path}: not a readable CIF file ({exc})",
                               _CELL_FIX, ExitCode.INPUT_FORMAT) from exc
    for block in doc:
        vals = [block.find_value(f"_cell_{k}") or block.find_value(f"_cell.{k}")
                for k in ("length_a", "length_b", "length_c",
                          "angle_alpha", "angle_beta", "angle_gamma")]
        if not all(vals) or any(v in ("?", ".") for v in vals):
            continue
        try:
            cell = gemmi.UnitCell(*(_cif_number(v) for v in vals))
        except ValueError as exc:
            raise PattersolveError(f"{path}: unreadable cell parameters {vals}", _CELL_FIX,
                                   ExitCode.INPUT_FORMAT) from exc
        # symmetry operators are the most explicit; then the Hall symbol; then H-M names
        for tag in ("_space_group_symop_operation_xyz", "_symmetry_equiv_pos_as_xyz",
                    "_space_group_symop.operation_xyz"):
            column = block.find_values(tag)
            if len(column):
                ops = [gemmi.cif.as_string(v) for v in column]
                return cell, _spacegroup_from_ops(ops, str(path))
        for tag in ("_space_group_name_Hall", "_symmetry_space_group_name_Hall"):
            v = block.find_value(tag)
            if v and v not in ("?", "."):
                try:
                    return cell, gemmi.find_spacegroup_by_ops(
                        gemmi.symops_from_hall(gemmi.cif.as_string(v)))
                except Exception:
                    pass
        for tag in ("_space_group_name_H-M_alt", "_symmetry_space_group_name_H-M",
                    "_symmetry.space_group_name_H-M", "_space_group.name_H-M_alt"):
            v = block.find_value(tag)
            if v and v not in ("?", "."):
                sg = gemmi.find_spacegroup_by_name(gemmi.cif.as_string(v))
                if sg is not None:
                    return cell, sg
        for tag in ("_space_group_IT_number", "_symmetry_Int_Tables_number"):
            v = block.find_value(tag)
            if v and v not in ("?", "."):
                try:
                    return cell, gemmi.find_spacegroup_by_number(int(v))
                except Exception:
                    pass
        raise PattersolveError(f"{path}: block {block.name} has a cell but no space group",
                               "give --spacegroup NAME", ExitCode.DATA)
    raise PattersolveError(f"{path}: no block with _cell_length_a ... _cell_angle_gamma",
                           _CELL_FIX, ExitCode.DATA)


def symmetry_from_file(path: str | Path) -> tuple[gemmi.UnitCell, gemmi.SpaceGroup]:
    """Cell and space group from a SHELX ``.ins``/``.res`` or a small-molecule ``.cif`` file."""
    path = Path(path)
    if not path.is_file():
        raise PattersolveError(f"{path}: no such file", "check the path given with --ins",
                               ExitCode.INPUT_MISSING)
    if path.suffix.lower() == ".cif" or path.suffix.lower() == ".mmcif":
        return _parse_small_cif(path)
    return _parse_ins(path)


def _explicit_symmetry(cell: Sequence[float] | gemmi.UnitCell | None,
                       spacegroup: str | gemmi.SpaceGroup | None
                       ) -> tuple[gemmi.UnitCell | None, gemmi.SpaceGroup | None]:
    uc = None
    if cell is not None:
        if isinstance(cell, gemmi.UnitCell):
            uc = cell
        else:
            vals = [float(v) for v in cell]
            if len(vals) != 6 or min(vals) <= 0:
                raise PattersolveError(f"--cell needs six positive numbers, got {vals}",
                                       "give --cell A B C ALPHA BETA GAMMA (Angstrom, degrees)",
                                       ExitCode.USAGE)
            uc = gemmi.UnitCell(*vals)
            if not uc.volume > 0:
                raise PattersolveError(f"--cell {vals} has no volume (impossible angles)",
                                       "check the cell angles", ExitCode.USAGE)
    sg = None
    if spacegroup is not None:
        if isinstance(spacegroup, gemmi.SpaceGroup):
            sg = spacegroup
        else:
            sg = gemmi.find_spacegroup_by_name(str(spacegroup))
            if sg is None:
                raise PattersolveError(f"unknown space group {spacegroup!r}",
                                       "give a Hermann-Mauguin name such as 'P 21/n' or "
                                       "'P 1 21 1', or the number", ExitCode.USAGE)
    return uc, sg


# ---------------------------------------------------------------------------------------------
# SHELX HKLF 4
# ---------------------------------------------------------------------------------------------
def _parse_hklf4(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-format 3I4,2F8.2 lines up to the 0 0 0 terminator (or the end of the file)."""
    try:
        text = path.read_text(errors="strict")
    except UnicodeDecodeError as exc:
        raise PattersolveError(f"{path}: not a text file (binary content)",
                               "give a SHELX HKLF 4 .hkl file", ExitCode.INPUT_FORMAT) from exc
    except OSError as exc:
        raise PattersolveError(f"{path}: cannot read ({exc})", "check the file",
                               ExitCode.INPUT_MISSING) from exc
    hkl: list[tuple[int, int, int]] = []
    vals: list[tuple[float, float]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        try:
            h, k, l = int(line[0:4]), int(line[4:8]), int(line[8:12])
            if h == 0 and k == 0 and l == 0:
                break
            i_val, s_val = float(line[12:20]), float(line[20:28])
        except ValueError:
            # tolerate free-format (whitespace separated) lines with at least 5 numbers
            words = line.split()
            try:
                h, k, l = (int(w) for w in words[:3])
                if h == 0 and k == 0 and l == 0:
                    break
                i_val, s_val = float(words[3]), float(words[4])
            except (ValueError, IndexError):
                raise PattersolveError(
                    f"{path}, line {lineno}: not an HKLF 4 record (3I4,2F8.2): {line.strip()!r}",
                    "give a SHELX HKLF 4 file (h k l I sigma(I)); HKLF 5 (twin) and "
                    "other layouts are not supported",
                    ExitCode.INPUT_FORMAT,
                ) from None
        if not (math.isfinite(i_val) and math.isfinite(s_val)):
            continue
        hkl.append((h, k, l))
        vals.append((i_val, s_val))
    if not hkl:
        raise PattersolveError(f"{path}: no reflections before the 0 0 0 terminator",
                               "give a SHELX HKLF 4 file with data", ExitCode.DATA)
    v = np.array(vals, dtype=np.float64)
    return np.array(hkl, dtype=np.int64), v[:, 0], v[:, 1]


def merge_to_unique(hkl: np.ndarray, intensity: np.ndarray, sigma: np.ndarray,
                    spacegroup: gemmi.SpaceGroup
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Merge observations to the reciprocal ASU by a 1/sigma^2-weighted mean.

    Friedel mates are merged (no anomalous signal kept). Observations with sigma <= 0 and
    systematically absent reflections are dropped; counts are returned in ``stats``.
    The merged sigma is ``1/sqrt(sum w)`` (counting statistics).
    """
    ops = spacegroup.operations()
    stats = {"observations": int(len(hkl))}
    good = sigma > 0
    stats["dropped_sigma_le_0"] = int((~good).sum())
    hkl, intensity, sigma = hkl[good], intensity[good], sigma[good]
    absent = np.asarray(ops.systematic_absences(hkl), dtype=bool) if len(hkl) else np.zeros(0, bool)
    stats["dropped_systematic_absences"] = int(absent.sum())
    hkl, intensity, sigma = hkl[~absent], intensity[~absent], sigma[~absent]
    if len(hkl) == 0:
        return hkl, intensity, sigma, stats | {"unique": 0}
    # gemmi's vectorised ASU mapping (Mtz.ensure_asu) on a scratch MTZ holding the indices
    scratch = gemmi.Mtz(with_base=True)
    scratch.spacegroup = spacegroup
    scratch.cell = gemmi.UnitCell(10, 10, 10, 90, 90, 90)  # metric irrelevant here
    scratch.add_dataset("scratch")
    scratch.add_column("ROW", "R")
    rows = np.arange(len(hkl), dtype=np.float64)
    if len(hkl) >= 2**24:  # the row number travels as float32
        raise PattersolveError(f"{len(hkl)} observations are too many to merge here",
                               "merge the data first (e.g. with XPREP or AIMLESS)",
                               ExitCode.RESOURCES)
    scratch.set_data(np.column_stack([hkl.astype(np.float64), rows]).astype(np.float32))
    scratch.ensure_asu()
    arr = np.asarray(scratch.array)
    order = arr[:, 3].astype(np.int64)
    asu_hkl = np.empty_like(hkl)
    asu_hkl[order] = arr[:, :3].astype(np.int64)
    uniq, inverse = np.unique(asu_hkl, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    w = 1.0 / sigma**2
    wsum = np.bincount(inverse, weights=w, minlength=len(uniq))
    isum = np.bincount(inverse, weights=w * intensity, minlength=len(uniq))
    stats["unique"] = int(len(uniq))
    return uniq, isum / wsum, 1.0 / np.sqrt(wsum), stats


def read_shelx_hkl(
    path: str | Path,
    *,
    cell: Sequence[float] | gemmi.UnitCell | None = None,
    spacegroup: str | gemmi.SpaceGroup | None = None,
    ins: str | Path | None = None,
) -> gemmi.Mtz:
    """Read a SHELX HKLF 4 file into a merged MTZ in the crystal's space group.

    Parameters
    ----------
    path
        The ``.hkl`` file (``3I4,2F8.2``; reading stops at ``0 0 0``).
    cell
        Six cell parameters (A, degrees); overrides the one from ``ins``.
    spacegroup
        Space-group name or :class:`gemmi.SpaceGroup`; overrides the one from ``ins``.
    ins
        A ``.ins``/``.res`` (CELL, LATT, SYMM) or small-molecule ``.cif`` file. When neither
        ``ins`` nor both ``cell`` and ``spacegroup`` are given, ``STEM.ins``, ``STEM.res``
        and ``STEM.cif`` beside the ``.hkl`` are tried in that order.

    Returns
    -------
    gemmi.Mtz
        Columns H, K, L, I (type J), SIGI (type Q); unique reflections in the reciprocal ASU,
        sorted. A summary of the merge is in ``mtz.history``.

    Raises
    ------
    PattersolveError
        INPUT_MISSING, INPUT_FORMAT (malformed records or symmetry cards) or DATA (no cell or
        symmetry found, no usable reflections), each with a fix.
    """
    path = Path(path)
    if not path.is_file():
        raise PattersolveError(f"{path}: no such file", "check the path",
                               ExitCode.INPUT_MISSING)
    uc, sg = _explicit_symmetry(cell, spacegroup)
    source = "--cell/--spacegroup"
    if uc is None or sg is None:
        sym_file: Path | None = Path(ins) if ins is not None else None
        if sym_file is None:
            for suffix in (".ins", ".res", ".cif", ".INS", ".RES", ".CIF"):
                candidate = path.with_suffix(suffix)
                if candidate.is_file():
                    sym_file = candidate
                    break
        if sym_file is None:
            missing = " and ".join(n for n, v in (("cell", uc), ("space group", sg)) if v is None)
            raise PattersolveError(
                f"{path}: a SHELX .hkl file holds no {missing}, and no "
                f"{path.stem}.ins/.res/.cif was found beside it",
                _CELL_FIX, ExitCode.DATA,
            )
        file_cell, file_sg = symmetry_from_file(sym_file)
        source = str(sym_file)
        uc = uc or file_cell
        sg = sg or file_sg
    hkl, inten, sig = _parse_hklf4(path)
    merged_hkl, merged_i, merged_sig, stats = merge_to_unique(hkl, inten, sig, sg)
    if len(merged_hkl) == 0:
        raise PattersolveError(
            f"{path}: no usable reflections ({stats['observations']} read, "
            f"{stats['dropped_sigma_le_0']} with sigma <= 0, "
            f"{stats['dropped_systematic_absences']} systematically absent in {sg.xhm()})",
            "check the space group and the file", ExitCode.DATA)
    mtz = gemmi.Mtz(with_base=True)
    mtz.title = f"SHELX HKLF4 {path.name}"
    mtz.spacegroup = sg
    mtz.cell = uc
    mtz.add_dataset("HKLF4").wavelength = 0.0
    mtz.datasets[1].project_name = "pattersolve"
    mtz.datasets[1].crystal_name = path.stem
    mtz.datasets[1].cell = uc
    mtz.add_column("I", "J")
    mtz.add_column("SIGI", "Q")
    data = np.column_stack([merged_hkl.astype(np.float32), merged_i, merged_sig]).astype(np.float32)
    mtz.set_data(data)
    mtz.switch_to_asu_hkl()
    mtz.sort()
    mtz.update_reso()
    mtz.history = [
        f"read_shelx_hkl: {path.name}, symmetry from {source}, {sg.xhm()}",
        "merged: " + ", ".join(f"{k} {v}" for k, v in stats.items()),
    ]
    return mtz
