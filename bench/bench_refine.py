"""Time pattersolve.refine.refine_phases (classical and hybrid) on 10 A and 12 A cells.

Run on one core (the numbers in BENCHMARKS.md are taken this way)::

    OMP_NUM_THREADS=1 python bench/bench_refine.py [--maps 5] [--device numpy]

Each row: the Ala-Ala dipeptide of PDB 1AKZ 113-114 (10 atoms, B = 15) in a random orientation
in a cubic P1 cell, exact amplitudes to 1.5 A, F000 estimated (Patterson, then
self-consistent). Classical: random starting phases, Patterson support. Hybrid: a degraded
"prediction" (pattersolve.synthetic.degraded_prediction: true map blurred by B = 40, phases
60 degrees off on average, 10 % map noise).
Phase error: amplitude-weighted mean |dphi| after the best origin shift and hand
(pattersolve.phasematch), with the random-phase floor beside it. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from pattersolve import fourier, synthetic  # noqa: E402
from pattersolve import simulate as sim  # noqa: E402
from pattersolve.phasematch import match_phases, random_phase_floor  # noqa: E402
from pattersolve.refine import refine_phases  # noqa: E402

ELEMENTS, ALA_ALA = synthetic.ala_ala()  # PDB 1AKZ 113-114, truncated at CB


def _example(cell_length: float, seed: int, d_min: float, spacing: float):
    rng = np.random.default_rng(seed)
    sd = synthetic.simulate_fragment(ELEMENTS, ALA_ALA, d_min, cell_lengths=[cell_length] * 3,
                                     rotation=sim.random_rotation(rng))
    cell = sd.placement.cell
    shape = fourier.grid_shape_for_spacing(cell, spacing)
    pred, _ = synthetic.degraded_prediction(cell, sd.hkl, sd.f, shape, rng)
    return cell, sd.hkl, sd.f, shape, pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=5, help="examples per row")
    parser.add_argument("--starts", type=int, default=4)
    parser.add_argument("--device", default="numpy")
    parser.add_argument("--d-min", type=float, default=1.5)
    parser.add_argument("--spacing", type=float, default=0.5, help="grid spacing in A")
    args = parser.parse_args()
    print(f"device {args.device}, {args.starts} starts, d_min {args.d_min} A, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}\n")
    print("| cell | grid | mode | unique reflections | start error (deg) | median error (deg) "
          "| max error | median CC | random floor | s/start | s/map |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cell_length in (10.0, 12.0):
        for mode in ("classical", "hybrid"):
            errs, ccs, floors, per_start, per_map, before = [], [], [], [], [], []
            for seed in range(args.maps):
                cell, hkl, f, shape, pred = _example(cell_length, seed, args.d_min, args.spacing)
                t0 = time.perf_counter()
                res = refine_phases(hkl, np.abs(f), cell, shape, n_starts=args.starts,
                                    rng=seed, device=args.device,
                                    start_density=pred if mode == "hybrid" else None)
                per_map.append(time.perf_counter() - t0)
                per_start.append(statistics.mean(s["seconds"] for s in res.starts))
                m = match_phases(hkl, f, res.f, cell)
                if mode == "hybrid":
                    f_pred = fourier.structure_factors_from_map(pred, hkl, cell.volume)
                    before.append(match_phases(hkl, f, f_pred, cell).weighted_error)
                errs.append(m.weighted_error)
                ccs.append(m.map_cc)
                if mode == "classical" and seed < 2:
                    floors.append(random_phase_floor(hkl, f, cell, seed, trials=3)
                                  .weighted_error)
            floor = f"{statistics.median(floors):.0f}" if floors else "-"
            start = f"{statistics.median(before):.0f}" if before else "random"
            print(f"| {cell_length:.0f} A | {shape[0]}^3 | {mode} | {len(hkl)} | {start} | "
                  f"{statistics.median(errs):.1f} | {max(errs):.1f} | "
                  f"{statistics.median(ccs):.3f} | {floor} | "
                  f"{statistics.median(per_start):.3f} | {statistics.median(per_map):.2f} |")


if __name__ == "__main__":
    main()
