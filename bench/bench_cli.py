"""Wall time of the whole `pattersolve` command on the bundled example, per backend.

Each run is a fresh process, as a user or script would start it. The ONNX path is also run
under `python -X importtime` to prove torch is never imported there.

    python bench/bench_cli.py [--repeats 5] [--method hybrid]

Prints a markdown table (machine, date, median and min seconds) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "share" / "examples" / "alaala_1akz.mtz"


def run_once(backend: str, method: str, threads: int, extra: tuple[str, ...] = ()) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pattersolve.cli", str(EXAMPLE), "-o", f"{tmp}/o.map",
               "--backend", backend, "--method", method, "--threads", str(threads), "-q",
               *extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        return time.perf_counter() - t0


def torch_imported_on_onnx_path(method: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-X", "importtime", "-m", "pattersolve.cli", str(EXAMPLE), "-o",
               f"{tmp}/o.map", "--backend", "onnx", "--method", method, "-q"]
        err = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    return any(line.rstrip().endswith(" torch") for line in err.splitlines())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = []
    cases = [(m, b, ()) for m in ("network", "hybrid") for b in ("onnx", "torch")]
    cases += [("classical", "onnx", ()),
              ("network", "onnx", ("--average-rotations",)),
              ("hybrid", "onnx", ("--average-rotations",))]
    for method, backend, extra in cases:
        run_once(backend, method, args.threads, extra)  # warm the file cache
        times = [run_once(backend, method, args.threads, extra) for _ in range(args.repeats)]
        label = method + "".join(f" {x}" for x in extra)
        rows.append((label, backend if method != "classical" else "-",
                     statistics.median(times), min(times)))
    clean = not torch_imported_on_onnx_path("hybrid")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
          f"{platform.release()}, Python {platform.python_version()}; "
          f"{dt.date.today().isoformat()}; {args.repeats} runs each, --threads {args.threads}")
    print()
    print("| method | backend | median s | min s |")
    print("|---|---|---|---|")
    for method, backend, med, mn in rows:
        print(f"| {method} | {backend} | {med:.2f} | {mn:.2f} |")
    print()
    print(f"torch imported on the ONNX path: {'no' if clean else 'YES'}")


if __name__ == "__main__":
    main()
