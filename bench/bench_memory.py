"""Memory estimate (pattersolve.memory) against the peak resident memory of the real command.

Simulated data (copies of a tripeptide placed by the space group's operators, B = 15 A^2,
2 % amplitude noise) are written to MTZ files for cells from 10 A to 57 x 57 x 80 A; each
method runs as a fresh ``pattersolve`` process and its peak resident set size is read from
``wait4``'s rusage. Refinement runs ``--cycles 25`` (the default starts: memory does not
depend on the number of cycles past the first support update) to keep the benchmark short.

    nice -n 10 python bench/bench_memory.py [--full] [--out bench/results/memory.txt]

``--full`` adds the 57 x 57 x 80 A cell at 1.5 A (a few GiB). Prints the machine, the date,
the measured base (imports) and a table of cell, d_min, grid, method, estimate, measured peak
and their ratio; exits 1 if a ratio is outside 0.5-2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from pattersolve import memory, synthetic
from pattersolve.patterson import cell_grid_shape
from pattersolve.reflections import read_reflections
from pattersolve.simulate import structure_factors

CYCLES = 25
RATIO_RANGE = (0.5, 2.0)
IMPORTS = ("import pattersolve.cli, pattersolve.api, pattersolve.solve, pattersolve.refine, "
           "pattersolve.chargeflip, pattersolve.abinitio, pattersolve.reflections")


@dataclass(frozen=True)
class Case:
    """One simulated data set and the methods run on it."""

    cell: tuple[float, float, float, float, float, float]
    spacegroup: str
    d_min: float
    copies: int
    methods: tuple[str, ...]
    extra: tuple[str, ...] = ()  # further options of the command

    @property
    def label(self) -> str:
        a, b, c, al, be, ga = self.cell
        angles = "" if (al, be, ga) == (90, 90, 90) else f" ({al:g},{be:g},{ga:g})"
        return (f"{a:g}x{b:g}x{c:g}{angles} {self.spacegroup.replace(' ', '')}"
                + "".join(f" {x}" for x in self.extra))


CASES = (
    Case((10, 11, 12, 90, 90, 90), "P 1", 0.9, 1, ("classical", "hybrid", "chargeflip")),
    Case((12, 12, 12, 90, 90, 90), "P 1", 1.5, 1, ("hybrid",), ("--average-rotations",)),
    Case((16, 18, 20, 90, 90, 90), "P 21 21 21", 1.0, 1, ("classical", "chargeflip")),
    Case((30, 32, 35, 90, 105, 90), "P 1 21 1", 2.0, 2, ("classical", "hybrid")),
    Case((57, 57, 80, 90, 90, 120), "P 31 2 1", 2.0, 4, ("classical", "hybrid")),
)
FULL_CASES = (Case((57, 57, 80, 90, 90, 120), "P 31 2 1", 1.5, 4, ("classical", "hybrid")),)


def simulated_mtz(path: Path, case: Case, seed: int = 0) -> None:
    """Write FP/SIGFP/FreeR_flag of ``case.copies`` symmetry-expanded tripeptides."""
    cell, sg = gemmi.UnitCell(*case.cell), gemmi.SpaceGroup(case.spacegroup)
    elements, xyz = synthetic.asp_ala_val()
    rng = np.random.default_rng(seed)
    to_frac = np.array(cell.frac.mat)
    frac, els = [], []
    for _ in range(case.copies):
        f = (xyz - xyz.mean(0)) @ to_frac.T + rng.random(3)
        for op in sg.operations():
            rot, tran = np.array(op.rot) / op.DEN, np.array(op.tran) / op.DEN
            frac.append(f @ rot.T + tran)
            els += elements
    hkl = np.array(gemmi.make_miller_array(cell, sg, case.d_min, 0.0, True), dtype=np.int64)
    fc = structure_factors(np.concatenate(frac) % 1.0, els, 15.0, cell, hkl)
    synthetic.write_data_mtz(path, cell, hkl, synthetic.measured_columns(fc, rng, noise=0.02),
                             spacegroup=sg)


def peak_rss(cmd: list[str]) -> tuple[int, float, str]:
    """Peak resident bytes of a child process, its wall time and stderr's tail (on failure)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-400:] if proc.returncode else ""
    return usage.ru_maxrss * 1024, time.perf_counter() - t0, tail


def estimate(path: Path, method: str, case: Case) -> tuple[tuple[int, int, int], int, str]:
    """The grid, the estimate and its largest stage, as the command would compute them."""
    refl = read_reflections(path)
    shape = cell_grid_shape(refl.cell, refl.spacegroup, refl.hkl, refl.d_min)
    args = memory.run_arguments(refl, method,
                                average_rotations="--average-rotations" in case.extra)
    phases = memory.estimate_phases(shape, method, len(refl.hkl), **args)
    est = memory.estimate_peak_bytes(shape, method, len(refl.hkl), **args)
    return shape, est, max(phases, key=lambda k: phases[k])


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines()
        if line.startswith("Model name")), "unknown CPU")
    total = memory.physical_memory()
    return (f"Machine: {os.cpu_count()} CPUs (nproc), {cpu}, "
            f"{memory.format_bytes(total) if total else '?'} memory; "
            f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}")


def base_line() -> str:
    """The measured peak of the imports, beside the constants the estimate uses."""
    plain, _, _ = peak_rss([sys.executable, "-c", IMPORTS])
    onnx, _, _ = peak_rss([sys.executable, "-c", IMPORTS + ", onnxruntime"])
    return (f"Base, measured: {plain / memory.MIB:.0f} MiB after the imports, "
            f"{onnx / memory.MIB:.0f} MiB with onnxruntime (constants: "
            f"{memory.BASE_BYTES / memory.MIB:.0f} MiB, "
            f"+{memory.ONNXRUNTIME_BYTES / memory.MIB:.0f} MiB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="add the 57x57x80 A cell at 1.5 A")
    ap.add_argument("--out", type=Path, help="also write the report here")
    args = ap.parse_args()
    lines = [machine(), f"Command: python bench/bench_memory.py{' --full' if args.full else ''}"
             f" (pattersolve --cycles {CYCLES}, default starts)", base_line(), "",
             "| cell | d_min | grid | method | estimate | measured | ratio | largest stage "
             "| s |", "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES + (FULL_CASES if args.full else ())):
            mtz = Path(tmp) / f"case{i}.mtz"
            simulated_mtz(mtz, case)
            for method in case.methods:
                shape, est, stage = estimate(mtz, method, case)
                cmd = [sys.executable, "-m", "pattersolve.cli", str(mtz), "-o",
                       f"{tmp}/out.map", "--method", method, "--cycles", str(CYCLES), "-q",
                       "--overwrite", *case.extra]
                rss, seconds, err = peak_rss(cmd)
                ratio = est / rss
                bad += not (RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]) or bool(err)
                row = (f"| {case.label} | {case.d_min:g} | {'x'.join(map(str, shape))} | "
                       f"{method} | {memory.format_bytes(est)} | {memory.format_bytes(rss)} | "
                       f"{ratio:.2f} | {stage} | {seconds:.0f} |")
                lines.append(row)
                print(row + (f"  FAILED: {err}" if err else ""), flush=True)
    lines += ["", f"All ratios within {RATIO_RANGE[0]}-{RATIO_RANGE[1]}: "
              f"{'yes' if not bad else 'NO'}"]
    print(lines[-1])
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
