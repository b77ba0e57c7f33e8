"""Readers for reflection formats other than MTZ: mmCIF structure factors and SHELX HKLF4.

Every reader returns an in-memory :class:`gemmi.Mtz` in the crystal's space group holding
unique (merged) reflections; :func:`pattersolve.reflections.read_reflections` then chooses
columns, expands to P1 and applies the resolution cuts, exactly as for an MTZ file.

* :func:`read_sf_cif`: ``*-sf.cif`` files from the PDB (first block with reflections),
  amplitudes (``F_meas_au``) or intensities (``intensity_meas``) with sigmas; the free flag
  (``status``) is kept, as gemmi's ``cif2mtz`` does. A block without ``_cell`` or a space
  group needs ``cell``/``spacegroup`` (``--cell``/``--spacegroup``).
* :func:`read_shelx_hkl`: SHELX HKLF 4 files (``3I4,2F8.2``: h k l I sigma(I), terminated by
  ``0 0 0``; whitespace-separated lines are accepted too; ``.hkl.gz`` is read through gzip).
  Cell and symmetry come from a ``.ins``/``.res`` file, a small-molecule CIF, or explicit
  ``cell``/``spacegroup`` arguments; symmetry-equivalent and repeated observations are merged
  by a 1/sigma^2-weighted mean (Friedel mates included: no anomalous signal is kept).

Input checks (one :class:`~pattersolve.errors.PattersolveError` line each, never a traceback):

* a unit cell (from a file or ``--cell``) needs six finite numbers, positive edges up to
  :data:`~pattersolve.settings.MAX_CELL_EDGE`, angles between 0 and 180 degrees that make a
  positive volume, and at least :data:`~pattersolve.settings.MIN_CELL_VOLUME` (one atom):
  :func:`check_cell`. A bad
  ``--cell`` exits with USAGE (2), a bad cell in a file with DATA (6);
* a SHELX line that does not parse, or whose intensity or sigma is not a finite number, is
  refused with its line number and content (INPUT_FORMAT, 4); so is a line whose index lies
  beyond the resolution any experiment measures in the cell (d below
  :data:`~pattersolve.settings.MIN_D_SPACING`; DATA, 6: the index or the cell is wrong);
* SHELX observations with sigma <= 0 are dropped and counted (``stats`` of
  :func:`read_shelx_hkl_with_stats`): a zero sigma gives no weight (1/sigma^2 is infinite), a
  negative one marks a rejected or unmeasured observation (the convention of XDS and the
  programs that follow it).
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from .errors import ExitCode, PattersolveError
from .fourier import d_spacings
from .settings import MAX_CELL_EDGE, MAX_READ_INDEX, MIN_CELL_VOLUME, MIN_D_SPACING

__all__ = ["read_sf_cif", "read_shelx_hkl", "read_shelx_hkl_with_stats", "symmetry_from_file",
           "merge_to_unique", "check_cell", "cell_problem", "find_spacegroup"]

_CELL_FIX = (
    "give the cell and space group with --cell A,B,C,ALPHA,BETA,GAMMA and --spacegroup NAME, "
    "or put the .ins/.res/.cif file with the same name beside the .hkl file"
)
#: The fix for a cell that is wrong in a file.
CELL_FLAG_FIX = "give the right cell with --cell A,B,C,ALPHA,BETA,GAMMA (Angstrom, degrees)"


# ---------------------------------------------------------------------------------------------
# unit cells and space groups
# ---------------------------------------------------------------------------------------------
def cell_problem(params: Sequence[float]) -> str | None:
    """Why six numbers are not a usable unit cell, or ``None`` when they are.

    Parameters
    ----------
    params
        ``a, b, c`` (Angstrom) and ``alpha, beta, gamma`` (degrees).

    Returns
    -------
    str or None
        The first problem found: not six finite numbers, an edge <= 0, an angle outside
        (0, 180), an edge beyond :data:`~pattersolve.settings.MAX_CELL_EDGE`, angles without
        a volume (one angle at least the sum of the other two, or the three summing to 360
        or more), or a volume below :data:`~pattersolve.settings.MIN_CELL_VOLUME` (too small
        for one atom).
    """
    vals = [float(v) for v in params]
    if len(vals) != 6:
        return f"{len(vals)} numbers instead of six"
    if not all(math.isfinite(v) for v in vals):
        return "a parameter is not a finite number"
    for name, v in zip("abc", vals[:3], strict=True):
        if v <= 0:
            return f"edge {name} = {v:g} A is not positive"
        if v > MAX_CELL_EDGE:
            return (f"edge {name} = {v:g} A is longer than any diffraction experiment resolves "
                    f"({MAX_CELL_EDGE:g} A)")
    for name, v in zip(("alpha", "beta", "gamma"), vals[3:], strict=True):
        if not 0 < v < 180:
            return f"angle {name} = {v:g} degrees is not between 0 and 180"
    ca, cb, cg = (math.cos(math.radians(v)) for v in vals[3:])
    metric = 1.0 - ca * ca - cb * cb - cg * cg + 2.0 * ca * cb * cg
    if not metric > 1e-12:
        return ("the angles make no volume (each angle must be less than the sum of the other "
                "two, and the three less than 360 degrees)")
    volume = vals[0] * vals[1] * vals[2] * math.sqrt(metric)
    if volume < MIN_CELL_VOLUME:
        return (f"its volume, {volume:.3g} A^3, cannot hold even one atom (at least "
                f"{MIN_CELL_VOLUME:g} A^3: diamond, the densest crystal, has 5.7 A^3 per atom)")
    return None


def format_cell(params: Sequence[float] | gemmi.UnitCell) -> str:
    """``a,b,c,alpha,beta,gamma`` as ``--cell`` takes it."""
    vals = params.parameters if isinstance(params, gemmi.UnitCell) else params
    return ",".join(f"{float(v):g}" for v in vals)


def check_cell(params: Sequence[float] | gemmi.UnitCell, source: str,
               fix: str = CELL_FLAG_FIX, exit_code: ExitCode = ExitCode.DATA
               ) -> gemmi.UnitCell:
    """The cell as a :class:`gemmi.UnitCell`, or a one-line error naming ``source``.

    Parameters
    ----------
    params
        Six cell parameters or a :class:`gemmi.UnitCell` (gemmi accepts any numbers).
    source
        Where the cell comes from, e.g. ``"the cell of x.mtz"`` or ``"--cell"``.
    fix, exit_code
        The error's fix and exit code (DATA for a file, USAGE for ``--cell``).
    """
    raw = params.parameters if isinstance(params, gemmi.UnitCell) else params
    try:
        vals = [float(v) for v in raw]
    except (TypeError, ValueError):
        raise PattersolveError(f"{source} {list(raw)!r} is not six numbers", fix,
                               exit_code) from None
    why = cell_problem(vals)
    if why is not None:
        raise PattersolveError(f"{source} {format_cell(vals)} is not a usable unit cell: {why}",
                               fix, exit_code)
    return gemmi.UnitCell(*vals)


def find_spacegroup(name: str | gemmi.SpaceGroup, source: str = "--spacegroup"
                    ) -> gemmi.SpaceGroup:
    """A space group by Hermann-Mauguin name or number, or a USAGE error naming ``source``."""
    if isinstance(name, gemmi.SpaceGroup):
        return name
    text = str(name).strip()
    sg = gemmi.find_spacegroup_by_name(text) if text else None
    if sg is None and text.isdigit():
        sg = gemmi.find_spacegroup_by_number(int(text))
    if sg is None:
        raise PattersolveError(f"unknown space group {name!r} ({source})",
                               "give a Hermann-Mauguin symbol such as 'P 21 21 21' or "
                               "'P 1 21/n 1', or a number 1-230", ExitCode.USAGE)
    return sg


# ---------------------------------------------------------------------------------------------
# mmCIF structure factors
# ---------------------------------------------------------------------------------------------
def read_sf_cif(path: str | Path, *, cell: Sequence[float] | gemmi.UnitCell | None = None,
                spacegroup: str | gemmi.SpaceGroup | None = None) -> gemmi.Mtz:
    """Read the first block with reflections of an mmCIF structure-factor file.

    Parameters
    ----------
    path
        A ``*-sf.cif`` file (PDB structure factors).
    cell, spacegroup
        Replace the block's cell and space group (``--cell``/``--spacegroup``); needed when
        the block has none.

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
        reflection block, DATA when the block lacks a usable cell or a space group (and none
        is given) or data columns; USAGE for a bad ``cell``/``spacegroup``.
    """
    path = Path(path)
    uc, sg = _explicit_symmetry(cell, spacegroup)
    block = _refln_block(path)
    name = block.block.name
    if sg is None:
        sg = block.spacegroup
    if sg is None:
        raise PattersolveError(
            f"{path}: block {name} has no space group (_symmetry.space_group_name_H-M)",
            "give the space group with --spacegroup NAME, or add it to the file",
            ExitCode.DATA)
    if uc is None:
        uc = _block_cell(block, path)
    if not block.is_merged():
        raise PattersolveError(
            f"{path}: block {name} holds unmerged data (_diffrn_refln)",
            "merge the data first (e.g. with AIMLESS or DIALS) and give the merged file",
            ExitCode.DATA,
        )
    try:
        mtz = gemmi.CifToMtz().convert_block_to_mtz(block)
    except Exception as exc:
        raise PattersolveError(f"{path}: conversion of block {name} failed ({exc})",
                               "check the _refln loop", ExitCode.INPUT_FORMAT) from exc
    mtz.spacegroup = sg
    mtz.set_cell_for_all(uc)
    if not any(c.type in "FJGK" for c in mtz.columns):
        raise PattersolveError(
            f"{path}: block {name} has no amplitude or intensity column "
            f"(found {', '.join(block.column_labels())})",
            "the file needs _refln.F_meas_au or _refln.intensity_meas (with sigmas)",
            ExitCode.DATA,
        )
    if mtz.nreflections == 0:
        raise PattersolveError(f"{path}: the reflection loop is empty",
                               "give a file with reflections", ExitCode.DATA)
    mtz.update_reso()
    return mtz


def _refln_block(path: Path) -> gemmi.ReflnBlock:
    """The first block of an mmCIF file with a ``_refln`` or ``_diffrn_refln`` loop."""
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
    return block


_CIF_CELL_ITEMS = ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta",
                   "angle_gamma")


def _block_cell(block: gemmi.ReflnBlock, path: Path) -> gemmi.UnitCell:
    """The block's ``_cell``: all six items present and a usable cell, or an error.

    gemmi gives a block without ``_cell`` (or with ``?`` values) a 1 A cube; that is refused
    here instead.
    """
    name = block.block.name
    missing = [f"_cell.{k}" for k in _CIF_CELL_ITEMS
               if (block.block.find_value(f"_cell.{k}") or "?") in ("?", ".")]
    if missing:
        raise PattersolveError(
            f"{path}: block {name} has no unit cell ({', '.join(missing)} missing)",
            "give the cell with --cell A,B,C,ALPHA,BETA,GAMMA (Angstrom, degrees), or add "
            "the _cell items to the file", ExitCode.DATA)
    return check_cell(block.cell, f"{path}: the cell of block {name}")


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
                cell = vals
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
    uc = check_cell(cell, f"{path}: the CELL card", "correct the CELL card, or " + CELL_FLAG_FIX)
    centring = _LATT_CENTRING.get(abs(latt))
    if centring is None:
        raise PattersolveError(f"{path}: LATT {latt} is not a SHELX lattice type (1-7)",
                               "fix the LATT card or give --spacegroup", ExitCode.INPUT_FORMAT)
    triplets = ["x,y,z", *symm, *_CENTRING_VECTORS[centring]]
    if latt > 0:  # centrosymmetric
        triplets.append("-x,-y,-z")
    return uc, _spacegroup_from_ops(triplets, str(path))


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
            numbers = [_cif_number(v) for v in vals]
        except ValueError as exc:
            raise PattersolveError(f"{path}: unreadable cell parameters {vals}", _CELL_FIX,
                                   ExitCode.INPUT_FORMAT) from exc
        cell = check_cell(numbers, f"{path}: the cell of block {block.name}",
                          "correct the _cell items, or " + CELL_FLAG_FIX)
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
        raise PattersolveError(f"{path}: no such file", "check the path of the .ins/.res/.cif file",
                               ExitCode.INPUT_MISSING)
    if path.suffix.lower() == ".cif" or path.suffix.lower() == ".mmcif":
        return _parse_small_cif(path)
    return _parse_ins(path)


def _explicit_symmetry(cell: Sequence[float] | gemmi.UnitCell | None,
                       spacegroup: str | gemmi.SpaceGroup | None
                       ) -> tuple[gemmi.UnitCell | None, gemmi.SpaceGroup | None]:
    """``--cell`` and ``--spacegroup`` checked (USAGE errors), or ``None`` where not given."""
    uc = None
    if cell is not None:
        uc = check_cell(cell, "--cell", "give six numbers A,B,C,ALPHA,BETA,GAMMA (Angstrom, "
                        "degrees) that make a unit cell with --cell", ExitCode.USAGE)
    sg = None if spacegroup is None else find_spacegroup(spacegroup)
    return uc, sg


# ---------------------------------------------------------------------------------------------
# SHELX HKLF 4
# ---------------------------------------------------------------------------------------------
_HKLF4_FIX = ("correct or remove the line; the file must be SHELX HKLF 4 (h k l I sigma(I), "
              "3I4,2F8.2); HKLF 5 (twin) and other layouts are not supported")


@dataclass
class HklfRows:
    """Observations of an HKLF 4 file, with the line each came from (for messages)."""

    hkl: np.ndarray  # (n, 3) int64
    intensity: np.ndarray
    sigma: np.ndarray
    lineno: np.ndarray  # 1-based line number of each observation
    lines: list[str]  # every line of the file

    def quote(self, i: int) -> str:
        """``line N: 'text'`` of observation ``i``."""
        n = int(self.lineno[i])
        return f"line {n}: {self.lines[n - 1].strip()[:80]!r}"


def _read_text(path: Path) -> str:
    """The file as text (gzip for ``.gz``; UTF-8, else Latin-1); binary content refused."""
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path) as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise PattersolveError(f"{path}: not a readable gzip file ({exc})",
                               "give a SHELX HKLF 4 .hkl file (or a complete .hkl.gz)",
                               ExitCode.INPUT_FORMAT) from None
    except OSError as exc:
        raise PattersolveError(f"{path}: cannot read ({exc})", "check the file",
                               ExitCode.INPUT_MISSING) from exc
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise PattersolveError(f"{path}: not a text file (binary content on line {line})",
                               "give a SHELX HKLF 4 .hkl file", ExitCode.INPUT_FORMAT)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _words(text: str) -> list[str]:
    """Fields separated by ASCII blanks or tabs (a Latin-1 no-break space is not one)."""
    return [w for w in re.split(r"[ \t]+", text) if w]


def _hklf4_record(line: str) -> tuple[int, int, int, float, float] | None:
    """h, k, l, I, sigma of one line (``None`` for the ``0 0 0`` terminator).

    Fixed format ``3I4,2F8.2`` first, then whitespace-separated numbers; ``ValueError`` with
    the reason when neither reads, or an index or a value is out of range.
    """
    try:
        h, k, l = int(line[0:4]), int(line[4:8]), int(line[8:12])
        if h == 0 and k == 0 and l == 0:
            return None
        i_val, s_val = float(line[12:20]), float(line[20:28])
        tail = _words(line[28:])
    except ValueError:
        words = _words(line)
        try:
            h, k, l = (int(w) for w in words[:3])
            if h == 0 and k == 0 and l == 0:
                return None
            i_val, s_val = float(words[3]), float(words[4])
        except (ValueError, IndexError):
            raise ValueError("not an HKLF 4 record (h k l I sigma)") from None
        tail = words[5:]
    try:  # after sigma(I): a batch number, direction cosines; numbers only
        [float(w) for w in tail]
    except ValueError:
        raise ValueError("text after sigma(I) that is not a number (a batch number or "
                         "direction cosines)") from None
    if max(abs(h), abs(k), abs(l)) > MAX_READ_INDEX:
        raise ValueError("a Miller index beyond any physical range")
    if not (math.isfinite(i_val) and math.isfinite(s_val)):
        raise ValueError("the intensity or its sigma is not a finite number")
    return h, k, l, i_val, s_val


def _parse_hklf4(path: Path) -> HklfRows:
    """The records up to the ``0 0 0`` terminator (or the end of the file); blank lines are
    skipped, anything else that does not read is an error naming the line."""
    text = _read_text(path)
    lines = text.splitlines()
    rows: list[tuple[int, int, int, float, float]] = []
    where: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        if not _words(line):
            continue
        try:
            record = _hklf4_record(line)
        except ValueError as exc:
            raise PattersolveError(f"{path}, line {lineno}: {exc}: {line.strip()[:80]!r}",
                                   _HKLF4_FIX, ExitCode.INPUT_FORMAT) from None
        if record is None:
            break
        rows.append(record)
        where.append(lineno)
    else:  # no terminator: a last line of blanks without its newline is a record cut short
        if lines and lines[-1] and not text.endswith(("\n", "\r")) and not _words(lines[-1]):
            raise PattersolveError(
                f"{path}, line {len(lines)}: the file ends inside a record ({lines[-1]!r}, no "
                "0 0 0 terminator): it was cut short", "give the whole file",
                ExitCode.INPUT_FORMAT)
    if not rows:
        raise PattersolveError(f"{path}: no reflections before the 0 0 0 terminator",
                               "give a SHELX HKLF 4 file with data", ExitCode.DATA)
    hkl = np.array([r[:3] for r in rows], dtype=np.int64)
    vals = np.array([r[3:] for r in rows], dtype=np.float64)
    return HklfRows(hkl, vals[:, 0], vals[:, 1], np.array(where, dtype=np.int64), lines)


def _check_hklf4_resolution(rows: HklfRows, cell: gemmi.UnitCell, path: Path, source: str
                            ) -> None:
    """Refuse lines whose index lies beyond the resolution any experiment measures."""
    d = d_spacings(cell, rows.hkl)
    bad = np.flatnonzero(d < MIN_D_SPACING)
    if len(bad):
        more = f" (and {len(bad) - 1} more lines)" if len(bad) > 1 else ""
        raise PattersolveError(
            f"{path}, {rows.quote(int(bad[0]))}: d = {d[bad[0]]:.3g} A in the cell "
            f"{format_cell(cell)} (from {source}){more}, below the {MIN_D_SPACING:g} A that "
            "any X-ray or electron experiment reaches: the index or the cell is wrong",
            "correct or remove the line, or " + CELL_FLAG_FIX, ExitCode.DATA)


def merge_to_unique(hkl: np.ndarray, intensity: np.ndarray, sigma: np.ndarray,
                    spacegroup: gemmi.SpaceGroup
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Merge observations to the reciprocal ASU by a 1/sigma^2-weighted mean.

    Friedel mates are merged (no anomalous signal kept). Observations with sigma <= 0 (zero:
    no weight; negative: a rejected or unmeasured observation, as XDS marks them) and
    systematically absent reflections are dropped; counts are returned in ``stats``
    (``observations``, ``dropped_sigma_zero``, ``dropped_sigma_negative``, their sum
    ``dropped_sigma_le_0``, ``dropped_systematic_absences``, ``unique``). The merged sigma is
    ``1/sqrt(sum w)`` (counting statistics).
    """
    ops = spacegroup.operations()
    stats = {"observations": int(len(hkl)), "dropped_sigma_zero": int((sigma == 0).sum()),
             "dropped_sigma_negative": int((sigma < 0).sum())}
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


def embedded_hkl(path: str | Path) -> str | None:
    """The HKLF 4 text of a CIF's ``_shelx_hkl_file`` (IUCr CIFs carry their reflections
    so), or None when the CIF has none."""
    path = Path(path)
    try:
        if b"_shelx_hkl_file" not in _read_text(path).encode("latin-1", "replace"):
            return None
        doc = gemmi.cif.read(str(path))
    except (RuntimeError, ValueError) as exc:
        raise PattersolveError(f"{path}: not a readable CIF ({exc})",
                               "give an intact CIF file", ExitCode.INPUT_FORMAT) from None
    for block in doc:
        value = block.find_value("_shelx_hkl_file")
        if value is not None:
            return gemmi.cif.as_string(value)
    return None


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
        INPUT_MISSING, INPUT_FORMAT (malformed records or symmetry cards, with the line), DATA
        (no cell or symmetry found, an unusable cell, an index beyond the cell's physical
        resolution, no usable reflections) or USAGE (bad ``cell``/``spacegroup``), each with a
        fix.
    """
    return read_shelx_hkl_with_stats(path, cell=cell, spacegroup=spacegroup, ins=ins)[0]


def read_shelx_hkl_with_stats(
    path: str | Path,
    *,
    cell: Sequence[float] | gemmi.UnitCell | None = None,
    spacegroup: str | gemmi.SpaceGroup | None = None,
    ins: str | Path | None = None,
) -> tuple[gemmi.Mtz, dict[str, int | str]]:
    """:func:`read_shelx_hkl`, and what the merge kept and dropped.

    Returns
    -------
    (gemmi.Mtz, dict)
        The MTZ, and the counts of :func:`merge_to_unique` plus ``symmetry_from`` (where the
        cell and space group came from).
    """
    path = Path(path)
    if not path.is_file():
        raise PattersolveError(f"{path}: no such file", "check the path",
                               ExitCode.INPUT_MISSING)
    uc, sg, source = _shelx_symmetry(path, cell, spacegroup, ins)
    rows = _parse_hklf4(path)
    _check_hklf4_resolution(rows, uc, path, source)
    merged_hkl, merged_i, merged_sig, stats = merge_to_unique(rows.hkl, rows.intensity,
                                                              rows.sigma, sg)
    if len(merged_hkl) == 0:
        raise PattersolveError(
            f"{path}: no usable reflections ({stats['observations']} read, "
            f"{stats['dropped_sigma_zero']} with sigma = 0, {stats['dropped_sigma_negative']} "
            f"with sigma < 0, {stats['dropped_systematic_absences']} systematically absent in "
            f"{sg.xhm()})", "check the sigma column, the space group and the file",
            ExitCode.DATA)
    mtz = _merged_mtz(path, uc, sg, merged_hkl, merged_i, merged_sig)
    mtz.history = [
        f"read_shelx_hkl: {path.name}, symmetry from {source}, {sg.xhm()}"[:80],
        "merged: " + ", ".join(f"{k} {v}" for k, v in stats.items()),
    ]
    return mtz, {**stats, "symmetry_from": source}


def _shelx_symmetry(path: Path, cell: Sequence[float] | gemmi.UnitCell | None,
                    spacegroup: str | gemmi.SpaceGroup | None, ins: str | Path | None
                    ) -> tuple[gemmi.UnitCell, gemmi.SpaceGroup, str]:
    """Cell and space group of an .hkl file: explicit ones first, then the ``ins`` file or
    ``STEM.ins``/``.res``/``.cif`` beside it; the third value says where they came from."""
    uc, sg = _explicit_symmetry(cell, spacegroup)
    if uc is not None and sg is not None:
        return uc, sg, "--cell/--spacegroup"
    sym_file: Path | None = Path(ins) if ins is not None else None
    if sym_file is None:
        for suffix in (".ins", ".res", ".cif", ".INS", ".RES", ".CIF"):
            stem = path.with_suffix("") if path.suffix.lower() == ".gz" else path
            candidate = stem.with_suffix(suffix)
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
    return uc or file_cell, sg or file_sg, str(sym_file)


def _merged_mtz(path: Path, uc: gemmi.UnitCell, sg: gemmi.SpaceGroup, hkl: np.ndarray,
                intensity: np.ndarray, sigma: np.ndarray) -> gemmi.Mtz:
    """An MTZ of merged intensities (columns H K L I SIGI) in the reciprocal ASU."""
    mtz = gemmi.Mtz(with_base=True)
    mtz.title = f"SHELX HKLF4 {path.name}"[:70]
    mtz.spacegroup = sg
    mtz.cell = uc
    mtz.add_dataset("HKLF4").wavelength = 0.0
    mtz.datasets[1].project_name = "pattersolve"
    mtz.datasets[1].crystal_name = path.stem[:64]
    mtz.datasets[1].cell = uc
    mtz.add_column("I", "J")
    mtz.add_column("SIGI", "Q")
    mtz.set_data(np.column_stack([hkl.astype(np.float32), intensity, sigma]).astype(np.float32))
    mtz.switch_to_asu_hkl()
    mtz.sort()
    mtz.update_reso()
    return mtz
