"""SHELX files for a first model: formulas, LATT/SYMM, writing and strictly reading ``.res``.

* :func:`parse_formula` reads ``"C12 H22 O11"`` (or ``C12H22O11``); :func:`formula_from_file`
  takes the formula and Z from a SHELX ``.ins``/``.res`` (SFAC/UNIT and ZERR: UNIT is the cell
  contents) or a small-molecule CIF (``_chemical_formula_sum``, ``_cell_formula_units_Z``).
* :func:`latt_symm` gives the LATT number and SYMM cards of a gemmi space group: LATT is
  positive when the group holds the inversion ``-x,-y,-z`` (SHELX then generates it), SYMM
  lists the operators other than the identity, the lattice centring and (for LATT > 0) the
  inversion-related half.
* :func:`res_text` writes a ``.res`` file SHELXL refines: TITL, CELL, ZERR, LATT, SYMM,
  SFAC, UNIT, the refinement instructions, the atoms (occupancy ``11.0``, i.e. fixed at 1,
  ``10 + 1/multiplicity`` on special positions), the remaining peaks as Q-peaks with their
  heights, HKLF 4, END. From an input ``.ins``/``.res`` it keeps the instructions in
  :data:`KEPT_INSTRUCTIONS` (SFAC/UNIT are kept when the model's elements are all among the
  SFAC elements); model-specific cards (atoms, FVAR, WGHT, AFIX, restraints...) are not copied.
* :func:`read_res` is a strict reader of such files (every card known, every atom card
  complete), used to check that what is written reads back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import gemmi
import numpy as np

from .errors import ExitCode, PattersolveError

__all__ = ["Formula", "ResAtom", "ResFile", "parse_formula", "format_formula",
           "formula_from_file", "wavelength_from_file", "kept_instructions", "latt_symm",
           "spacegroup_from_cards", "res_text", "read_res", "DEFAULT_WAVELENGTH",
           "KEPT_INSTRUCTIONS"]

#: Mo K-alpha (A): the CELL card's wavelength when nothing else says.
DEFAULT_WAVELENGTH = 0.71073
#: SHELX LATT numbers of the lattice centrings.
LATT_NUMBER = {"P": 1, "I": 2, "R": 3, "F": 4, "A": 5, "B": 6, "C": 7}
#: Instructions copied from an input .ins/.res: about the data, the experiment or the
#: refinement the user asked for, never about a model.
KEPT_INSTRUCTIONS = ("TEMP", "SIZE", "DISP", "L.S.", "CGLS", "BOND", "CONF", "LIST", "FMAP",
                     "PLAN", "ACTA", "MORE", "OMIT", "SHEL", "TWIN", "BASF", "MERG", "WPDB",
                     "HTAB", "NEUT", "LAUE")
#: Refinement instructions written when no input file gives them (as SHELXT does).
DEFAULT_INSTRUCTIONS = ("L.S. 10", "PLAN 20", "BOND", "LIST 4", "FMAP 2", "ACTA")
#: Every card :func:`read_res` accepts besides atoms and Q-peaks.
KNOWN_CARDS = frozenset(
    "TITL CELL ZERR LATT SYMM SFAC DISP UNIT LAUE REM MORE TIME END HKLF OMIT SHEL BASF TWIN "
    "EXTI SWAT HOPE MERG SPEC RESI MOVE ANIS AFIX HFIX FRAG FEND EXYZ EADP EQIV CONN PART "
    "BIND FREE DFIX DANG BUMP SAME SADI CHIV FLAT DELU SIMU DEFS ISOR NCSY SUMP L.S. CGLS "
    "BLOC DAMP STIR WGHT FVAR BOND CONF MPLA RTAB HTAB LIST ACTA SIZE TEMP WPDB FMAP GRID "
    "PLAN MOLE NEUT ABIN ANSC ANSR XNPD WIGL RIGU PRIG BEDE LONE NOTE".split())
_CENTRING = {1: [], 2: ["1/2,1/2,1/2"], 3: ["2/3,1/3,1/3", "1/3,2/3,2/3"],
             4: ["0,1/2,1/2", "1/2,0,1/2", "1/2,1/2,0"], 5: ["0,1/2,1/2"], 6: ["1/2,0,1/2"],
             7: ["1/2,1/2,0"]}
_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*(?:\.\d+)?)")
_FORMULA_FIX = "write the formula as element symbols with counts, e.g. 'C12 H22 O11'"


# ---------------------------------------------------------------------------------------------
# formulas
# ---------------------------------------------------------------------------------------------
@dataclass
class Formula:
    """A chemical formula: element counts per formula unit, and Z where a file gives it."""

    counts: dict[str, float]
    z: float | None = None
    source: str = "given"

    def __str__(self) -> str:
        return format_formula(self.counts)

    def non_hydrogen(self) -> dict[str, float]:
        """The counts without hydrogen (and deuterium)."""
        return {e: n for e, n in self.counts.items() if e not in ("H", "D")}


def parse_formula(text: str) -> dict[str, float]:
    """Element counts of a formula such as ``"C12 H22 O11"``, ``"C12H22O11"`` or ``"Ru C38"``.

    Raises
    ------
    PattersolveError
        For anything but element symbols with optional counts (no brackets, no charges).
    """
    compact = "".join(str(text).split())
    if not compact or _FORMULA_TOKEN.sub("", compact):
        raise PattersolveError(f"cannot read the formula {text!r}", _FORMULA_FIX,
                               ExitCode.USAGE)
    counts: dict[str, float] = {}
    for symbol, number in _FORMULA_TOKEN.findall(compact):
        el = gemmi.Element(symbol)
        if el.atomic_number == 0 or el.name.upper() != symbol.upper():
            raise PattersolveError(f"formula {text!r}: {symbol!r} is not an element",
                                   _FORMULA_FIX, ExitCode.USAGE)
        counts[el.name] = counts.get(el.name, 0.0) + (float(number) if number else 1.0)
    if not any(v > 0 for v in counts.values()):
        raise PattersolveError(f"formula {text!r} has no atoms", _FORMULA_FIX, ExitCode.USAGE)
    return counts


def format_formula(counts: dict[str, float]) -> str:
    """``{"C": 12, "H": 22, "O": 11}`` -> ``"C12 H22 O11"`` (Hill order: C, H, then A-Z)."""
    order = sorted(counts, key=lambda e: (e != "C", e != "H", e))
    return " ".join(f"{e}{_number(counts[e]) if counts[e] != 1 else ''}" for e in order)


def _number(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-6 else f"{x:g}"


def formula_from_file(path: str | Path) -> Formula | None:
    """The formula (and Z) of a SHELX ``.ins``/``.res`` or small-molecule CIF; None if absent.

    A ``.ins``/``.res`` gives the cell contents (SFAC/UNIT) and Z (ZERR): the formula unit is
    UNIT / Z (Z = 1 when ZERR is missing). A CIF gives ``_chemical_formula_sum`` and
    ``_cell_formula_units_Z``.
    """
    path = Path(path)
    if path.suffix.lower() in (".cif", ".mmcif"):
        return _formula_from_cif(path)
    cards = _cards(path.read_text(errors="replace"))
    sfac = _sfac_elements(cards)
    unit = [float(v) for c in cards if c[0].upper() == "UNIT" for v in c[1:]]
    if not sfac or len(unit) != len(sfac):
        return None
    zerr = [c for c in cards if c[0].upper() == "ZERR"]
    z = float(zerr[0][1]) if zerr and len(zerr[0]) > 1 else 1.0
    counts: dict[str, float] = {}
    for el, n in zip(sfac, unit, strict=True):
        counts[el] = counts.get(el, 0.0) + n / z
    return Formula(counts, z, f"SFAC/UNIT of {path.name}")


def _formula_from_cif(path: Path) -> Formula | None:
    try:
        doc = gemmi.cif.read(str(path))
    except Exception:
        return None
    for block in doc:
        text = block.find_value("_chemical_formula_sum")
        if text and text not in ("?", "."):
            z_text = block.find_value("_cell_formula_units_Z")
            z = float(re.sub(r"\(\d+\)$", "", z_text)) if z_text and z_text not in (
                "?", ".") else None
            return Formula(parse_formula(gemmi.cif.as_string(text)), z,
                           f"_chemical_formula_sum of {path.name}")
    return None


def wavelength_from_file(path: str | Path | None) -> float | None:
    """The wavelength of a ``.ins``/``.res`` CELL card or a CIF's
    ``_diffrn_radiation_wavelength``; None when the file gives none."""
    if path is None or not Path(path).is_file():
        return None
    path = Path(path)
    if path.suffix.lower() in (".cif", ".mmcif"):
        try:
            for block in gemmi.cif.read(str(path)):
                v = block.find_value("_diffrn_radiation_wavelength")
                if v and v not in ("?", "."):
                    return float(re.sub(r"\(\d+\)$", "", v))
        except Exception:
            return None
        return None
    for card in _cards(path.read_text(errors="replace")):
        if card[0].upper() == "CELL" and len(card) > 1:
            try:
                return float(card[1])
            except ValueError:
                return None
    return None


def kept_instructions(path: str | Path) -> list[str]:
    """The cards of a ``.ins``/``.res`` worth copying into a new model's ``.res``
    (:data:`KEPT_INSTRUCTIONS`, as written there, in the file's order)."""
    out = []
    for card in _cards(Path(path).read_text(errors="replace")):
        if card[0].upper() in KEPT_INSTRUCTIONS:
            out.append(" ".join(card))
    return out


def _sfac_elements(cards: list[list[str]]) -> list[str]:
    """Element symbols of the SFAC cards (long form ``SFAC El a1 b1 ...`` included)."""
    out: list[str] = []
    for c in cards:
        if c[0].upper() != "SFAC" or len(c) < 2:
            continue
        long_form = len(c) > 2 and re.match(r"^-?[\d.]+$", c[2])
        out += [_element_name(c[1])] if long_form else [_element_name(w) for w in c[1:]]
    return out


def _element_name(symbol: str) -> str:
    el = gemmi.Element(symbol)
    return el.name if el.atomic_number else symbol.capitalize()


# ---------------------------------------------------------------------------------------------
# LATT and SYMM
# ---------------------------------------------------------------------------------------------
def _has_origin_inversion(ops: gemmi.GroupOps) -> bool:
    minus_one = [[-gemmi.Op.DEN if i == j else 0 for j in range(3)] for i in range(3)]
    return any(op.rot == minus_one and all(t % gemmi.Op.DEN == 0 for t in op.tran)
               for op in ops)


def latt_symm(spacegroup: gemmi.SpaceGroup) -> tuple[int, list[str]]:
    """SHELX LATT number and SYMM operators (``"-X, 1/2+Y, 1/2-Z"``) of a space group.

    Raises
    ------
    PattersolveError
        For a centring SHELX cannot express (none of P I R F A B C).
    """
    ops = spacegroup.operations()
    centring = spacegroup.centring_type()
    if centring not in LATT_NUMBER:
        raise PattersolveError(f"space group {spacegroup.xhm()}: centring {centring!r} has no "
                               "SHELX LATT number", "transform the cell to a standard setting",
                               ExitCode.DATA)
    latt = LATT_NUMBER[centring]
    centro = _has_origin_inversion(ops)
    symm = []
    for op in ops.sym_ops:
        rot = np.array(op.rot)
        if (rot == np.eye(3, dtype=int) * gemmi.Op.DEN).all() or (
                centro and np.linalg.det(rot) < 0):
            continue
        symm.append(_shelx_triplet(op))
    return (latt if centro else -latt), symm


def _shelx_triplet(op: gemmi.Op) -> str:
    """An operator as SHELX writes it: translation first, ``"1/2-X, -Y, 1/2+Z"``."""
    parts = []
    for row, t in zip(op.rot, op.tran, strict=True):
        frac = Fraction(t % gemmi.Op.DEN, gemmi.Op.DEN)
        text = "" if frac == 0 else f"{frac.numerator}/{frac.denominator}"
        for coef, axis in zip(row, "XYZ", strict=True):
            if coef == 0:
                continue
            c = Fraction(coef, gemmi.Op.DEN)
            mag = "" if abs(c) == 1 else f"{abs(c)}*"
            sign = "-" if c < 0 else ("+" if text else "")
            text += f"{sign}{mag}{axis}"
        parts.append(text)
    return ", ".join(parts)


def spacegroup_from_cards(latt: int, symm: list[str]) -> gemmi.SpaceGroup:
    """The space group that SHELX LATT/SYMM cards generate (centring and inversion added).

    Raises
    ------
    PattersolveError
        When the cards do not generate a tabulated space group.
    """
    if abs(latt) not in _CENTRING:
        raise PattersolveError(f"LATT {latt} is not a SHELX lattice type", "use LATT +-1..7",
                               ExitCode.INPUT_FORMAT)
    try:
        ops = [gemmi.Op("x,y,z")] + [gemmi.Op(s.replace(" ", "").lower()) for s in symm]
        if latt > 0:
            ops += [gemmi.Op("-x,-y,-z") * op for op in ops]
        allops = list(ops)
        for t in _CENTRING[abs(latt)]:
            tx, ty, tz = t.split(",")
            allops += [gemmi.Op(f"x+{tx},y+{ty},z+{tz}") * op for op in ops]
        group = gemmi.GroupOps(allops)
        group.add_missing_elements()
        sg = gemmi.find_spacegroup_by_ops(group)
    except (RuntimeError, ValueError) as exc:
        raise PattersolveError(f"LATT {latt} SYMM {symm}: not a group ({exc})",
                               "check the SYMM cards", ExitCode.INPUT_FORMAT) from exc
    if sg is None:
        raise PattersolveError(f"LATT {latt} SYMM {symm}: no tabulated space group",
                               "check the SYMM cards", ExitCode.INPUT_FORMAT)
    return sg


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
@dataclass
class ResAtom:
    """An atom (``height`` None) or a Q-peak of a ``.res`` file."""

    name: str
    element: str | None
    frac: tuple[float, float, float]
    occupancy: float = 1.0  # site occupancy, 1/multiplicity on a special position
    u_iso: float = 0.05
    height: float | None = None


@dataclass
class ResFile:
    """What :func:`read_res` found in a ``.res`` file."""

    title: str
    wavelength: float
    cell: tuple[float, ...]
    z: float
    latt: int
    symm: list[str]
    sfac: list[str]
    unit: list[float]
    atoms: list[ResAtom] = field(default_factory=list)
    qpeaks: list[ResAtom] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)
    hklf: int = 4

    @property
    def spacegroup(self) -> gemmi.SpaceGroup:
        """The space group of the LATT/SYMM cards."""
        return spacegroup_from_cards(self.latt, self.symm)


def _sfac_unit(atoms: list[ResAtom], n_ops: int, sfac: list[str] | None,
               unit: list[float] | None) -> tuple[list[str], list[float]]:
    """SFAC and UNIT: as given when every atom's element is among them, else from atoms."""
    elements = list(dict.fromkeys(a.element for a in atoms if a.element))
    if sfac and all(e in sfac for e in elements):
        if unit is not None and len(unit) == len(sfac):
            return list(sfac), list(unit)
        sfac = list(sfac)
    else:
        sfac = list(dict.fromkeys([*(sfac or []), *sorted(
            elements, key=lambda e: (e != "C", e != "H", e))])) or ["C"]  # SHELX needs one
    counts = {e: 0.0 for e in sfac}
    for a in atoms:
        if a.element:
            counts[a.element] += a.occupancy * n_ops
    return sfac, [counts[e] for e in sfac]


def res_text(cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup, atoms: list[ResAtom],
             qpeaks: list[ResAtom] = (), *, title: str = "pattersolve model",
             wavelength: float | None = None, z: float | None = None,
             sfac: list[str] | None = None, unit: list[float] | None = None,
             instructions: list[str] | None = None, remarks: list[str] = ()) -> str:
    """A SHELX ``.res`` file of atoms and Q-peaks (see the module's description).

    Parameters
    ----------
    cell, spacegroup
        The crystal's cell and space group (LATT/SYMM from :func:`latt_symm`).
    atoms, qpeaks
        Atoms (element set) and Q-peaks (``height`` set), fractional coordinates.
    title, wavelength, z
        TITL text; CELL wavelength (default :data:`DEFAULT_WAVELENGTH`); ZERR's Z
        (default: the space group's number of operators).
    sfac, unit
        SFAC elements and UNIT cell contents (an input file's, or the formula's); used when
        every atom's element is among ``sfac``, else SFAC/UNIT come from the atoms.
    instructions
        Refinement cards (default :data:`DEFAULT_INSTRUCTIONS`).
    remarks
        REM lines (what was assumed and how the model was made).
    """
    n_ops = len(list(spacegroup.operations()))
    sfac, unit = _sfac_unit(list(atoms), n_ops, sfac, unit)
    latt, symm = latt_symm(spacegroup)
    p = cell.parameters
    lines = [f"TITL {title}"[:80],
             f"CELL {wavelength or DEFAULT_WAVELENGTH:.5f} " + " ".join(
                 f"{v:9.4f}" for v in p[:3]) + " " + " ".join(f"{v:8.3f}" for v in p[3:]),
             f"ZERR {_number(z if z is not None else n_ops):>6s}" + "   0.0000" * 3
             + "   0.000" * 3, f"LATT {latt}", *(f"SYMM {s}" for s in symm),
             "SFAC " + " ".join(sfac), "UNIT " + " ".join(_number(u) for u in unit),
             *(instructions if instructions is not None else DEFAULT_INSTRUCTIONS),
             "WGHT 0.1", "FVAR 1.0", *(f"REM {r}"[:80] for r in remarks)]
    number = {e: i + 1 for i, e in enumerate(sfac)}
    for a in atoms:
        lines.append(_atom_line(a.name, number[a.element], a.frac, 10.0 + a.occupancy,
                                a.u_iso))
    for q in qpeaks:
        lines.append(_atom_line(q.name, 1, q.frac, 10.0 + q.occupancy, q.u_iso)
                     + f"{q.height or 0.0:9.2f}")
    return "\n".join([*lines, "HKLF 4", "END", ""])


def _atom_line(name: str, sfac_no: int, frac: tuple[float, float, float], sof: float,
               u: float) -> str:
    x, y, z = (float(v) for v in frac)
    return f"{name:<5s}{sfac_no:3d} {x:10.6f}{y:10.6f}{z:10.6f}{sof:11.5f}{u:11.5f}"


# ---------------------------------------------------------------------------------------------
# strict reading
# ---------------------------------------------------------------------------------------------
def _cards(text: str) -> list[list[str]]:
    """Cards up to HKLF/END: ``!`` comments cut, ``=`` continuations joined, blanks skipped."""
    cards: list[list[str]] = []
    joining = False
    for raw in text.splitlines():
        is_rem = raw[:4].upper() in ("REM", "REM ", "TITL")
        line = raw.rstrip() if is_rem else raw.split("!")[0].rstrip()
        if joining and cards:
            cards[-1] += line.rstrip("=").split()
        elif line.strip():
            cards.append(line.rstrip("=").split() if not is_rem else line.split())
        joining = not is_rem and line.endswith("=")
        if cards and cards[-1][0].upper() in ("HKLF", "END"):
            break
    return cards


def _bad(line_no: int, message: str) -> PattersolveError:
    return PattersolveError(f".res card {line_no}: {message}",
                            "write the file with pattersolve or fix the card",
                            ExitCode.INPUT_FORMAT)


def read_res(source: str | Path) -> ResFile:
    """Strictly read a ``.res``/``.ins`` (a path, or the text itself when it has newlines).

    Every card must be a SHELX instruction or an atom/Q-peak card of the form
    ``NAME SFAC x y z sof U [height]`` with ``1 <= SFAC <= len(SFAC)``, coordinates not coded
    with free variables, and CELL, LATT (default 1), SFAC, UNIT (one number per SFAC element)
    and HKLF must be present.

    Raises
    ------
    PattersolveError
        INPUT_FORMAT, naming the card, for anything else.
    """
    text = str(source) if "\n" in str(source) else Path(source).read_text(errors="replace")
    out = ResFile(title="", wavelength=0.0, cell=(), z=0.0, latt=1, symm=[], sfac=[], unit=[],
                  hklf=0)
    for no, card in enumerate(_cards(text), start=1):
        _read_card(no, card, out)
    if not out.cell or not out.sfac or not out.hklf:
        raise _bad(0, "CELL, SFAC and HKLF are required")
    if len(out.unit) != len(out.sfac):
        raise _bad(0, f"UNIT has {len(out.unit)} numbers for {len(out.sfac)} SFAC elements")
    return out


def _numbers(no: int, card: list[str], n: int | None = None) -> list[float]:
    try:
        vals = [float(v) for v in card[1:]]
    except ValueError as exc:
        raise _bad(no, f"{card[0]} needs numbers: {' '.join(card)!r}") from exc
    if n is not None and len(vals) != n:
        raise _bad(no, f"{card[0]} needs {n} numbers, got {len(vals)}")
    return vals


def _read_card(no: int, card: list[str], out: ResFile) -> None:
    key = card[0].upper()
    if key == "TITL":
        out.title = " ".join(card[1:])
    elif key == "CELL":
        vals = _numbers(no, card, 7)
        out.wavelength, out.cell = vals[0], tuple(vals[1:])
    elif key == "ZERR":
        out.z = _numbers(no, card, 7)[0]
    elif key == "LATT":
        out.latt = int(_numbers(no, card, 1)[0])
    elif key == "SYMM":
        out.symm.append(" ".join(card[1:]))
    elif key == "SFAC":
        out.sfac += _sfac_elements([card])
    elif key == "UNIT":
        out.unit += _numbers(no, card)
    elif key == "HKLF":
        out.hklf = int(_numbers(no, card[:2], 1)[0])
    elif key == "REM":
        out.remarks.append(" ".join(card[1:]))
    elif key in KNOWN_CARDS:
        out.instructions.append(" ".join(card))
    else:
        _read_atom(no, card, out)


def _read_atom(no: int, card: list[str], out: ResFile) -> None:
    name = card[0]
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9'_]{0,3}", name):
        raise _bad(no, f"unknown instruction or bad atom name {name!r}")
    is_q = re.fullmatch(r"Q\d+", name, re.I) is not None
    vals = _numbers(no, card)
    if len(vals) != (7 if is_q else 6) or vals[0] != int(vals[0]):
        raise _bad(no, f"atom {name}: want 'NAME SFAC x y z sof U{' height' if is_q else ''}'"
                       f", got {' '.join(card)!r}")
    sfac_no = int(vals[0])
    if not 1 <= sfac_no <= len(out.sfac):
        raise _bad(no, f"atom {name}: SFAC number {sfac_no} is not 1..{len(out.sfac)}")
    if any(abs(v) >= 5 for v in vals[1:4]) or not 10 < vals[4] <= 11:
        raise _bad(no, f"atom {name}: coordinates or occupancy coded with free variables")
    atom = ResAtom(name, None if is_q else out.sfac[sfac_no - 1],
                   (vals[1], vals[2], vals[3]), vals[4] - 10.0, vals[5],
                   vals[6] if is_q else None)
    (out.qpeaks if is_q else out.atoms).append(atom)
