"""Time to solution and phase error on the real data sets (../shared/data/real).

Run: ``OMP_NUM_THREADS=1 python bench/bench_realdata.py [--seeds N] [--no-french-wilson]``.
Prints a markdown table with the machine and date. Amplitudes from intensities (sucrose and
ethylene oxide; the peptides' files carry amplitudes) are French & Wilson's, as in the command;
``--no-french-wilson`` takes ``sqrt(max(I, 0))`` instead. Phase errors are against structure
factors computed from the deposited models (hydrogens included where present) after the
origin/hand search of :func:`pattersolve.phasematch.match_phases`; the random-phase floor is
printed beside them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import gemmi
import numpy as np

from pattersolve.abinitio import solve_atomic
from pattersolve.peaks import min_distances
from pattersolve.phasematch import match_phases, random_phase_floor
from pattersolve.reflections import read_reflections
from pattersolve.simulate import structure_factors
from pattersolve.solve import choose_method

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
SETS = [
    ("sucrose P2(1)", "sucrose_P21_smallmol/sucrose.hkl", "sucrose_P21_smallmol/sucrose.cif"),
    ("ethylene oxide P2(1)/n", "epoxide_P21n_smallmol/epoxide.hkl",
     "epoxide_P21n_smallmol/epoxide.cif"),
    ("5E5Z LVHSSN P2(1)", "5e5z_LVHSSN_P21/5e5z.mtz", "5e5z_LVHSSN_P21/5e5z.pdb"),
    ("1YJP GNNQQNY P2(1)", "1yjp_GNNQQNY_P21/1yjp-sf.cif", "1yjp_GNNQQNY_P21/1yjp.pdb"),
]


def model(path: Path, sg: gemmi.SpaceGroup):
    """(frac, elements, B, occupancy) of all atoms in the cell, and the non-H ASU atoms."""
    if path.suffix == ".cif":
        ss = gemmi.read_small_structure(str(path))
        sites = ss.get_all_unit_cell_sites()
        frac = np.array([[s.fract.x, s.fract.y, s.fract.z] for s in sites])
        heavy = np.array([[s.fract.x, s.fract.y, s.fract.z] for s in ss.sites
                          if s.element.name != "H"])
        return (frac, [s.element.name for s in sites],
                np.array([8 * np.pi**2 * s.u_iso for s in sites]), np.ones(len(sites)), heavy)
    st = gemmi.read_structure(str(path))
    frac, el, b, occ, heavy = [], [], [], [], []
    for cra in st[0].all():
        fr = st.cell.fractionalize(cra.atom.pos)
        if cra.atom.element.name != "H":
            heavy.append([fr.x, fr.y, fr.z])
        for op in sg.operations():
            frac.append(op.apply_to_xyz([fr.x, fr.y, fr.z]))
            el.append(cra.atom.element.name)
            b.append(cra.atom.b_iso)
            occ.append(cra.atom.occ)
    return np.array(frac), el, np.array(b), np.array(occ), np.array(heavy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--french-wilson", action=argparse.BooleanOptionalAction, default=True,
                    help="amplitudes from intensities by French & Wilson (default) or sqrt")
    args = ap.parse_args()
    if not REAL.is_dir():
        raise SystemExit(f"{REAL} not found: the benchmark needs the project's shared data")
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}, "
          f"python {platform.python_version()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; date: "
          f"{datetime.datetime.now().isoformat(timespec='minutes')}; amplitudes from "
          f"intensities: {'French & Wilson' if args.french_wilson else 'sqrt(max(I, 0))'}\n")
    print("| data | d_min (A) | refl (P1) | method (auto) | seed | seconds | confident | "
          "R(E) | sym. agreement | phase err. w / unw. (deg) | map CC | random floor (deg) | "
          "max atom-peak (A) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, data, ref in SETS:
        refl = read_reflections(REAL / data, french_wilson=args.french_wilson)
        d_min = float(refl.d.min())
        method, _ = choose_method(refl.cell, d_min)
        frac, el, b, occ, heavy = model(REAL / ref, refl.spacegroup)
        f_model = structure_factors(frac, el, b, refl.cell, refl.hkl, occ)
        floor = random_phase_floor(refl.hkl, f_model, refl.cell, 0, refl.spacegroup, trials=3)
        for seed in range(args.seeds):
            t = time.perf_counter()
            res = solve_atomic(refl, rng=seed, max_seconds=30)
            sec = time.perf_counter() - t
            m = match_phases(refl.hkl, f_model, res.f, refl.cell, spacegroup=refl.spacegroup)
            pk = (-res.peaks.frac if m.inverted else res.peaks.frac) + m.shift
            dist = min_distances(heavy, pk, refl.cell, refl.spacegroup).max()
            print(f"| {name} | {d_min:.2f} | {len(refl.hkl)} | {method} | {seed} | {sec:.1f} | "
                  f"{res.confident} | {res.fom['r_model']:.3f} | "
                  f"{res.fom['symmetry_agreement_mean']:.2f} | {m.weighted_error:.1f} / "
                  f"{m.unweighted_error:.1f} | {m.map_cc:.3f} | {floor.weighted_error:.0f} | "
                  f"{dist:.2f} |", flush=True)
    peptide_methods(args.seeds, args.french_wilson)
    deposited_amplitudes()


def deposited_amplitudes() -> None:
    """French & Wilson from 5E5Z's intensities against the amplitudes deposited beside them."""
    from pattersolve.frenchwilson import french_wilson
    from pattersolve.reflections import load_mtz

    mtz, _ = load_mtz(REAL / "5e5z_LVHSSN_P21" / "5e5z.mtz")
    col = {lab: np.array(mtz.column_with_label(lab)) for lab in ("I", "SIGI", "FP", "SIGFP")}
    ok = np.isfinite(col["I"]) & (col["SIGI"] > 0) & np.isfinite(col["FP"])
    i_obs, sig_i, fp, sigfp = (col[lab][ok] for lab in ("I", "SIGI", "FP", "SIGFP"))
    f, sig_f = french_wilson(mtz.make_miller_array()[ok], i_obs, sig_i, mtz.cell,
                             mtz.spacegroup)
    scale = float(np.median(fp / f))
    weak = i_obs < sig_i
    print(f"\n5E5Z deposited FP/SIGFP against amplitudes from its I/SIGI ({ok.sum()} "
          f"reflections, {weak.sum()} with I < sigma(I); overall scale {scale:.3f} fitted):")
    print("| amplitudes | median rel. diff. FP, all | weak | max | median rel. diff. SIGFP |")
    print("|---|---|---|---|---|")
    for name, a, sa in (("French & Wilson", f, sig_f),
                        ("sqrt(max(I, 0))", np.sqrt(np.clip(i_obs, 0, None)),
                         sig_i / (2 * np.maximum(np.sqrt(np.clip(i_obs, 0, None)), 1e-6)))):
        rel = np.abs(scale * a - fp) / fp
        rel_s = np.abs(scale * sa - sigfp) / sigfp
        print(f"| {name} | {100 * np.median(rel):.2f} % | {100 * np.median(rel[weak]):.2f} % | "
              f"{100 * rel.max():.1f} % | {100 * np.median(rel_s):.2f} % |")


def peptide_methods(seeds: int, french_wilson: bool = True) -> None:
    """The peptides (1.7-1.8 A) with the methods the command uses there, scored in P1.

    Network and refinement solutions are P1 maps with an arbitrary origin, so the phase
    error is taken after a continuous P1 origin/hand search (a lower bound on the error in
    the crystal's space group); the random floor goes through the same search.
    """
    from pattersolve.patterson import cell_grid_shape
    from pattersolve.runtime import Predictor, list_models, resolve_model
    from pattersolve.solve import solve

    have_models = bool(list_models())
    print("\n| data | method | seed | seconds | R(amplitude) | phase err. w / unw. (deg, P1 "
          "search) | map CC | random floor (deg, P1 search) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, data, ref in SETS[2:]:
        refl = read_reflections(REAL / data, french_wilson=french_wilson)
        frac, el, b, occ, _ = model(REAL / ref, refl.spacegroup)
        f_model = structure_factors(frac, el, b, refl.cell, refl.hkl, occ)
        floor = random_phase_floor(refl.hkl, f_model, refl.cell, 0, trials=3)
        shape = cell_grid_shape(refl.cell, refl.spacegroup, refl.hkl, refl.d_min)
        predictor = None
        if have_models:  # the model the command would choose for these data
            info = resolve_model(None, (refl.cell.a, refl.cell.b, refl.cell.c), refl.d_min)
            predictor = Predictor(info, backend="auto", device="cpu", threads=1)
        for method in ("classical", "hybrid", "network"):
            if method != "classical" and predictor is None:
                continue
            for seed in range(seeds):
                t = time.perf_counter()
                sol = solve(refl, shape, method, predictor=predictor, seed=seed)
                sec = time.perf_counter() - t
                m = match_phases(refl.hkl, f_model, sol.f, refl.cell)
                r = sol.stages.get("refinement", sol.stages.get("network", {}))
                res = r.get("amplitude_residual_final", r.get("amplitude_residual", float("nan")))
                label = method if method == "classical" else f"{method} ({predictor.model.name})"
                print(f"| {name} | {label} | {seed} | {sec:.1f} | {res:.3f} | "
                      f"{m.weighted_error:.1f} / {m.unweighted_error:.1f} | {m.map_cc:.3f} | "
                      f"{floor.weighted_error:.0f} |", flush=True)


if __name__ == "__main__":
    main()
