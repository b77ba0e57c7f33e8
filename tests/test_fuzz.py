"""Fuzzing the readers and the output transaction: nothing lost, no traceback.

Seeded corruptions (``numpy.random.default_rng(seed)``) of MTZ files (header records, the column
table, the reflection body, truncation), SHELX HKLF 4 files (garbage fields, huge indices, NaN,
missing columns, blank lines, an early ``0 0 0``, CRLF, tabs, Latin-1 bytes; the cell and space
group from a ``.ins`` beside the file or from ``--cell``/``--spacegroup``) and mmCIF
structure-factor blocks (no ``_cell``, no ``_symmetry``, missing or non-numeric loop values,
truncation) are run through :func:`pattersolve.cli.main` in-process, in a folder that also
holds an older output set (map, MTZ, JSON) and with ``--overwrite``. Every case must end with

* an exit code in the documented set {0, 2, 3, 4, 5, 6, 7, 9}, 0 only where the data were
  usable (never for a corruption that destroys the file; and then with readable outputs);
* no traceback, and exactly one ``error:`` line on failure;
* no temporary, lock or backup file left in the folder;
* the old outputs byte-identical when the run fails.

A case's id names its family, base file and seed (``mtz-header-flip-p21i-003``), so a failure
reproduces with ``pytest tests/test_fuzz.py -k ID``. The fast cases fail mostly at read time
(those that reach a solve use 3 classical cycles, 1 start, on a few hundred reflections); more
seeds of every family run under ``-m slow``. Known failures are listed in :data:`KNOWN` and
marked ``xfail(strict=True)``: the mark must go as soon as the case passes.
"""

from __future__ import annotations

import errno
import functools
import gzip
import json
import os
import re
import resource
import signal
import struct
import tempfile
import traceback
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gemmi
import numpy as np
import pytest

from pattersolve import fourier, synthetic
from pattersolve import simulate as sim
from pattersolve.cli import main
from pattersolve.cli_phasematch import main as phasematch_main
from pattersolve.errors import ExitCode

EXIT_CODES = {0, 2, 3, 4, 5, 6, 7, 9}
INTERRUPTED = 130  # Ctrl-C
SOLVE = ["--method", "classical", "--cycles", "3", "--starts", "1", "--seed", "0"]
OLD = {"out.map": b"an older map: must survive a failed run\n",
       "out.mtz": b"an older phased MTZ: must survive a failed run\n",
       "out.json": b'{"older": "summary: must survive a failed run"}\n'}
OLD_PHASEMATCH = {"out.json": b'{"older": "phase errors: must survive a failed run"}\n'}
SHARE = Path(__file__).resolve().parents[1] / "share" / "examples"
P21_CELL = (9.0, 7.5, 10.0, 90.0, 101.0, 90.0)
P21_ARGS = ["--cell", ",".join(f"{x:g}" for x in P21_CELL), "--spacegroup", "P 1 21 1"]
INS = """TITL fuzz in P2(1)
CELL 0.71073 {:g} {:g} {:g} {:g} {:g} {:g}
ZERR 2 0.001 0.001 0.001 0 0.01 0
LATT -1
SYMM -X, 1/2+Y, -Z
SFAC C N O
UNIT 12 4 4
HKLF 4
END
""".format(*P21_CELL)
MEMORY_HEADROOM = 3 * 2**30  # address space a case may add (a runaway grid: MemoryError)
HANG_GUARD_S = 300.0  # a case still running after this long fails (a hang, not a slow run)
KNOWN_HANG_GUARD_S = 5.0  # the same for the cases in KNOWN_SLOW (minutes today, ms once fixed)


# ---------------------------------------------------------------------------------------------
# the uncorrupted inputs
# ---------------------------------------------------------------------------------------------
def _p21_data(d_min: float = 2.2) -> tuple[np.ndarray, np.ndarray]:
    """ASU Miller indices and F of an Ala-Ala fragment and its 2(1) mate in :data:`P21_CELL`."""
    elements, xyz = synthetic.ala_ala()
    cell, sg = gemmi.UnitCell(*P21_CELL), gemmi.SpaceGroup("P 1 21 1")
    cart = xyz - xyz.mean(0) + np.array([2.5, 1.5, 3.0])
    frac = np.array([cell.fractionalize(gemmi.Position(*x)).tolist() for x in cart])
    frac = np.vstack([frac, frac * np.array([-1.0, 1.0, -1.0]) + np.array([0.0, 0.5, 0.0])])
    asu, ops = gemmi.ReciprocalAsu(sg), sg.operations()
    hkl = np.array([h for h in fourier.miller_sphere(cell, d_min, half=False).tolist()
                    if asu.is_in(h) and not ops.is_systematically_absent(h)])
    return hkl, sim.structure_factors(frac, elements * 2, 15.0, cell, hkl)


def _mtz_bytes(folder: Path, name: str, cell: gemmi.UnitCell, hkl: np.ndarray,
               columns: list, spacegroup: gemmi.SpaceGroup | None = None) -> bytes:
    path = folder / f"{name}.mtz"
    synthetic.write_data_mtz(path, cell, hkl, columns, spacegroup, name=name)
    return path.read_bytes()


def _hkl_text(hkl: np.ndarray, f: np.ndarray) -> str:
    """SHELX HKLF 4 (3I4,2F8.2) with the 0 0 0 terminator; Friedel mates of every 3rd row."""
    inten = np.abs(f) ** 2
    inten *= 9000.0 / inten.max()
    lines = []
    for i, (h, val) in enumerate(zip(hkl.tolist(), inten, strict=True)):
        lines.append(f"{h[0]:4d}{h[1]:4d}{h[2]:4d}{val:8.2f}{0.02 * val + 0.5:8.2f}")
        if i % 3 == 0:
            lines.append(f"{-h[0]:4d}{-h[1]:4d}{-h[2]:4d}{val:8.2f}{0.02 * val + 0.5:8.2f}")
    return "\n".join([*lines, f"{0:4d}{0:4d}{0:4d}{0.0:8.2f}{0.0:8.2f}", ""])


def _cif_text(hkl: np.ndarray, f: np.ndarray) -> str:
    """A PDB-style ``*-sf.cif`` block: _cell, _symmetry, a _refln loop with F and sigma."""
    amp = np.abs(f) * 100.0 / np.abs(f).max()
    head = ["data_r0fzzsf", "#", "_cell.entry_id 0FZZ"]
    for key, val in zip(("length_a", "length_b", "length_c", "angle_alpha", "angle_beta",
                         "angle_gamma"), P21_CELL, strict=True):
        head.append(f"_cell.{key} {val:.3f}")
    head += ["#", "_symmetry.entry_id 0FZZ", "_symmetry.space_group_name_H-M 'P 1 21 1'",
             "_symmetry.Int_Tables_number 4", "#", "loop_", "_refln.wavelength_id",
             "_refln.crystal_id", "_refln.index_h", "_refln.index_k", "_refln.index_l",
             "_refln.status", "_refln.F_meas_au", "_refln.F_meas_sigma_au"]
    rows = [f"1 1 {h[0]} {h[1]} {h[2]} {'f' if i % 20 == 7 else 'o'} {a:.3f} {0.03 * a + 0.1:.3f}"
            for i, (h, a) in enumerate(zip(hkl.tolist(), amp, strict=True))]
    return "\n".join([*head, *rows, "#", ""])


@functools.lru_cache(maxsize=1)
def bases() -> dict[str, bytes]:
    """Every base file, by name: MTZs (``alaala``, ``truth`` from share/examples; ``p1s`` and
    ``p21i`` written here; ``pm`` and ``pm21``, map coefficients FC/PHIC for
    pattersolve-phasematch), ``hkl`` (SHELX, P2(1)) and ``cif`` (mmCIF, P2(1))."""
    out = {"alaala": (SHARE / "alaala_1akz.mtz").read_bytes(),
           "truth": (SHARE / "alaala_1akz_truth.mtz").read_bytes()}
    rng = np.random.default_rng(7)
    elements, xyz = synthetic.ala_ala()
    small = synthetic.simulate_fragment(elements, xyz, d_min=2.5)
    hkl21, f21 = _p21_data()
    inten = np.abs(f21) ** 2
    free = (rng.uniform(size=len(hkl21)) < 0.05).astype(np.float64)
    with tempfile.TemporaryDirectory() as tmp:
        out["p1s"] = _mtz_bytes(Path(tmp), "p1s", small.placement.cell, small.hkl,
                                synthetic.measured_columns(small.f, rng, noise=0.03))
        out["p21i"] = _mtz_bytes(Path(tmp), "p21i", gemmi.UnitCell(*P21_CELL), hkl21,
                                 [("I", "J", inten), ("SIGI", "Q", 0.02 * inten + 0.01),
                                  ("FreeR_flag", "I", free)], gemmi.SpaceGroup("P 1 21 1"))
    with tempfile.TemporaryDirectory() as tmp:  # map coefficients for pattersolve-phasematch
        out["pm"] = _mtz_bytes(Path(tmp), "pm", small.placement.cell, small.hkl,
                               synthetic.phase_columns(small.f))
        out["pm21"] = _mtz_bytes(Path(tmp), "pm21", gemmi.UnitCell(*P21_CELL), hkl21,
                                 synthetic.phase_columns(f21), gemmi.SpaceGroup("P 1 21 1"))
    out["hkl"] = _hkl_text(hkl21, f21).encode()
    out["cif"] = _cif_text(hkl21, f21).encode()
    return out


# ---------------------------------------------------------------------------------------------
# corruptions: (rng, base bytes) -> (corrupted bytes, must_fail, what was done)
# ---------------------------------------------------------------------------------------------
Corrupted = tuple[bytes, bool, str]
SPECIAL_FLOATS = (float("nan"), float("inf"), float("-inf"), 1e30, -1e30, 3.0e38, 0.0, -0.0,
                  1e-40, 0.5, 2.0**31, -7.0, 1e9)


@dataclass(frozen=True)
class MtzLayout:
    """Byte ranges of an MTZ file: body ``[80, header)``, 80-byte header records after it."""

    header: int
    records: list[tuple[int, bytes]]  # (offset, record) up to and including END
    columns_end: int  # first byte after the last COLUMN record
    ncol: int


def mtz_layout(data: bytes) -> MtzLayout:
    """Locate the body and the header records of an (uncorrupted, little-endian) MTZ."""
    header = (struct.unpack("<i", data[4:8])[0] - 1) * 4
    records, pos, ncol, columns_end = [], header, 0, header
    while pos + 80 <= len(data):
        rec = data[pos:pos + 80]
        records.append((pos, rec))
        pos += 80
        if rec.startswith(b"NCOL"):
            ncol = int(rec.split()[1])
        if rec.startswith(b"COLUMN"):
            columns_end = pos
        if rec.startswith(b"END"):
            break
    return MtzLayout(header, records, columns_end, ncol)


def _xor(data: bytearray, positions: np.ndarray, rng: np.random.Generator) -> None:
    for p in positions:
        data[int(p)] ^= int(rng.integers(1, 256))


def mtz_stamp(rng: np.random.Generator, base: bytes) -> Corrupted:
    """Flip a byte of the magic, the header pointer or the machine stamp."""
    data = bytearray(base)
    pos = int(rng.integers(0, 12))
    _xor(data, np.array([pos]), rng)
    return bytes(data), pos < 8, f"byte {pos} of the file's first 12 flipped"


def mtz_header_flip(rng: np.random.Generator, base: bytes) -> Corrupted:
    """Flip 1-3 bytes anywhere in the header records."""
    lay = mtz_layout(base)
    data = bytearray(base)
    pos = rng.integers(lay.header, len(base), size=int(rng.integers(1, 4)))
    _xor(data, pos, rng)
    return bytes(data), False, f"header bytes {sorted(pos.tolist())} flipped"


def mtz_coltable_flip(rng: np.random.Generator, base: bytes) -> Corrupted:
    """Flip 1-2 bytes in the COLUMN records (labels, types, ranges, dataset ids)."""
    lay = mtz_layout(base)
    cols = [off for off, rec in lay.records if rec.startswith(b"COLUMN")]
    data = bytearray(base)
    pos = np.array([cols[int(rng.integers(len(cols)))] + int(rng.integers(0, 80))
                    for _ in range(int(rng.integers(1, 3)))])
    _xor(data, pos, rng)
    return bytes(data), False, f"column-table bytes {sorted(pos.tolist())} flipped"


def _set_record(base: bytes, offset: int, text: str) -> bytes:
    rec = text.encode("latin-1")[:80].ljust(80)
    return base[:offset] + rec + base[offset + 80:]


def _record_edits(rng: np.random.Generator, lay: MtzLayout) -> list[tuple[str, str, bool]]:
    """(record keyword, replacement text, must_fail) candidates for :func:`mtz_record_edit`."""
    num = str(rng.choice(["0", "-1", "1000000000", "nan", "abc", "1e30", "", "2.5"]))
    letter = str(rng.choice(list("HJFQDGKLMPWABYIRE?x ")))
    return [
        ("NCOL", f"NCOL {num} {lay.ncol}", False),
        ("NCOL", f"NCOL {lay.ncol} {num} 0", False),
        ("CELL", f"CELL {num} {num} 10 90 90 90", False),
        ("CELL", "CELL", False),
        ("SYMINF", f"SYMINF {num} {num} P {num} 'P 7' PG1", False),
        ("SYMM", f"SYMM {rng.choice(['X,Y', 'Q,R,S', 'X,Y,Z,W', '-X,1/0+Y,-Z', ''])}", False),
        ("COLUMN", f"COLUMN FP {letter} 0 100 1", False),
        ("COLUMN", f"COLUMN {'X' * 40} F {num} {num} 1", False),
        ("RESO", f"RESO {num} {num}", False),
        ("VALM", f"VALM {num}", False),
        ("DCELL", f"DCELL 1 {num} {num} {num} 90 90 90", False),
        ("END", "", False),
        ("VERS", "VERS MTZ:V9.9", False),
    ]


def mtz_record_edit(rng: np.random.Generator, base: bytes) -> Corrupted:
    """Replace one header record by a plausible-looking but wrong one."""
    lay = mtz_layout(base)
    edits = _record_edits(rng, lay)
    key, text, must_fail = edits[int(rng.integers(len(edits)))]
    offsets = [off for off, rec in lay.records if rec.split()[:1] == [key.encode()]]
    if not offsets:
        return base, False, f"no {key} record to edit (unchanged)"
    off = offsets[int(rng.integers(len(offsets)))]
    return _set_record(base, off, text), must_fail, f"record {key} -> {text!r}"


def mtz_truncate(rng: np.random.Generator, base: bytes) -> Corrupted:
    """Cut the file: in the first 80 bytes, the body, or the header records (a cut after the
    column table leaves every number and label the data need: it may be read)."""
    lay = mtz_layout(base)
    where = int(rng.integers(3))
    lo, hi = [(1, 80), (80, lay.header), (lay.header, len(base))][where]
    cut = int(rng.integers(lo, hi))
    return base[:cut], cut < lay.columns_end, f"truncated to {cut} of {len(base)} bytes"


def mtz_body_words(rng: np.random.Generator, base: bytes) -> Corrupted:
    """Replace 1-5 random 4-byte values of the reflection body by special floats."""
    lay = mtz_layout(base)
    data = bytearray(base)
    n_words = (lay.header - 80) // 4
    what = []
    for w in rng.integers(0, n_words, size=int(rng.integers(1, 6))):
        val = SPECIAL_FLOATS[int(rng.integers(len(SPECIAL_FLOATS)))]
        data[80 + 4 * int(w):84 + 4 * int(w)] = struct.pack("<f", val)
        what.append(f"word {int(w)}={val:g}")
    return bytes(data), False, "body " + ", ".join(what)


def mtz_indices(rng: np.random.Generator, base: bytes) -> Corrupted:
    """Set H, K or L of 1-3 rows to NaN, huge, fractional or negative values."""
    lay = mtz_layout(base)
    data = bytearray(base)
    nrow = (lay.header - 80) // (4 * lay.ncol)
    what = []
    for _ in range(int(rng.integers(1, 4))):
        row, col = int(rng.integers(nrow)), int(rng.integers(3))
        val = SPECIAL_FLOATS[int(rng.integers(len(SPECIAL_FLOATS)))]
        pos = 80 + 4 * (row * lay.ncol + col)
        data[pos:pos + 4] = struct.pack("<f", val)
        what.append(f"row {row} {'HKL'[col]}={val:g}")
    return bytes(data), False, "indices " + ", ".join(what)


# --- SHELX HKLF 4 -----------------------------------------------------------------------------
GARBAGE = ("abcd", "****", "1.2.", "--", "x", "?", "1e", "+-1", "0x1f", "#", "1,5", "NULL")


def _lines(base: bytes) -> tuple[list[str], int]:
    """The lines of a text base and the number of data lines before its terminator."""
    lines = base.decode().split("\n")
    n_data = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ["0", "0", "0"])
    return lines, n_data


def _join(lines: list[str]) -> bytes:
    return "\n".join(lines).encode("latin-1")


def hkl_garbage(rng: np.random.Generator, base: bytes) -> Corrupted:
    """One field of one data line replaced by a non-number (fixed columns kept)."""
    lines, n = _lines(base)
    i, fld = int(rng.integers(n)), int(rng.integers(5))
    tok = GARBAGE[int(rng.integers(len(GARBAGE)))]
    lo, hi = [(0, 4), (4, 8), (8, 12), (12, 20), (20, 28)][fld]
    lines[i] = lines[i][:lo] + tok.rjust(hi - lo)[: hi - lo] + lines[i][hi:]
    return _join(lines), True, f"line {i + 1} field {fld + 1} -> {tok!r}"


def hkl_huge(rng: np.random.Generator, base: bytes) -> Corrupted:
    """A huge Miller index: 9999 in the fixed columns, or a long free-format number."""
    lines, n = _lines(base)
    i, col = int(rng.integers(n)), int(rng.integers(3))
    if rng.integers(2):
        val = str(int(rng.choice([9999, -999, 2**31, 2**63, 10**30])))
        words = lines[i].split()
        words[col] = val
        lines[i] = " ".join(words)
    else:
        val = str(int(rng.choice([9999, -999, 999])))
        lines[i] = lines[i][: 4 * col] + val.rjust(4) + lines[i][4 * col + 4:]
    return _join(lines), False, f"line {i + 1} index {'hkl'[col]} = {val}"


def hkl_nan(rng: np.random.Generator, base: bytes) -> Corrupted:
    """NaN, infinite or negative I or sigma(I) on 1-5 lines."""
    lines, n = _lines(base)
    what = []
    for i in rng.integers(0, n, size=int(rng.integers(1, 6))):
        tok = str(rng.choice(["NaN", "nan", "inf", "-inf", "-1.00", "0.00", "-0.00"]))
        lo = 12 if rng.integers(2) else 20
        lines[int(i)] = lines[int(i)][:lo] + tok.rjust(8) + lines[int(i)][lo + 8:]
        what.append(f"line {int(i) + 1} col {lo}: {tok}")
    return _join(lines), False, ", ".join(what)


def hkl_missing(rng: np.random.Generator, base: bytes) -> Corrupted:
    """One data line loses its last 1-4 fields."""
    lines, n = _lines(base)
    i, keep = int(rng.integers(n)), int(rng.integers(1, 5))
    lines[i] = lines[i][: [0, 4, 8, 12, 20][keep]]
    return _join(lines), True, f"line {i + 1} cut to {keep} fields"


def hkl_blank(rng: np.random.Generator, base: bytes) -> Corrupted:
    """1-5 empty or whitespace-only lines inserted."""
    lines, n = _lines(base)
    for i in sorted(rng.integers(0, n, size=int(rng.integers(1, 6))).tolist(), reverse=True):
        lines.insert(i, str(rng.choice(["", "   ", "\t", " \t "])))
    return _join(lines), False, "blank lines inserted"


def hkl_terminator(rng: np.random.Generator, base: bytes) -> Corrupted:
    """A ``0 0 0`` record in the middle (data after it are ignored), sometimes first."""
    lines, n = _lines(base)
    i = 0 if rng.integers(4) == 0 else int(rng.integers(1, n))
    lines.insert(i, f"{0:4d}{0:4d}{0:4d}{0.0:8.2f}{0.0:8.2f}")
    return _join(lines), i == 0, f"terminator before line {i + 1}"


def hkl_crlf(rng: np.random.Generator, base: bytes) -> Corrupted:
    """CRLF line ends (everywhere, or on some lines), or old Mac CR."""
    text = base.decode()
    how = int(rng.integers(3))
    if how == 0:
        text = text.replace("\n", "\r\n")
    elif how == 1:
        text = "".join(ln + ("\r\n" if rng.integers(2) else "\n")
                       for ln in text.split("\n")[:-1])
    else:
        text = text.replace("\n", "\r")
    return text.encode(), False, ["CRLF", "mixed CRLF/LF", "CR only"][how]


def hkl_tabs(rng: np.random.Generator, base: bytes) -> Corrupted:
    """Tab-separated fields on 1-10 lines."""
    lines, n = _lines(base)
    for i in rng.integers(0, n, size=int(rng.integers(1, 11))):
        lines[int(i)] = "\t".join(lines[int(i)].split())
    return _join(lines), False, "tab-separated lines"


def hkl_latin1(rng: np.random.Generator, base: bytes) -> Corrupted:
    """A Latin-1 byte (not UTF-8) inside a record's 28 columns (unreadable), after them, or in
    a line after the terminator (both ignored by SHELX's 3I4,2F8.2)."""
    lines, n = _lines(base)
    char = str(rng.choice(list("\xe9\xb0\xb5\xdf\xe4\xff")))
    how, i = int(rng.integers(3)), int(rng.integers(n))
    if how == 0:
        col = int(rng.integers(28))
        lines[i] = lines[i][:col] + char + lines[i][col + 1:]
        return _join(lines), True, f"Latin-1 byte {ord(char):#x} in line {i + 1} column {col}"
    if how == 1:
        lines[i] = lines[i] + f" {char}"
        return _join(lines), False, f"Latin-1 byte {ord(char):#x} after line {i + 1}'s record"
    lines.insert(n + 1, f"measured at 100 K{char}")
    return _join(lines), False, f"Latin-1 byte {ord(char):#x} after the terminator"


def hkl_truncate(rng: np.random.Generator, base: bytes) -> Corrupted:
    """Cut the file at a random byte. A record cut before its sigma(I) has a digit cannot be
    read; one cut inside sigma(I) reads as a shorter number, and a whole record as a short
    file (the terminator is optional)."""
    lines, n = _lines(base)
    end_data = len("\n".join(lines[:n]))
    cut = int(rng.integers(1, len(base)))
    last = base[:cut].decode().rsplit("\n", 1)[-1]
    must_fail = cut < end_data and not re.search(r"\d", last[20:28]) and last.strip() != ""
    return base[:cut], must_fail, f"truncated to {cut} of {len(base)} bytes: {last!r}"


def _ins_edits(rng: np.random.Generator) -> list[tuple[str, str, bool]]:
    """(card, replacement line, must_fail) candidates for :func:`ins_edit`."""
    num = str(rng.choice(["0", "-9", "nan", "abc", "1e30", "9.0.0"]))
    return [
        ("CELL", "CELL 0.71073 9.0 7.5 10.0 90 101", True),
        ("CELL", f"CELL 0.71073 {num} 7.5 10.0 90 101 90", True),
        ("CELL", "CELL 0.71073 9 7.5 10 90 270 90", True),
        ("CELL", "REM no cell", True),
        ("LATT", f"LATT {rng.choice(['0', '9', '-8', 'x', ''])}", True),
        ("LATT", "LATT 1", False),
        ("SYMM", f"SYMM {rng.choice(['X, Y', 'Q, R, S', '1/3+X, Y, Z', '-X, 1/0+Y, -Z'])}",
         True),
        ("SYMM", "SYMM -X, 1/3+Y, -Z", True),
        ("SYMM", "REM no symm", False),
        ("TITL", "TITL caf\xe9 \xb0C", False),
    ]


def ins_edit(rng: np.random.Generator, base: bytes) -> Corrupted:
    """The .ins beside the .hkl with a wrong CELL, LATT or SYMM card (base: the .ins)."""
    edits = _ins_edits(rng)
    card, text, must_fail = edits[int(rng.integers(len(edits)))]
    lines = base.decode().split("\n")
    i = next(j for j, ln in enumerate(lines) if ln.startswith(card))
    lines[i] = text
    return _join(lines), must_fail, f".ins {card} -> {text!r}"


# --- mmCIF structure factors ------------------------------------------------------------------
def _cif_lines(base: bytes) -> tuple[list[str], int, int]:
    """Lines of the CIF base and the range ``[first, end)`` of its loop rows."""
    lines = base.decode().split("\n")
    first = max(i for i, ln in enumerate(lines) if ln.startswith("_refln.")) + 1
    end = next(i for i in range(first, len(lines)) if lines[i].startswith("#"))
    return lines, first, end


def _replace_values(rng: np.random.Generator, base: bytes, tokens: tuple[str, ...],
                    columns: tuple[int, ...], n_max: int) -> tuple[bytes, str]:
    lines, first, end = _cif_lines(base)
    what = []
    for _ in range(int(rng.integers(1, n_max + 1))):
        i, col = int(rng.integers(first, end)), int(rng.choice(columns))
        tok = str(rng.choice(tokens))
        words = lines[i].split()
        words[col] = tok
        lines[i] = " ".join(words)
        what.append(f"line {i + 1} value {col + 1} -> {tok!r}")
    return _join(lines), ", ".join(what)


def cif_no_cell(rng: np.random.Generator, base: bytes) -> Corrupted:
    """The _cell category gone, or one of its six items gone or '?'."""
    lines = base.decode().split("\n")
    items = [i for i, ln in enumerate(lines) if ln.startswith(("_cell.length", "_cell.angle"))]
    how = int(rng.integers(3))
    if how == 0:
        lines = [ln for ln in lines if not ln.startswith("_cell.")]
        return _join(lines), True, "no _cell items"
    i = int(rng.choice(items))
    what = lines[i].split()[0]
    if how == 1:
        del lines[i]
        return _join(lines), True, f"no {what}"
    lines[i] = f"{what} ?"
    return _join(lines), True, f"{what} ?"


def cif_no_symmetry(rng: np.random.Generator, base: bytes) -> Corrupted:
    """The space group gone, unknown (?) or not a space-group name."""
    lines = base.decode().split("\n")
    how = int(rng.integers(3))
    if how == 0:
        lines = [ln for ln in lines if not ln.startswith("_symmetry.")]
        return _join(lines), True, "no _symmetry items"
    i = next(j for j, ln in enumerate(lines) if ln.startswith("_symmetry.space_group"))
    lines[i] = "_symmetry.space_group_name_H-M " + ("?" if how == 1 else "'P 7 7'")
    j = next(j for j, ln in enumerate(lines) if ln.startswith("_symmetry.Int_Tables"))
    del lines[j]
    return _join(lines), True, f"space group {lines[i].split(None, 1)[1]}, no number"


def cif_loop_missing(rng: np.random.Generator, base: bytes) -> Corrupted:
    """'?' or '.' for 1-10 values of the _refln loop: any column, or only the status, F and
    sigma(F) (missing measurements, which mmCIF allows)."""
    columns = (2, 3, 4, 5, 6, 7) if rng.integers(2) else (5, 6, 7)
    data, what = _replace_values(rng, base, ("?", "."), columns, 10)
    return data, False, what


def cif_loop_nonnumeric(rng: np.random.Generator, base: bytes) -> Corrupted:
    """Non-numeric, NaN, infinite or overflowing values in the _refln loop."""
    tokens = ("abc", "1.2.3", "--", "nan", "inf", "1e999", "-1e999", "12(3)", "'1'", "x1")
    data, what = _replace_values(rng, base, tokens, (2, 3, 4, 5, 6, 7), 5)
    return data, False, what


def cif_loop_indices(rng: np.random.Generator, base: bytes) -> Corrupted:
    """Fractional, huge or overflowing Miller indices in 1-3 rows."""
    tokens = ("1.5", "99999", "2147483648", "-2147483649", "1e5", "99999999999999999999")
    data, what = _replace_values(rng, base, tokens, (2, 3, 4), 3)
    return data, False, what


def cif_loop_short(rng: np.random.Generator, base: bytes) -> Corrupted:
    """One value removed from the loop: its value count is no multiple of its columns."""
    lines, first, end = _cif_lines(base)
    i = int(rng.integers(first, end))
    words = lines[i].split()
    del words[int(rng.integers(len(words)))]
    lines[i] = " ".join(words)
    return _join(lines), True, f"line {i + 1} lost a value"


def cif_truncate(rng: np.random.Generator, base: bytes) -> Corrupted:
    """Cut the file at a random byte (before the loop's rows: nothing to read)."""
    lines, first, _ = _cif_lines(base)
    rows_start = len("\n".join(lines[:first])) + 1
    cut = int(rng.integers(1, len(base)))
    return base[:cut], cut <= rows_start, f"truncated to {cut} of {len(base)} bytes"


def cif_flip(rng: np.random.Generator, base: bytes) -> Corrupted:
    """Flip 1-4 random bytes anywhere."""
    data = bytearray(base)
    pos = rng.integers(0, len(base), size=int(rng.integers(1, 5)))
    _xor(data, pos, rng)
    return bytes(data), False, f"bytes {sorted(pos.tolist())} flipped"


# --- gzip-compressed input (.mtz.gz, .hkl.gz, .cif.gz) ---------------------------------------
def _gz(base: bytes) -> bytes:
    return gzip.compress(base, mtime=0)


def gz_truncate(rng: np.random.Generator, base: bytes) -> Corrupted:
    """The compressed stream cut short (the end-of-stream marker and CRC lost)."""
    data = _gz(base)
    cut = int(rng.integers(1, len(data) - 8))
    return data[:cut], False, f"gzip stream truncated to {cut} of {len(data)} bytes"


def gz_flip(rng: np.random.Generator, base: bytes) -> Corrupted:
    """1-3 bytes of the compressed stream flipped (bad deflate data, or a CRC mismatch)."""
    data = bytearray(_gz(base))
    pos = rng.integers(10, len(data), size=int(rng.integers(1, 4)))
    _xor(data, pos, rng)
    return bytes(data), False, f"gzip bytes {sorted(pos.tolist())} flipped"


# ---------------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """A corruption, the bases it applies to, and how many seeds run fast and slow."""

    name: str
    corrupt: Callable[[np.random.Generator, bytes], Corrupted]
    bases: tuple[str, ...]
    fast: int
    slow: int


MTZS = ("alaala", "truth", "p1s", "p21i")
SMALL_MTZS = ("p1s", "p21i")  # bases whose usable corruptions solve quickly
PHASEMATCH = ("pm", "pm21")  # map-coefficient bases: cases run pattersolve-phasematch
FAMILIES = (
    Family("mtz-stamp", mtz_stamp, MTZS, 3, 6),
    Family("mtz-header-flip", mtz_header_flip, SMALL_MTZS, 4, 12),
    Family("mtz-header-flip", mtz_header_flip, ("alaala", "truth"), 0, 4),
    Family("mtz-coltable-flip", mtz_coltable_flip, SMALL_MTZS, 3, 10),
    Family("mtz-record-edit", mtz_record_edit, SMALL_MTZS, 5, 15),
    Family("mtz-record-edit", mtz_record_edit, ("alaala", "truth"), 1, 4),
    Family("mtz-truncate", mtz_truncate, MTZS, 10, 10),
    Family("mtz-body", mtz_body_words, SMALL_MTZS, 4, 10),
    Family("mtz-indices", mtz_indices, SMALL_MTZS, 6, 12),
    Family("hkl-garbage", hkl_garbage, ("hkl",), 25, 30),
    Family("hkl-huge", hkl_huge, ("hkl",), 10, 15),
    Family("hkl-nan", hkl_nan, ("hkl",), 4, 8),
    Family("hkl-missing", hkl_missing, ("hkl",), 18, 20),
    Family("hkl-blank", hkl_blank, ("hkl",), 1, 4),
    Family("hkl-terminator", hkl_terminator, ("hkl",), 4, 8),
    Family("hkl-crlf", hkl_crlf, ("hkl",), 2, 3),
    Family("hkl-tabs", hkl_tabs, ("hkl",), 1, 4),
    Family("hkl-latin1", hkl_latin1, ("hkl",), 12, 12),
    Family("hkl-truncate", hkl_truncate, ("hkl",), 8, 12),
    Family("ins-edit", ins_edit, ("ins",), 8, 12),
    Family("cif-no-cell", cif_no_cell, ("cif",), 4, 10),
    Family("cif-no-symmetry", cif_no_symmetry, ("cif",), 8, 8),
    Family("cif-loop-missing", cif_loop_missing, ("cif",), 10, 20),
    Family("cif-loop-nonnumeric", cif_loop_nonnumeric, ("cif",), 12, 15),
    Family("cif-loop-indices", cif_loop_indices, ("cif",), 10, 15),
    Family("cif-loop-short", cif_loop_short, ("cif",), 12, 10),
    Family("cif-truncate", cif_truncate, ("cif",), 8, 10),
    Family("cif-flip", cif_flip, ("cif",), 16, 25),
    Family("gz-truncate", gz_truncate, ("p1s", "hkl", "cif"), 4, 8),
    Family("gz-flip", gz_flip, ("p1s", "hkl", "cif"), 4, 8),
    # pattersolve-phasematch REF TEST with a clean REF and a corrupted TEST
    Family("mtz-stamp", mtz_stamp, PHASEMATCH, 2, 4),
    Family("mtz-header-flip", mtz_header_flip, PHASEMATCH, 2, 6),
    Family("mtz-coltable-flip", mtz_coltable_flip, PHASEMATCH, 2, 6),
    Family("mtz-record-edit", mtz_record_edit, PHASEMATCH, 2, 6),
    Family("mtz-truncate", mtz_truncate, PHASEMATCH, 3, 6),
    Family("mtz-body", mtz_body_words, PHASEMATCH, 2, 6),
    Family("mtz-indices", mtz_indices, PHASEMATCH, 2, 6),
)
_CELL = ",".join(f"{x:g}" for x in P21_CELL)
#: Explicit symmetry for the clean .hkl, no .ins beside it: (arguments, must_fail).
HKL_ARGS: tuple[tuple[list[str], bool], ...] = (
    (["--cell", "9,7.5,10,90,101", "--spacegroup", "P21"], True),
    (["--cell", "0,7.5,10,90,101,90", "--spacegroup", "P21"], True),
    (["--cell", "nan,7.5,10,90,101,90", "--spacegroup", "P21"], True),
    (["--cell", "inf,7.5,10,90,101,90", "--spacegroup", "P21"], True),
    (["--cell", "9,7.5,10,90,300,90", "--spacegroup", "P21"], True),
    (["--cell", "1e30,7.5,10,90,101,90", "--spacegroup", "P21"], True),
    (["--cell", "9;7.5;10;90;101;90", "--spacegroup", "P21"], True),
    (["--cell", _CELL, "--spacegroup", "P 7"], True),
    (["--cell", _CELL, "--spacegroup", ""], True),
    (["--cell", _CELL, "--spacegroup", "999"], True),
    (["--spacegroup", "P 1 21 1"], True),
    (["--cell", _CELL], True),
    (["--cell", _CELL, "--spacegroup", "P21", "--d-min", "50"], True),
    (["--cell", _CELL, "--spacegroup", "P21", "--d-min", "3", "--d-max", "2"], True),
    (["--cell", _CELL, "--spacegroup", "P 1"], False),
    (["--cell", _CELL, "--spacegroup", "C 1 2 1"], False),
)


SHAPE_NAMES = ("empty-mtz", "empty-hkl", "empty-cif", "empty-gz", "blank-hkl",
               "terminator-only-hkl", "bom-hkl", "bom-cif", "no-loop-cif", "two-blocks-cif",
               "zero-rows-mtz", "one-row-mtz", "all-nan-mtz", "unmerged-mtz", "sigma-zero-hkl",
               "only-absent-hkl")


@dataclass(frozen=True)
class Case:
    """One fuzz case: a family's corruption of one base with one seed (or an argument set)."""

    family: str
    base: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.family}-{self.base}-{self.seed:03d}"


@dataclass
class Built:
    """A case's files, the input among them, extra arguments and whether it must fail."""

    files: dict[str, bytes]
    input: str
    args: list[str] = field(default_factory=list)
    must_fail: bool = False
    what: str = ""
    codes: frozenset[int] = frozenset(EXIT_CODES)
    command: str = "pattersolve"  # or "phasematch": pattersolve-phasematch ref.mtz INPUT

    @property
    def old(self) -> dict[str, bytes]:
        """The older outputs in the folder (the command's output set)."""
        return OLD if self.command == "pattersolve" else OLD_PHASEMATCH


def _unmerged_mtz() -> bytes:
    """An unmerged MTZ (M/ISYM, BATCH; 1-3 observations of each reflection)."""
    hkl, f = _p21_data()
    rng = np.random.default_rng(3)
    rows = []
    for h, amp in zip(hkl.tolist(), np.abs(f), strict=True):
        for _ in range(int(rng.integers(1, 4))):
            inten = amp**2 * (1 + 0.05 * rng.standard_normal())
            rows.append([*h, 1 + 2 * int(rng.integers(2)), int(rng.integers(1, 30)), inten,
                         0.05 * abs(inten) + 0.1])
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = gemmi.SpaceGroup("P 1 21 1")
    mtz.set_cell_for_all(gemmi.UnitCell(*P21_CELL))
    mtz.add_dataset("unmerged")
    for label, kind in (("M/ISYM", "Y"), ("BATCH", "B"), ("I", "J"), ("SIGI", "Q")):
        mtz.add_column(label, kind)
    mtz.set_data(np.array(rows, dtype=np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        mtz.write_to_file(f"{tmp}/u.mtz")
        return Path(f"{tmp}/u.mtz").read_bytes()


def _small_mtz(n_rows: int, nan: bool = False) -> bytes:
    """The ``p1s`` data cut to ``n_rows`` reflections (amplitudes NaN with ``nan``)."""
    elements, xyz = synthetic.ala_ala()
    small = synthetic.simulate_fragment(elements, xyz, d_min=2.5)
    amp = np.full(n_rows, np.nan) if nan else np.abs(small.f[:n_rows])
    with tempfile.TemporaryDirectory() as tmp:
        return _mtz_bytes(Path(tmp), "cut", small.placement.cell, small.hkl[:n_rows],
                          [("FP", "F", amp), ("SIGFP", "Q", 0.02 * np.nan_to_num(amp) + 0.1)])


def _hkl_lines(pick: Callable[[list[int]], bool], sigma: str | None = None) -> bytes:
    """The HKLF 4 base keeping the records whose indices ``pick`` accepts (sigma replaced)."""
    lines, n = _lines(bases()["hkl"])
    out = [ln if sigma is None else ln[:20] + sigma.rjust(8) for ln in lines[:n]
           if pick([int(ln[0:4]), int(ln[4:8]), int(ln[8:12])])]
    return "\n".join([*out, *lines[n:]]).encode()


def shapes() -> dict[str, tuple[dict[str, bytes], bool]]:
    """Whole inputs of the wrong shape: ``name -> (files, must_fail)`` (the input is the
    file named ``data.*``; a ``.hkl`` takes its symmetry from ``data.ins``)."""
    b, ins = bases(), {"data.ins": INS.encode()}
    cif_head = b["cif"].split(b"loop_")[0]
    return {
        "empty-mtz": ({"data.mtz": b""}, True),
        "empty-hkl": ({"data.hkl": b"", **ins}, True),
        "empty-cif": ({"data.cif": b""}, True),
        "empty-gz": ({"data.hkl.gz": gzip.compress(b"", mtime=0), **ins}, True),
        "blank-hkl": ({"data.hkl": b"\n  \n\t\n", **ins}, True),
        "terminator-only-hkl": ({"data.hkl": b"   0   0   0    0.00    0.00\n", **ins}, True),
        "bom-hkl": ({"data.hkl": b"\xef\xbb\xbf" + b["hkl"], **ins}, False),
        "bom-cif": ({"data.cif": b"\xef\xbb\xbf" + b["cif"]}, False),
        "no-loop-cif": ({"data.cif": cif_head}, True),
        "two-blocks-cif": ({"data.cif": cif_head.replace(b"data_r0fzzsf", b"data_head")
                            + b"\n" + b["cif"]}, False),
        "zero-rows-mtz": ({"data.mtz": _small_mtz(0)}, True),
        "one-row-mtz": ({"data.mtz": _small_mtz(1)}, True),
        "all-nan-mtz": ({"data.mtz": _small_mtz(60, nan=True)}, True),
        "unmerged-mtz": ({"data.mtz": _unmerged_mtz()}, True),
        "sigma-zero-hkl": ({"data.hkl": _hkl_lines(lambda h: True, "0.00"), **ins}, True),
        "only-absent-hkl": ({"data.hkl": _hkl_lines(lambda h: h[0] == 0 and h[2] == 0), **ins},
                            True),
    }


def all_cases(slow: bool) -> list[Case]:
    """The fast cases, or the slow ones (further seeds of the same families, and the fast
    seeds that take minutes today: :data:`KNOWN_SLOW`)."""
    fast, more = [], []
    for fam in FAMILIES:
        for base in fam.bases:
            fast += [Case(fam.name, base, s) for s in range(fam.fast)]
            more += [Case(fam.name, base, s) for s in range(fam.fast, fam.fast + fam.slow)]
    fast += [Case("hkl-args", "hkl", i) for i in range(len(HKL_ARGS))]
    fast += [Case("shape", name, 0) for name in SHAPE_NAMES]
    if slow:
        return [c for c in fast if c.id in KNOWN_SLOW] + more
    return [c for c in fast if c.id not in KNOWN_SLOW]


def build(case: Case) -> Built:
    """The corrupted files of a case (deterministic: the seed and the names fix the draw)."""
    b = bases()
    if case.family == "shape":
        files, must_fail = shapes()[case.base]
        name = next(n for n in files if n.startswith("data.") and not n.endswith(".ins"))
        return Built(files, name, [], must_fail, case.base)
    if case.family == "hkl-args":
        args, must_fail = HKL_ARGS[case.seed]
        return Built({"data.hkl": b["hkl"]}, "data.hkl", list(args), must_fail, " ".join(args))
    fam = next(f for f in FAMILIES if f.name == case.family and case.base in f.bases)
    key = zlib.crc32(f"{case.family}/{case.base}".encode())
    rng = np.random.default_rng([key, case.seed])
    if case.family == "ins-edit":
        data, must_fail, what = fam.corrupt(rng, INS.encode())
        return Built({"data.hkl": b["hkl"], "data.ins": data}, "data.hkl", [], must_fail, what)
    data, must_fail, what = fam.corrupt(rng, b[case.base])
    if case.base in PHASEMATCH:
        return Built({"ref.mtz": b[case.base], "test.mtz": data}, "test.mtz", [], must_fail,
                     what, command="phasematch")
    if case.family.startswith("gz-"):
        name = {"hkl": "data.hkl.gz", "cif": "data.cif.gz"}.get(case.base, "data.mtz.gz")
        extra = {"data.ins": INS.encode()} if case.base == "hkl" else {}
        return Built({name: data, **extra}, name, [], must_fail, what)
    if case.base == "hkl":
        if case.seed % 2:
            return Built({"data.hkl": data}, "data.hkl", list(P21_ARGS), must_fail, what)
        return Built({"data.hkl": data, "data.ins": INS.encode()}, "data.hkl", [], must_fail,
                     what)
    if case.base == "cif":
        return Built({"data.cif": data}, "data.cif", [], must_fail, what)
    return Built({"data.mtz": data}, "data.mtz", [], must_fail, what)


# ---------------------------------------------------------------------------------------------
# running a case
# ---------------------------------------------------------------------------------------------
@contextmanager
def memory_guard(headroom: int = MEMORY_HEADROOM) -> Iterator[None]:
    """Cap the process's address space at its current size plus ``headroom`` (Linux only):
    a runaway allocation raises MemoryError instead of exhausting the machine."""
    try:
        status = Path("/proc/self/status").read_text()
        size = int(re.search(r"VmSize:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
    except (OSError, AttributeError):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + headroom if hard == resource.RLIM_INFINITY else min(size + headroom, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@dataclass(frozen=True)
class Fault:
    """The ``k``-th call of ``owner.name`` fails: an OSError (``errno``), a KeyboardInterrupt,
    or, for a writer, a half-written file and then the error gemmi raises on a full disk."""

    kind: str
    k: int

    @property
    def id(self) -> str:
        return f"out-{self.kind}-{self.k}"


FAULT_TARGETS: dict[str, tuple[object, str]] = {
    "replace": (os, "replace"), "interrupt": (os, "replace"), "chmod": (os, "chmod"),
    "mkstemp": (tempfile, "mkstemp"), "map-write": (gemmi.Ccp4Map, "write_ccp4_map"),
    "mtz-write": (gemmi.Mtz, "write_to_file"), "json-write": (Path, "write_text"),
}
#: Every fault, with ``k`` up to the calls a run with three outputs makes (6 renames in a
#: commit that replaces three files; 3 temporary files; 1 of each writer).
FAULTS = tuple(Fault(kind, k) for kind, n in (("replace", 6), ("interrupt", 6), ("chmod", 3),
                                              ("mkstemp", 3), ("map-write", 1),
                                              ("mtz-write", 1), ("json-write", 1))
               for k in range(1, n + 1))


def _failing(fault: Fault, original: Callable) -> Callable:
    calls = [0]

    def wrapper(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] != fault.k:
            return original(*args, **kwargs)
        if fault.kind == "interrupt":
            raise KeyboardInterrupt
        if fault.kind.endswith("-write"):
            original(*args, **kwargs)
            target = Path(str(args[1]))
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
            raise (OSError(errno.ENOSPC, "No space left on device") if fault.kind == "json-write"
                   else RuntimeError(f"Error when writing {target}: No space left on device"))
        raise OSError(errno.ENOSPC if fault.kind != "chmod" else errno.EPERM,
                      os.strerror(errno.ENOSPC if fault.kind != "chmod" else errno.EPERM))

    return wrapper


@contextmanager
def inject(fault: Fault | None) -> Iterator[None]:
    """Make the ``fault.k``-th call of the fault's target fail while the block runs."""
    if fault is None:
        yield
        return
    owner, name = FAULT_TARGETS[fault.kind]
    original = getattr(owner, name)
    setattr(owner, name, _failing(fault, original))
    try:
        yield
    finally:
        setattr(owner, name, original)


class CaseTimeout(BaseException):
    """Raised by :func:`hang_guard` in a case that runs too long (a BaseException, so that no
    ``except Exception`` in the code under test swallows it)."""


@contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the main thread after ``seconds``."""
    def _expire(signum: int, frame: object) -> None:
        raise CaseTimeout(f"still running after {seconds:g} s (hang guard)")

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    """What a run did: exit code (None: an exception escaped), output, crash text."""

    code: int | None
    out: str
    err: str
    crash: str = ""


def execute(built: Built, folder: Path, capsys: pytest.CaptureFixture[str],
            guard_s: float = HANG_GUARD_S, fault: Fault | None = None) -> Outcome:
    """Write the case and the old outputs into ``folder`` and run ``pattersolve`` there
    (with ``fault`` injected into the output writing, if given)."""
    for name, data in {**built.files, **built.old}.items():
        (folder / name).write_bytes(data)
    command: Callable[[list[str]], object] = main
    args = [str(folder / built.input), "-o", str(folder / "out.map"), "--mtz-out",
            str(folder / "out.mtz"), "--json", str(folder / "out.json"), "--no-res",
            "--overwrite", *SOLVE, *built.args]
    if built.command == "phasematch":
        command = phasematch_main
        args = [str(folder / "ref.mtz"), str(folder / built.input), "--json",
                str(folder / "out.json"), "--overwrite", *built.args]
    code, crash = None, ""
    capsys.readouterr()
    with memory_guard(), hang_guard(guard_s), inject(fault):
        try:
            command(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except CaseTimeout as exc:
            crash = f"{exc}:\n" + "".join(traceback.format_exception(exc)[-4:-1])
        except Exception as exc:  # noqa: BLE001 - the finding: an exception escaped main()
            crash = "".join(traceback.format_exception(exc)[-6:])
    out, err = capsys.readouterr()
    return Outcome(code, out, err, crash)


def _output_problems(built: Built, folder: Path) -> list[str]:
    """Problems of the outputs of a successful run (they must be new and readable)."""
    problems = []
    for name, data in built.old.items():
        if not (folder / name).is_file() or (folder / name).read_bytes() == data:
            problems.append(f"exit 0 but {name} not written")
            return problems
    if built.command == "phasematch":
        result = json.loads((folder / "out.json").read_text())["result"]
        if not np.isfinite(result["weighted_error"]):
            problems.append("exit 0 but the phase error is not a number")
        return problems
    try:
        grid = gemmi.read_ccp4_map(str(folder / "out.map")).grid
        mtz = gemmi.read_mtz_file(str(folder / "out.mtz"))
        summary = json.loads((folder / "out.json").read_text())
    except (RuntimeError, ValueError, OSError) as exc:
        return [f"exit 0 but an output is unreadable ({exc})"]
    if not np.isfinite(np.asarray(grid)).all() or not grid.unit_cell.volume > 0:
        problems.append("exit 0 but the map holds non-finite values or has no volume")
    if np.isinf(np.asarray(mtz.array)).any():  # NaN is MTZ's missing number; inf is not
        problems.append("exit 0 but the MTZ holds infinite values")
    if summary.get("input", {}).get("reflections_used", 0) < 1:
        problems.append("exit 0 but the summary reports no reflections used")
    return problems


def problems_of(built: Built, run: Outcome, folder: Path) -> list[str]:
    """Every broken promise of one run (empty: the case passes)."""
    problems = []
    failed = run.code != 0
    if run.crash:
        problems.append("exception escaped main():\n" + run.crash)
    elif run.code not in built.codes | {0}:
        problems.append(f"exit code {run.code} not in {sorted(built.codes | {0})}")
    if "Traceback" in run.out + run.err:
        problems.append("a traceback was printed")
    errors = [ln for ln in run.err.splitlines() if re.search(r"\berror:", ln, re.IGNORECASE)]
    if run.code == INTERRUPTED:
        if errors or "interrupted" not in run.err:
            problems.append("an interrupted run must say 'interrupted' (and no 'error:')")
    elif failed and not run.crash and len(errors) != 1:
        problems.append(f"{len(errors)} 'error:' lines on failure")
    expected = set(built.files) | set(built.old)
    present = {p.name for p in folder.iterdir()}
    if present != expected:
        problems.append(f"files left: {sorted(present - expected)}, "
                        f"missing: {sorted(expected - present)}")
    if failed:
        changed = [n for n, d in built.old.items()
                   if not (folder / n).is_file() or (folder / n).read_bytes() != d]
        if changed:
            problems.append(f"old outputs changed by a failed run: {changed}")
    elif built.must_fail:
        problems.append("exit 0 on input that cannot be usable")
    else:
        problems += _output_problems(built, folder)
    return problems


# ---------------------------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------------------------
#: Cases that fail today, by id: the reason (the finding). ``xfail(strict=True)``: remove the
#: entry once the case passes.
KNOWN: dict[str, str] = {}
#: Known failures that run for minutes (or longer) today: slow tests only, with a short hang
#: guard (:data:`KNOWN_HANG_GUARD_S`) so that they fail quickly until fixed.
KNOWN_SLOW: dict[str, str] = {}


def _params(cases: list[Case]) -> list:
    known = KNOWN | KNOWN_SLOW
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=known[c.id])]
                         if c.id in known else []) for c in cases]


def _check(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = build(case)
    guard = KNOWN_HANG_GUARD_S if case.id in KNOWN_SLOW else HANG_GUARD_S
    run = execute(built, tmp_path, capsys, guard)
    problems = problems_of(built, run, tmp_path)
    assert not problems, (f"{case.id} ({built.what}; args {built.args}): exit {run.code}\n"
                          + "\n".join(problems) + "\n--- stderr ---\n" + run.err[-3000:])


@pytest.mark.parametrize("case", _params(all_cases(slow=False)))
def test_fuzz(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check(case, tmp_path, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("case", _params(all_cases(slow=True)))
def test_fuzz_slow(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check(case, tmp_path, capsys)


@pytest.mark.parametrize("fault", [
    pytest.param(f, id=f.id, marks=[pytest.mark.xfail(strict=True, reason=KNOWN[f.id])]
                 if f.id in KNOWN else []) for f in FAULTS])
def test_fuzz_output_fault(fault: Fault, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """Good data, and one failure while the outputs are written (a full disk, a rename or
    chmod refused, Ctrl-C): exit 9 (130 for Ctrl-C) and the older outputs as they were, or,
    where the fault is never reached, a complete new set."""
    codes = frozenset({INTERRUPTED} if fault.kind == "interrupt" else {int(ExitCode.OUTPUT)})
    built = Built({"data.mtz": bases()["p1s"]}, "data.mtz", codes=codes, what=fault.id)
    run = execute(built, tmp_path, capsys, fault=fault)
    problems = problems_of(built, run, tmp_path)
    assert not problems, f"{fault.id}: exit {run.code}\n" + "\n".join(problems) + run.err[-2000:]


def test_bases_are_usable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The uncorrupted bases solve (exit 0): the harness's own check, and the reason a
    corruption's failure is the corruption's."""
    for name in ("p1s", "p21i", "hkl", "cif"):
        folder = tmp_path / name
        folder.mkdir()
        suffix = {"hkl": ".hkl", "cif": ".cif"}.get(name, ".mtz")
        files = {f"data{suffix}": bases()[name]}
        args = list(P21_ARGS) if name == "hkl" else []
        built = Built(files, f"data{suffix}", args)
        run = execute(built, folder, capsys)
        assert run.code == 0 and not problems_of(built, run, folder), run.err
    built = Built({"data.hkl": bases()["hkl"], "data.ins": INS.encode()}, "data.hkl")
    (tmp_path / "ins").mkdir()
    assert execute(built, tmp_path / "ins", capsys).code == 0


def test_corruptions_are_deterministic() -> None:
    """The same case gives the same bytes (the ids of known failures stay meaningful)."""
    for case in all_cases(slow=False)[::17]:
        assert build(case).files == build(case).files
