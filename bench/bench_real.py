"""Real crystals: the ``pattersolve`` command on every measured data set, beside smtbx.

Every data set in ``../shared/data/real`` and ``../shared/data/real_small`` is phased by the
default command (``pattersolve DATA --json --d-min D --seed S``, a subprocess, with the cell
and space group taken from the .ins/.res/.cif beside the data or, where the model's name does
not match the data's, given with ``--cell``/``--spacegroup`` from the model) at three
resolution cuts: the data's own resolution or 0.8 A where the data go finer, 1.2 A and 1.6 A
(a cut finer than the data is not run). Each run is scored by
:func:`pattersolve.phasematch.match_phases` (weighted mean phase error after the origin and
hand search of the output's space group) against structure factors computed with gemmi from
the refined model's own atoms, occupancies and displacement parameters (hydrogens included;
X-ray form factors, electron form factors for the 3D-ED set; no anomalous terms).

The peer: smtbx charge flipping (cctbx), run by ``bench/smtbx_driver.py`` in its own virtual
environment (``--smtbx-python``, default ``bench/.venv-smtbx/bin/python``) with Olex2's
settings, scored the same way; its own "solved" flag is recorded, not used.

CPU seconds are ``getrusage(RUSAGE_CHILDREN)`` of each subprocess (start-up included), one
process at a time, OMP/MKL/OpenBLAS threads 1.

    python bench/bench_real.py                 # everything, writes bench/results/real.{json,txt}
    python bench/bench_real.py --quick         # native cut, 1 seed, three small sets, no files
    python bench/bench_real.py --sets tonto_ylid,sucrose_P21_smallmol --cuts native,1.2 \
        --seeds 3 --no-smtbx --json out.json --txt out.txt
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
SMTBX_PYTHON = REPO / "bench" / ".venv-smtbx" / "bin" / "python"
DRIVER = REPO / "bench" / "smtbx_driver.py"
CUTS = ("native", "1.2", "1.6")
NATIVE_FLOOR = 0.8  # the "native" cut: the data's own resolution, or 0.8 A if finer
SOLVED_DEG = 30.0
SOLVED_LOOSE_DEG = 45.0
QUICK_SETS = ("tonto_glyala_100K", "tonto_ylid", "shx_2240189")
RUN_TIMEOUT_S = 1800
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "OMP_WAIT_POLICY": "PASSIVE"}
# the peptides and the two data sets of ../shared/data/real: (folder, data file, model file)
REAL_SETS = (
    ("sucrose_P21_smallmol", "sucrose.hkl", "sucrose.cif"),
    ("epoxide_P21n_smallmol", "epoxide.hkl", "epoxide.cif"),
    ("5e5z_LVHSSN_P21", "5e5z.mtz", "5e5z.pdb"),
    ("1yjp_GNNQQNY_P21", "1yjp-sf.cif", "1yjp.pdb"),
)


@dataclass
class DataSet:
    """One measured data set and its refined model."""

    name: str
    data: Path
    model: Path
    give_symmetry: bool  # the model's file name differs from the data's: --cell/--spacegroup
    electron: bool = False


@dataclass
class Model:
    """The refined model: symmetry and a structure-factor function (gemmi, direct sums)."""

    cell: gemmi.UnitCell
    spacegroup: gemmi.SpaceGroup
    form_factors: str
    sf: Callable[[np.ndarray], np.ndarray]
    cache: dict[tuple[int, int, int], complex] = field(default_factory=dict)

    def f(self, hkl: np.ndarray) -> np.ndarray:
        """Structure factors on ``hkl`` (cached by index)."""
        keys = [tuple(h) for h in np.asarray(hkl, dtype=np.int64).tolist()]
        missing = [k for k in dict.fromkeys(keys) if k not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.sf(np.array(missing)), strict=True))
        return np.array([self.cache[k] for k in keys], dtype=np.complex128)


# ---------------------------------------------------------------------------------------------
# data sets and models
# ---------------------------------------------------------------------------------------------
def discover_sets(shared: Path = SHARED) -> list[DataSet]:
    """Every data set of ``real`` and ``real_small`` (model.cif preferred over model.res)."""
    sets = []
    for folder, data, model in REAL_SETS:
        if (shared / "real" / folder / data).is_file():
            same_stem = Path(data).stem == Path(model).stem
            sets.append(DataSet(folder, shared / "real" / folder / data,
                                shared / "real" / folder / model, give_symmetry=False
                                if same_stem or not data.endswith(".hkl") else True))
    small = shared / "real_small"
    for folder in sorted(p for p in small.iterdir() if p.is_dir()) if small.is_dir() else []:
        model = folder / "model.cif"
        if not model.is_file():
            model = folder / "model.res"
        if (folder / "data.hkl").is_file() and model.is_file():
            sets.append(DataSet(folder.name, folder / "data.hkl", model, give_symmetry=True,
                                electron=_wavelength(folder) < 0.1))
    return sets


def _wavelength(folder: Path) -> float:
    """The model's wavelength (the .res CELL card, else the CIF's), 0.71 A if neither says."""
    res = folder / "model.res"
    if res.is_file():
        for line in res.read_text(errors="replace").splitlines():
            if line.upper().startswith("CELL"):
                return float(line.split()[1])
    if (folder / "model.cif").is_file():
        lam = gemmi.read_small_structure(str(folder / "model.cif")).wavelength
        if lam > 0:
            return lam
    return 0.71


SHELX_COMMANDS = frozenset(
    "TITL CELL ZERR LATT SYMM SFAC DISP UNIT LAUE REM MORE TIME END HKLF OMIT SHEL BASF TWIN "
    "EXTI SWAT HOPE MERG SPEC RESI MOVE ANIS AFIX HFIX FRAG FEND EXYZ EADP EQIV CONN PART "
    "BIND FREE DFIX DANG BUMP SAME SADI CHIV FLAT DELU SIMU DEFS ISOR NCSY SUMP L.S. CGLS "
    "BLOC DAMP STIR WGHT FVAR BOND CONF MPLA RTAB HTAB LIST ACTA SIZE TEMP WPDB FMAP GRID "
    "PLAN MOLE NEUT ABIN ANSC ANSR XNPD WIGL RIGU PRIG SHEL STIR BEDE LONE NOTE".split())


def _fv(value: float, fvar: list[float]) -> float:
    """Decode a SHELX parameter ``10 m + p`` (fixed, or tied to a free variable)."""
    if abs(value) < 5:
        return value
    m = int(round(value / 10))
    p = value - 10 * m
    if abs(m) == 1:
        return p
    return p * fvar[m - 1] if m > 1 else p * (fvar[-m - 1] - 1)


def _res_cards(path: Path) -> list[list[str]]:
    """Cards of a .res/.ins file up to HKLF/END, continuation lines (``=``) joined."""
    cards: list[list[str]] = []
    joining = False
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.split("!")[0].rstrip()
        if joining and cards:
            cards[-1] += line.replace("=", " ").split()
        elif line.strip():
            cards.append(line.replace("=", " ").split())
        joining = line.endswith("=")
        if cards and cards[-1][0].upper() in ("HKLF", "END"):
            break
    return cards


def _ueq(cell: gemmi.UnitCell, u: gemmi.SMat33d) -> float:
    """Equivalent isotropic U of an anisotropic (CIF-convention) tensor."""
    rec = cell.reciprocal()
    n = np.diag([rec.a, rec.b, rec.c])
    a = np.array(cell.orth.mat.tolist())
    uf = np.array([[u.u11, u.u12, u.u13], [u.u12, u.u22, u.u23], [u.u13, u.u23, u.u33]])
    return float(np.trace(a @ n @ uf @ n @ a.T) / 3)


def read_res(path: Path) -> gemmi.SmallStructure:
    """A SHELX .res/.ins model as a gemmi SmallStructure (gemmi reads CIF, not .res).

    Occupancies stay SHELX's (site symmetry included, as gemmi's direct sums expect);
    negative Uiso (riding atoms) becomes that multiple of the previous non-H atom's Ueq.
    """
    ss = gemmi.SmallStructure()
    cards = _res_cards(path)
    symm, latt, sfac, fvar = ["x,y,z"], 1, [], []
    for card in cards:
        key = card[0].upper()
        if key == "CELL":
            ss.cell = gemmi.UnitCell(*[float(v) for v in card[2:8]])
        elif key == "LATT":
            latt = int(card[1])
        elif key == "SYMM":
            symm.append("".join(card[1:]))
        elif key == "SFAC":
            numeric = len(card) > 2 and re.match(r"^-?[\d.]+$", card[2])
            sfac += [card[1]] if numeric else card[1:]
        elif key == "FVAR":
            fvar += [float(v) for v in card[1:]]
    ss.symops = _symops(symm, latt)
    ss.determine_and_set_spacegroup("S")
    if ss.spacegroup is None:
        raise ValueError(f"{path}: no space group for SYMM {symm[1:]} LATT {latt}")
    parent_ueq = 0.05
    for card in cards:
        site = _res_site(card, sfac, fvar, ss.cell, parent_ueq)
        if site is not None:
            ss.add_site(site)
            if not site.element.is_hydrogen:
                parent_ueq = site.u_iso
    ss.setup_cell_images()
    return ss


CENTRING = {1: [], 2: ["1/2,1/2,1/2"], 3: ["2/3,1/3,1/3", "1/3,2/3,2/3"],
            4: ["0,1/2,1/2", "1/2,0,1/2", "1/2,1/2,0"], 5: ["0,1/2,1/2"], 6: ["1/2,0,1/2"],
            7: ["1/2,1/2,0"]}


def _symops(symm: list[str], latt: int) -> list[str]:
    """All operations (centring and inversion included) from SHELX SYMM cards and LATT."""
    ops = [gemmi.Op(s.lower()) for s in symm]
    if latt > 0:
        ops += [gemmi.Op("-x,-y,-z") * op for op in ops]
    out = list(ops)
    for t in CENTRING[abs(latt)]:
        tx, ty, tz = t.split(",")
        shift = gemmi.Op(f"x+{tx},y+{ty},z+{tz}")
        out += [shift * op for op in ops]
    return [op.triplet() for op in out]


def _res_site(card: list[str], sfac: list[str], fvar: list[float], cell: gemmi.UnitCell,
              parent_ueq: float) -> gemmi.SmallStructure.Site | None:
    """An atom card (name, SFAC number, x, y, z, sof, U...) as a Site, or None."""
    if (card[0].upper() in SHELX_COMMANDS or len(card) < 5 or not card[1].isdigit()
            or not 1 <= int(card[1]) <= len(sfac) or re.match(r"^Q\d+$", card[0], re.I)):
        return None
    try:
        nums = [float(v) for v in card[2:]]
    except ValueError:
        return None
    site = gemmi.SmallStructure.Site()
    site.label = card[0]
    site.element = gemmi.Element(sfac[int(card[1]) - 1])
    site.fract = gemmi.Fractional(*[_fv(v, fvar) % 1.0 for v in nums[:3]])
    site.occ = _fv(nums[3], fvar) if len(nums) > 3 else 1.0
    u = [_fv(v, fvar) for v in nums[4:]] or [0.05]
    if len(u) >= 6:  # SHELX order U11 U22 U33 U23 U13 U12; gemmi u11 u22 u33 u12 u13 u23
        site.aniso = gemmi.SMat33d(u[0], u[1], u[2], u[5], u[4], u[3])
        site.u_iso = _ueq(cell, site.aniso)
    else:
        site.u_iso = -u[0] * parent_ueq if u[0] < 0 else u[0]
    return site


def load_model(ds: DataSet) -> Model:
    """The refined model of a data set with its structure-factor function."""
    table = "electron (gemmi StructureFactorCalculatorE)" if ds.electron \
        else "X-ray (gemmi StructureFactorCalculatorX)"
    calc_cls = gemmi.StructureFactorCalculatorE if ds.electron else gemmi.StructureFactorCalculatorX
    if ds.model.suffix == ".pdb":
        st = gemmi.read_structure(str(ds.model))
        st.setup_cell_images()
        sg = gemmi.find_spacegroup_by_name(st.spacegroup_hm)
        calc = calc_cls(st.cell)
        return Model(st.cell, sg, table, lambda hkl: np.array(
            [calc.calculate_sf_from_model(st[0], list(map(int, h))) for h in hkl]))
    if ds.model.suffix == ".res":
        ss = read_res(ds.model)
    else:
        ss = gemmi.read_small_structure(str(ds.model))
        ss.change_occupancies_to_crystallographic()
        ss.setup_cell_images()
    calc = calc_cls(ss.cell)
    return Model(ss.cell, ss.spacegroup, table, lambda hkl: np.array(
        [calc.calculate_sf_from_small_structure(ss, list(map(int, h))) for h in hkl]))


# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------
def native_d_min(ds: DataSet, model: Model) -> float:
    """The data's own resolution (the reader the command uses)."""
    from pattersolve.reflections import read_reflections

    return float(read_reflections(ds.data, **symmetry_options(ds, model, as_kwargs=True)).d_min)


def symmetry_options(ds: DataSet, model: Model, as_kwargs: bool = False) -> Any:
    """``--cell``/``--spacegroup`` from the model where the command cannot find them itself."""
    if not ds.give_symmetry:
        return {} if as_kwargs else []
    c = model.cell
    cell = (c.a, c.b, c.c, c.alpha, c.beta, c.gamma)
    if as_kwargs:
        return {"cell": cell, "spacegroup": model.spacegroup.xhm()}
    return ["--cell", ",".join(f"{v:g}" for v in cell), "--spacegroup", model.spacegroup.xhm()]


def cut_d_min(cut: str, native: float) -> float | None:
    """The d_min of a cut, or None where the cut is finer than the data."""
    if cut == "native":
        return max(native, NATIVE_FLOOR)
    d = float(cut)
    return d if d >= native - 1e-3 else None


def child_cpu() -> float:
    """User + system CPU seconds of the finished children so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_child(cmd: list[str]) -> tuple[int, float, str]:
    """Run one command niced, one thread; (exit code, CPU seconds, last stderr line)."""
    env = {**os.environ, **ONE_THREAD}
    before = child_cpu()
    try:
        proc = subprocess.run(["nice", "-n", "15", *cmd], capture_output=True, text=True,
                              env=env, timeout=RUN_TIMEOUT_S, check=False)
        rc, err = proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        rc, err = -1, f"timed out after {RUN_TIMEOUT_S} s"
    return rc, child_cpu() - before, err


def tree_state() -> str:
    """The repository's commit, ``+dirty`` where pattersolve/ has uncommitted changes."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True,
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", "pattersolve") else "")


def pattersolve_command() -> list[str]:
    """The installed console script beside this Python, else ``python -m``-style call."""
    script = Path(sys.executable).with_name("pattersolve")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from pattersolve.cli import main; main()"]


def run_pattersolve(ds: DataSet, model: Model, d_min: float, seed: int, tmp: Path) -> dict:
    """The default command on one data set at one cut and seed, scored."""
    from pattersolve.phasematch import read_map_coefficients

    out_map, out_json = tmp / "out.map", tmp / "out.json"
    cmd = [*pattersolve_command(), str(ds.data), "-o", str(out_map), "--json", str(out_json),
           "--d-min", f"{d_min:g}", "--seed", str(seed), "--overwrite", "-q",
           *symmetry_options(ds, model)]
    tree = tree_state()
    rc, cpu, err = run_child(cmd)
    row: dict[str, Any] = {"program": "pattersolve", "rc": rc, "cpu_s": round(cpu, 2),
                           "tree": tree,
                           "command": " ".join(["pattersolve", *cmd[len(pattersolve_command()):]])}
    if rc != 0:
        return {**row, "error": err}
    summary = json.loads(out_json.read_text())
    _, sg, hkl, f = read_map_coefficients(out_map.with_suffix(".mtz"))
    row.update(method=summary["method"], confident=summary["confident"],
               spacegroup_out=summary["spacegroup_out"], seconds=summary["seconds"],
               warnings=summary["warnings"])
    return {**row, **score(model, hkl, f, sg), "_hkl": hkl}


def run_smtbx(ds: DataSet, model: Model, d_min: float, seed: int, tmp: Path,
              python: Path) -> dict:
    """smtbx charge flipping (bench/smtbx_driver.py in its own environment), scored."""
    from pattersolve.phasematch import expand_to_p1

    out = tmp / "smtbx.json"
    cmd = [str(python), str(DRIVER), str(ds.data), "--d-min", f"{d_min:g}",
           "--seed", str(seed + 1), "--out", str(out)]
    if ds.data.suffix == ".hkl":
        c = model.cell
        cmd += ["--cell", ",".join(f"{v:g}" for v in (c.a, c.b, c.c, c.alpha, c.beta, c.gamma)),
                "--spacegroup", f"Hall: {model.spacegroup.hall}"]
    rc, cpu, err = run_child(cmd)
    row: dict[str, Any] = {"program": "smtbx", "rc": rc, "cpu_s": round(cpu, 2)}
    if rc != 0:
        return {**row, "error": err}
    res = json.loads(out.read_text())
    sg = gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(res["spacegroup_hall"]))
    f = np.array(res["amplitude"]) * np.exp(1j * np.radians(res["phase_deg"]))
    hkl, f = expand_to_p1(np.array(res["hkl"], dtype=np.int64), f, sg)
    row.update({k: res[k] for k in ("symmetrised", "had_phase_transition", "cc_peak_height",
                                    "phase_transition_iterations", "cpu_solve")},
               spacegroup_out=sg.xhm())
    return {**row, **score(model, hkl, f, sg)}


_MASKS: dict[tuple, np.ndarray] = {}


def memoise_origin_masks() -> None:
    """Cache :func:`pattersolve.phasematch.permitted_shift_mask` by grid, group and hand.

    The mask depends only on the search grid, the space group and the hand, yet
    ``match_phases`` recomputes it on every call (about a minute per call for R-3c on a
    144 x 144 x 96 grid). The cache changes no result, only the benchmark's own time.
    """
    from pattersolve import phasematch

    original = getattr(phasematch.permitted_shift_mask, "__wrapped__",
                       phasematch.permitted_shift_mask)

    def cached(points: np.ndarray, spacegroup: Any, hand: int = 1, tol: float = 1e-6):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        sg = phasematch._as_spacegroup(spacegroup)
        key = (len(pts), tuple(pts[-1]), tuple(pts[1]), sg.hall, hand, tol)
        if key not in _MASKS:
            _MASKS[key] = original(pts, sg, hand=hand, tol=tol)
        return _MASKS[key]

    cached.__wrapped__ = original  # type: ignore[attr-defined]
    phasematch.permitted_shift_mask = cached


def score(model: Model, hkl: np.ndarray, f: np.ndarray, sg: gemmi.SpaceGroup) -> dict:
    """Weighted phase error against the model after the origin/hand search of ``sg``."""
    from pattersolve.phasematch import match_phases

    m = match_phases(hkl, model.f(hkl), f, model.cell, sg)
    return {"error_w": round(m.weighted_error, 2), "error_unw": round(m.unweighted_error, 2),
            "map_cc": round(m.map_cc, 4), "inverted": m.inverted, "n_scored": m.n,
            "search_group": m.spacegroup}


def random_floor(model: Model, hkl: np.ndarray, sg: gemmi.SpaceGroup) -> float:
    """Weighted error of random phases through the same search (median of 3 trials)."""
    from pattersolve.phasematch import random_phase_floor

    return round(random_phase_floor(hkl, model.f(hkl), model.cell, 0, sg, trials=3)
                 .weighted_error, 1)


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------
def run_all(sets: list[DataSet], cuts: list[str], seeds: int, smtbx: Path | None,
            rows: list[dict], save: Callable[[], None], log: Callable[[str], None]) -> None:
    """Every seed (outer loop: a partial run holds whole seeds over all cuts), cut and set."""
    done = {(r["set"], r["cut"], r["seed"], r["program"]) for r in rows}
    models: dict[str, tuple[Model, float]] = {}
    progs = ["pattersolve"] + (["smtbx"] if smtbx else [])
    for seed in range(seeds):
        for cut in cuts:
            for ds in sets:
                if ds.name not in models:
                    model = load_model(ds)
                    models[ds.name] = (model, native_d_min(ds, model))
                model, native = models[ds.name]
                d_min = cut_d_min(cut, native)
                if d_min is None:
                    if seed == 0:
                        log(f"{ds.name}: cut {cut} A is finer than the data ({native:.2f} A):"
                            " not run")
                    continue
                base = {"set": ds.name, "cut": cut, "d_min": round(d_min, 3),
                        "data_d_min": round(native, 3), "form_factors": model.form_factors}
                for prog in progs:
                    if (ds.name, cut, seed, prog) in done:
                        continue
                    row = run_one(prog, ds, model, d_min, seed, smtbx, base, rows)
                    rows.append(row)
                    save()
                    log(f"{cut:>6} {ds.name:24s} seed {seed} {prog:11s} err "
                        f"{row.get('error_w', float('nan')):5.1f} cpu {row['cpu_s']:7.1f} s"
                        f"{'  ' + row['error'] if 'error' in row else ''}")


def run_one(prog: str, ds: DataSet, model: Model, d_min: float, seed: int,
            smtbx: Path | None, base: dict, rows: list[dict]) -> dict:
    """One run in a scratch folder; the random floor is added with the set's first run."""
    with tempfile.TemporaryDirectory(prefix="bench_real_") as tmp:
        if prog == "pattersolve":
            row = run_pattersolve(ds, model, d_min, seed, Path(tmp))
        else:
            assert smtbx is not None
            row = run_smtbx(ds, model, d_min, seed, Path(tmp), smtbx)
    hkl = row.pop("_hkl", None)
    has_floor = any(r["set"] == base["set"] and r["cut"] == base["cut"] and "floor" in r
                    for r in rows)
    if hkl is not None and not has_floor:
        row["floor"] = random_floor(model, hkl, model.spacegroup)
    return {**base, "seed": seed, **row}


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def _solved(row: dict, limit: float = SOLVED_DEG) -> bool:
    return row.get("error_w") is not None and row["error_w"] < limit


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "-"


def summary_table(rows: list[dict]) -> list[str]:
    """Per program: runs, solved (< 30 and < 45 deg), median error, CPU."""
    out = ["| program | sets | runs | solved < 30 deg | solved < 45 deg | median error (deg) "
           "| failed runs | median CPU s/run | total CPU s |", "|---" * 9 + "|"]
    for prog in dict.fromkeys(r["program"] for r in rows):
        rs = [r for r in rows if r["program"] == prog]
        n = len(rs)
        s30, s45 = sum(map(_solved, rs)), sum(_solved(r, SOLVED_LOOSE_DEG) for r in rs)
        out.append(
            f"| {prog} | {len({r['set'] for r in rs})} | {n} | {s30}/{n} ({s30 / n:.2f}) | "
            f"{s45}/{n} ({s45 / n:.2f}) | {_median([r['error_w'] for r in rs if 'error_w' in r])}"
            f" | {sum('error' in r for r in rs)} | {_median([r['cpu_s'] for r in rs])} | "
            f"{sum(r['cpu_s'] for r in rs):.0f} |")
    return out


def confidence_table(rows: list[dict]) -> list[str]:
    """pattersolve's ``confident``, and smtbx's own flag, against solved (< 30 deg)."""
    out = ["| claim | solved (< 30 deg) | wrong (>= 30 deg) |", "|---|---|---|"]
    claims = (("pattersolve", "confident", ("pattersolve: confident", "pattersolve: not "
               "confident", "pattersolve: not assessed (None)")),
              ("smtbx", "symmetrised", ("smtbx: symmetrised solution found (its own flag)",
                                        "smtbx: none found", "")))
    for prog, key, labels in claims:
        rs = [r for r in rows if r["program"] == prog and "error" not in r]
        for label, value in zip(labels, (True, False, None), strict=True):
            sel = [r for r in rs if r.get(key) is value]
            if rs and (sel or value is not None):
                out.append(f"| {label} | {sum(map(_solved, sel))} | "
                           f"{sum(not _solved(r) for r in sel)} |")
    return out


def per_set_table(rows: list[dict]) -> list[str]:
    """Per data set: both programs' solved counts, median errors and CPU, and the ratio."""
    out = ["| data set | d_min (A) | method (auto) | random floor (deg) | pattersolve solved "
           "| error (deg) | CPU s | smtbx solved | error (deg) | CPU s | CPU smtbx/pattersolve |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == name]
        cells = []
        cpu = {}
        for prog in ("pattersolve", "smtbx"):
            p = [r for r in rs if r["program"] == prog]
            cpu[prog] = statistics.median([r["cpu_s"] for r in p]) if p else None
            cells.append(f"{sum(map(_solved, p))}/{len(p)} | "
                         f"{_median([r['error_w'] for r in p if 'error_w' in r])} | "
                         f"{_median([r['cpu_s'] for r in p])}" if p else "- | - | -")
        methods = "/".join(sorted({r.get("method", "failed") for r in rs
                                   if r["program"] == "pattersolve"}))
        floor = next((r["floor"] for r in rs if "floor" in r), None)
        ratio = (f"{cpu['smtbx'] / cpu['pattersolve']:.2f}"
                 if cpu.get("smtbx") and cpu.get("pattersolve") else "-")
        out.append(f"| {name} | {rs[0]['d_min']:.2f} | {methods} | "
                   f"{floor if floor is not None else '-'} | {cells[0]} | {cells[1]} | {ratio} |")
    return out


def tables(rows: list[dict], cuts: list[str]) -> str:
    """All tables, one block per cut."""
    blocks = []
    for cut in cuts:
        rs = [r for r in rows if r["cut"] == cut]
        if not rs:
            continue
        title = ("the data's own resolution, 0.8 A where finer" if cut == "native"
                 else f"{cut} A")
        blocks.append("\n".join([f"### Cut: {title}", "", *summary_table(rs), "",
                                 *confidence_table(rs), "", *per_set_table(rs)]))
    return "\n\n".join(blocks) + "\n"


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def machine() -> str:
    """nproc, CPU model, Python, date."""
    model = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                      if ln.startswith("Model name")), model)
    except OSError:
        pass
    return (f"machine: {os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
            f"one thread per run; date: {dt.datetime.now().isoformat(timespec='minutes')}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"native cut, 1 seed, sets {','.join(QUICK_SETS)}; no files by default")
    ap.add_argument("--seeds", type=int, help="seeds per set and cut (default 3; 1 with --quick)")
    ap.add_argument("--cuts", help=f"comma-separated from {','.join(CUTS)} (default all)")
    ap.add_argument("--sets", help="comma-separated folder names (default all)")
    ap.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder")
    ap.add_argument("--smtbx-python", type=Path, default=SMTBX_PYTHON,
                    help="Python of a virtual environment with cctbx-base")
    ap.add_argument("--no-smtbx", action="store_true", help="pattersolve only")
    ap.add_argument("--json", type=Path, help="raw rows (default bench/results/real.json)")
    ap.add_argument("--txt", type=Path, help="tables (default bench/results/real.txt)")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --json")
    ap.add_argument("--report", action="store_true",
                    help="only tabulate the rows already in --json (no runs)")
    args = ap.parse_args(argv)
    if not args.quick:
        args.json = args.json or RESULTS / "real.json"
        args.txt = args.txt or RESULTS / "real.txt"
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.cuts = args.cuts.split(",") if args.cuts else (["native"] if args.quick else list(CUTS))
    if bad := [c for c in args.cuts if c not in CUTS]:
        ap.error(f"unknown cut(s) {bad}; choose from {CUTS}")
    return args


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; print and return the tables."""
    args = parse_args(argv)
    memoise_origin_masks()
    sets = discover_sets(args.shared)
    if not sets:
        raise SystemExit(f"{args.shared}: no data sets (the benchmark needs ../shared/data)")
    wanted = args.sets.split(",") if args.sets else (list(QUICK_SETS) if args.quick else None)
    if wanted:
        unknown = set(wanted) - {d.name for d in sets}
        if unknown:
            raise SystemExit(f"unknown set(s) {sorted(unknown)}; have {[d.name for d in sets]}")
        sets = [d for d in sets if d.name in wanted]
    smtbx = None if args.no_smtbx else args.smtbx_python
    if smtbx is not None and not smtbx.is_file():
        print(f"smtbx: {smtbx} not found (python3 -m venv bench/.venv-smtbx && "
              "bench/.venv-smtbx/bin/pip install cctbx-base): pattersolve only", flush=True)
        smtbx = None
    rows: list[dict] = []
    sessions: list[str] = []
    if (args.resume or args.report) and args.json and args.json.is_file():
        previous = json.loads(args.json.read_text())
        rows, sessions = previous["rows"], previous.get("sessions", [])
        if "machine" in previous:  # the first layout: one session
            sessions = [f"{previous['machine']}\ncommand: {previous['command']}"]
    cmd = "python bench/bench_real.py " + " ".join(sys.argv[1:] if argv is None else argv)
    sessions.append(f"{machine()}\ncommand: {cmd.strip()}")

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps({"sessions": sessions, "rows": rows}, indent=1)
                                 + "\n")

    if args.report:
        sessions.pop()
    else:
        run_all(sets, args.cuts, args.seeds, smtbx,
                rows, save, lambda msg: print(msg, flush=True))
    trees = Counter(r.get("tree", "not recorded") for r in rows if r["program"] == "pattersolve")
    text = ("\n".join(sessions) + "\npattersolve runs by repository state: "
            + ", ".join(f"{k} ({v})" for k, v in trees.items())
            + f"\n\n{tables(rows, args.cuts)}")
    print("\n" + text, flush=True)
    if args.txt:
        args.txt.write_text(text)
    return text


if __name__ == "__main__":
    main()
