"""First models from measured small-molecule data: atoms found, elements right, molecules whole.

Every data set of ``../shared/data/real_small`` and the two small molecules of
``../shared/data/real`` is phased by the default pipeline (``pattersolve.phase(path)``, at the
data's own resolution; the cell and space group from the ``.res``/``.cif`` beside the data,
given as ``cell=``/``spacegroup=`` where its name differs from the data's). A model is built
from the solution's peaks and map (:func:`pattersolve.molecule.model_from_solution`) twice:
with the formula of the refined model's file (SFAC/UNIT of ``model.res``, else the CIF's
``_chemical_formula_sum``) and without a formula. The ``.res`` is written and read back with
the strict reader (:func:`pattersolve.shelx.read_res`), and its atoms are scored against the
refined model's non-hydrogen atoms after the origin and hand search of
:func:`pattersolve.phasematch.match_phases` (X-ray structure factors of the refined model):

* within 0.3 A: the fraction of the model's non-H atoms with a written atom (not a Q-peak)
  within 0.3 A (symmetry and lattice images included); "major": of the sites with chemical
  occupancy >= 0.5 (a disorder's minor part left out: a first model has one conformation);
* element right: the fraction of the model's non-H atoms with a written atom of the same
  element within 0.3 A (with the formula);
* element right by strength alone: the same with the bonding left out of the element
  assignment (``geometry=False``), major sites;
* largest molecule: whether one symmetry image of the largest written fragment puts an atom
  within 0.3 A of every atom of the model's largest molecule (assembled by the same code).

    nice -n 10 python bench/bench_model.py              # all sets, writes bench/results/model.txt
    python bench/bench_model.py --sets tonto_ylid,sucrose_P21_smallmol --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import gemmi  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULT = REPO / "bench" / "results" / "model.txt"
NEAR = 0.3  # A
REAL_SETS = (("sucrose_P21_smallmol", "sucrose.hkl", "sucrose.cif"),
             ("epoxide_P21n_smallmol", "epoxide.hkl", "epoxide.cif"))


@dataclass
class DataSet:
    """A data set, the refined model's file and the file the formula comes from."""

    name: str
    data: Path
    model: Path
    formula_file: Path
    give_symmetry: bool


def discover(shared: Path = SHARED) -> list[DataSet]:
    """The two small molecules of ``real`` and every set of ``real_small``."""
    sets = [DataSet(folder, shared / "real" / folder / hkl, shared / "real" / folder / cif,
                    shared / "real" / folder / cif, False)
            for folder, hkl, cif in REAL_SETS if (shared / "real" / folder / hkl).is_file()]
    small = shared / "real_small"
    for folder in sorted(p for p in small.iterdir() if p.is_dir()) if small.is_dir() else []:
        res, cif = folder / "model.res", folder / "model.cif"
        model = cif if cif.is_file() else res
        if (folder / "data.hkl").is_file() and model.is_file():
            sets.append(DataSet(folder.name, folder / "data.hkl", model,
                                res if res.is_file() else cif, True))
    return sets


def refined_model(ds: DataSet) -> gemmi.SmallStructure:
    """The refined model, occupancies crystallographic (1/multiplicity on special positions,
    as SHELX writes them)."""
    if ds.model.suffix == ".res":
        return read_shelxl_res(ds.model)
    ss = gemmi.read_small_structure(str(ds.model))
    ss.change_occupancies_to_crystallographic()
    ss.setup_cell_images()
    return ss


def _fv(value: float, fvar: list[float]) -> float:
    """A SHELX parameter ``10 m + p``: fixed (m = 1), ``p fv_m`` (m > 1) or ``p (fv_-m - 1)``
    (m < -1)."""
    m = int(round(value / 10)) if abs(value) >= 5 else 0
    p = value - 10 * m
    if abs(m) <= 1:
        return p
    return p * fvar[m - 1] if m > 1 else p * (fvar[-m - 1] - 1)


def read_shelxl_res(path: Path) -> gemmi.SmallStructure:
    """Atoms of a refined SHELXL .res (gemmi reads no .res): cell and symmetry by
    :func:`pattersolve.formats.symmetry_from_file`, atoms as ``NAME SFAC x y z sof U...``
    (free variables decoded; riding U taken as 0.05)."""
    from pattersolve.formats import symmetry_from_file
    from pattersolve.shelx import KNOWN_CARDS, _cards, _sfac_elements

    cell, sg = symmetry_from_file(path)
    cards = _cards(path.read_text(errors="replace"))
    sfac = _sfac_elements(cards)
    fvar = [float(v) for c in cards if c[0].upper() == "FVAR" for v in c[1:]]
    ss = gemmi.SmallStructure()
    ss.cell = cell
    ss.symops = [op.triplet() for op in sg.operations()]
    ss.determine_and_set_spacegroup("S")
    for c in cards:
        if c[0].upper() in KNOWN_CARDS or len(c) < 7 or not c[1].isdigit() \
                or not 1 <= int(c[1]) <= len(sfac) or c[0].upper().startswith("Q"):
            continue
        try:
            nums = [float(v) for v in c[2:]]
        except ValueError:
            continue
        site = gemmi.SmallStructure.Site()
        site.label, site.element = c[0], gemmi.Element(sfac[int(c[1]) - 1])
        site.fract = gemmi.Fractional(*[_fv(v, fvar) for v in nums[:3]])
        site.occ = _fv(nums[3], fvar)
        u = [_fv(v, fvar) for v in nums[4:7]]
        site.u_iso = float(np.mean(u)) if u[0] > 0 else 0.05
        ss.add_site(site)
    ss.setup_cell_images()
    return ss


def composition(ss: gemmi.SmallStructure):
    """The refined model's own formula (per asymmetric unit, Z = the number of operators),
    for a model file that states none."""
    from pattersolve.shelx import Formula

    cell: dict[str, float] = {}
    for s in ss.get_all_unit_cell_sites():
        cell[s.element.name] = cell.get(s.element.name, 0.0) + s.occ
    n_ops = len(list(ss.spacegroup.operations()))
    return Formula({e: n / n_ops for e, n in cell.items()}, float(n_ops),
                   "the refined model's atoms")


def solve(ds: DataSet):
    """``pattersolve.phase`` on the data, with the model file's symmetry where needed."""
    import pattersolve
    from pattersolve.formats import symmetry_from_file

    kw = {}
    if ds.give_symmetry:
        cell, sg = symmetry_from_file(ds.formula_file)
        kw = {"cell": cell.parameters, "spacegroup": sg.xhm()}
    return pattersolve.phase(str(ds.data), **kw)


def frame(sol, ss: gemmi.SmallStructure):
    """Origin shift and hand of the solution against the refined model."""
    from pattersolve.phasematch import match_phases
    from pattersolve.simulate import structure_factors

    sites = ss.get_all_unit_cell_sites()
    frac = np.array([[s.fract.x, s.fract.y, s.fract.z] for s in sites])
    b = np.array([8 * np.pi ** 2 * max(s.u_iso, 0.005) for s in sites])
    f_model = structure_factors(frac, [s.element.name for s in sites], b, sol.cell, sol.hkl,
                                np.array([s.occ for s in sites]))
    return match_phases(sol.hkl, f_model, sol.f, sol.cell, spacegroup=sol.spacegroup)


def heavy_atoms(ss: gemmi.SmallStructure) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The refined model's non-H atoms of the asymmetric unit, and which of them are major
    sites (chemical occupancy >= 0.5: not the minor part of a disorder)."""
    from pattersolve.molecule import _snap_special

    sites = [s for s in ss.sites if not s.element.is_hydrogen]
    frac = np.array([[s.fract.x, s.fract.y, s.fract.z] for s in sites]).reshape(-1, 3)
    site_occ = _snap_special(frac, ss.cell, ss.spacegroup)[1]  # 1 / multiplicity
    chemical = np.array([s.occ for s in sites]) / site_occ
    return frac, [s.element.name for s in sites], chemical >= 0.5 - 1e-3


def nearest(a: np.ndarray, b: np.ndarray, cell: gemmi.UnitCell, sg: gemmi.SpaceGroup
            ) -> tuple[np.ndarray, np.ndarray]:
    """For each point of ``a``: distance to the nearest symmetry/lattice image of a point of
    ``b``, and which point of ``b`` that is (-1 when ``b`` is empty)."""
    from pattersolve.peaks import min_distances

    if len(b) == 0:
        return np.full(len(a), np.inf), np.full(len(a), -1)
    d = np.stack([min_distances(a, b[j:j + 1], cell, sg) for j in range(len(b))], axis=1)
    return d.min(axis=1), d.argmin(axis=1)


def covers(written: np.ndarray, molecule: np.ndarray, cell: gemmi.UnitCell,
           sg: gemmi.SpaceGroup) -> int:
    """The most atoms of ``molecule`` that one symmetry image of the fragment ``written``
    (both fractional, in the same frame) puts an atom within NEAR of."""
    orth = np.array(cell.orth.mat, dtype=np.float64)
    best = 0
    for op in sg.operations():
        rot, tran = np.array(op.rot, float) / op.DEN, np.array(op.tran, float) / op.DEN
        image = written @ rot.T + tran
        base = np.rint(molecule.mean(axis=0) - image.mean(axis=0))
        for shift in np.ndindex(3, 3, 3):
            moved = image + base + np.array(shift) - 1.0
            d = np.linalg.norm((molecule[:, None, :] - moved[None, :, :]) @ orth.T, axis=-1)
            best = max(best, int((d.min(axis=1) < NEAR).sum()))
    return best


def score(model, text: str, match, ss: gemmi.SmallStructure) -> dict:
    """Scores of a written .res against the refined model (see the module's description)."""
    from pattersolve.molecule import assemble
    from pattersolve.shelx import read_res

    res = read_res(text)  # strict: what a refinement program would read
    assert len(res.atoms) == len(model.atoms) and len(res.qpeaks) == len(model.qpeaks)
    sg, cell = model.spacegroup, model.cell
    sign = -1.0 if match.inverted else 1.0
    written = np.array([a.frac for a in res.atoms]).reshape(-1, 3) * sign + match.shift
    ref, ref_el, major = heavy_atoms(ss)
    d, j = nearest(ref, written, cell, sg)
    right = np.array([k >= 0 and dk < NEAR and res.atoms[k].element == e
                      for dk, k, e in zip(d, j, ref_el, strict=True)])
    pos, frags = assemble(ref[major], [e for e, m in zip(ref_el, major, strict=True) if m],
                          cell, sg)
    molecule = pos[frags[0]]
    largest = written[model.fragments[0]] if model.fragments else np.zeros((0, 3))
    n_cov = covers(largest, molecule, cell, sg) if len(largest) else 0
    return {"near": float(np.mean(d < NEAR)), "element": float(np.mean(right)),
            "near_major": float(np.mean(d[major] < NEAR)),
            "element_major": float(np.mean(right[major])), "n_major": int(major.sum()),
            "n_ref": len(ref), "n_written": len(res.atoms), "n_frag": len(model.fragments),
            "largest": len(largest), "molecule": len(molecule), "covered": n_cov}


def run(ds: DataSet) -> dict:
    """Phase one data set, build the models with and without the formula, score them."""
    from pattersolve.molecule import model_from_solution, model_res_text
    from pattersolve.shelx import formula_from_file

    t0 = time.perf_counter()
    sol = solve(ds)
    t_phase = time.perf_counter() - t0
    ss = refined_model(ds)
    match = frame(sol, ss)
    formula = formula_from_file(ds.formula_file) or composition(ss)
    ins = ds.formula_file if ds.formula_file.suffix == ".res" else None
    t1 = time.perf_counter()
    with_f = model_from_solution(sol, formula)
    text = model_res_text(with_f, ins=ins)
    t_model = time.perf_counter() - t1
    without = model_from_solution(sol)
    row = {"name": ds.name, "sg": sol.spacegroup.hm, "d_min": float(sol.reflections.d_min),
           "confident": sol.confident, "phase_error": float(match.weighted_error),
           "formula": str(formula), "t_phase": t_phase, "t_model": t_model,
           **score(with_f, text, match, ss)}
    plain = model_from_solution(sol, formula, geometry=False)
    row["element_strength_only"] = score(plain, model_res_text(plain), match, ss)[
        "element_major"]
    row["near_no_formula"] = score(without, model_res_text(without), match, ss)["near"]
    row["n_no_formula"] = len(without.atoms)
    return row


def machine() -> str:
    """nproc, the CPU model and the date."""
    model = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        if ln.startswith("Model name")), "unknown CPU")
    return (f"machine: nproc {len(os.sched_getaffinity(0))}, {model}; OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS')}; date {dt.date.today().isoformat()}")


HEADER = ("| data set | space group | d_min (A) | confident / phase err. (deg) | non-H atoms "
          "(major sites) | written atoms / fragments | within 0.3 A: all (major) | element "
          "right: all (major) | element right by strength alone (major) | largest fragment "
          "covers the largest molecule | no formula: atoms / within 0.3 A | s (phase + model) |")


def table_row(r: dict) -> str:
    """One markdown row."""
    if "error" in r:
        return f"| {r['name']} | failed: {r['error']} |" + " |" * 10
    cov = "yes" if r["covered"] == r["molecule"] else "no"
    return (f"| {r['name']} | {r['sg']} | {r['d_min']:.2f} | {'yes' if r['confident'] else 'no'}"
            f" / {r['phase_error']:.0f} | {r['n_ref']} ({r['n_major']}) | {r['n_written']} / "
            f"{r['n_frag']} | {100 * r['near']:.0f} % ({100 * r['near_major']:.0f} %) | "
            f"{100 * r['element']:.0f} % ({100 * r['element_major']:.0f} %) | "
            f"{100 * r['element_strength_only']:.0f} % | {cov} "
            f"({r['covered']}/{r['molecule']} atoms; fragment {r['largest']}) | "
            f"{r['n_no_formula']} / {100 * r['near_no_formula']:.0f} % | "
            f"{r['t_phase']:.0f} + {r['t_model']:.1f} |")


def summary(rows: list[dict]) -> list[str]:
    """Totals over the sets (atoms pooled) and how many meet each target."""
    ok = [r for r in rows if "error" not in r]
    lines = []
    for label, subset in (("all sets", ok), ("confident solutions", [r for r in ok if
                                                                     r["confident"]])):
        n = sum(r["n_ref"] for r in subset) or 1
        nm = sum(r["n_major"] for r in subset) or 1
        pooled = [sum(r[k] * r[w] for r in subset) / t for k, w, t in (
            ("near", "n_ref", n), ("element", "n_ref", n), ("near_major", "n_major", nm),
            ("element_major", "n_major", nm), ("element_strength_only", "n_major", nm))]
        lines.append(
            f"{label} ({len(subset)}; {n} non-H atoms, {nm} major sites), pooled: within 0.3 A "
            f"{100 * pooled[0]:.1f} % (major {100 * pooled[2]:.1f} %), element right "
            f"{100 * pooled[1]:.1f} % (major {100 * pooled[3]:.1f} %; by strength alone "
            f"{100 * pooled[4]:.1f} %); sets with within 0.3 A "
            f">= 90 % (major): {sum(r['near_major'] >= 0.9 for r in subset)}, element right "
            f">= 85 % (major): {sum(r['element_major'] >= 0.85 for r in subset)}, largest "
            f"molecule covered: {sum(r['covered'] == r['molecule'] for r in subset)}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", help="comma-separated folder names (default: all)")
    ap.add_argument("--no-write", action="store_true", help=f"do not write {RESULT}")
    args = ap.parse_args(argv)
    sets = discover()
    if not sets:
        raise SystemExit(f"no data under {SHARED}: the benchmark needs the shared data")
    if args.sets:
        sets = [s for s in sets if s.name in args.sets.split(",")]
    lines = [machine(), "command: nice -n 10 python bench/bench_model.py"
             + (f" --sets {args.sets}" if args.sets else ""), "", HEADER,
             "|" + "---|" * 12]
    print("\n".join(lines), flush=True)
    rows = []
    for ds in sets:
        try:
            rows.append(run(ds))
        except Exception as exc:  # a failed set is a row, not the end of the bench
            rows.append({"name": ds.name, "error": f"{type(exc).__name__}: {exc}"[:120]})
        lines.append(table_row(rows[-1]))
        print(lines[-1], flush=True)
    lines += ["", *summary(rows)]
    print("\n".join(lines[-2:]))
    if not args.no_write:
        RESULT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
