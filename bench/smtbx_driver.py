"""Charge flipping with smtbx (cctbx), driven as Olex2 drives it: the peer in bench_real.py.

Run with the Python of a virtual environment that holds ``cctbx-base`` (never the project's
own environment: importing gemmi before cctbx in one process crashes, and cctbx is no
dependency of pattersolve)::

    bench/.venv-smtbx/bin/python bench/smtbx_driver.py data.hkl --cell 7.7,8.7,10.8,90,103,90 \
        --spacegroup "P 1 21 1" --d-min 0.8 --seed 1 --out phases.json

Input: a SHELX HKLF 4 file (F^2, sigma) with the cell and space group given, or an MTZ or
mmCIF structure-factor file (cctbx's reader; intensities preferred over amplitudes).
The reflections are merged, converted to amplitudes (``f_sq_as_f``), cut at ``--d-min`` and
handed to ``smtbx.ab_initio.charge_flipping.solving_iterator`` with the settings of Olex2's
``runChargeFlippingSolution``: ``weak_reflection_improved_iterator(delta=None)``,
quasi-normalised amplitudes, 5 attempts each for the phase transition and for a sharp
correlation map, 500 solving iterations.

Output (JSON): the phased reflections of smtbx's first symmetrised solution
(``f_calc_solutions[0]``, in the crystal's space group, asymmetric-unit indices) or, when
smtbx found none, its last P1 phases (``symmetrised: false``); amplitudes, phases in degrees,
the Hall symbol of their space group, smtbx's own flags and the solve's CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

OLEX2_SETTINGS = {
    "max_attempts_to_get_phase_transition": 5,
    "max_attempts_to_get_sharp_correlation_map": 5,
    "yield_during_delta_guessing": True,
    "yield_solving_interval": 60,
}
MAX_SOLVING_ITERATIONS = 500


class IterationLimit(int):
    """An int that stays an int when multiplied.

    smtbx multiplies ``max_solving_iterations`` by 1.5 after two starts without a phase
    transition; a float limit makes ``itertools.islice`` raise ValueError in Python 3.
    """

    def __mul__(self, other: float) -> IterationLimit:
        return IterationLimit(int(int(self) * other))

    __rmul__ = __mul__


def read_f_obs(path: str, cell: str | None, spacegroup: str | None):
    """Merged amplitudes (cctbx miller.array) from an .hkl (with cell/space group) or MTZ/CIF."""
    from cctbx import crystal
    from iotbx import reflection_file_reader
    from iotbx.shelx import hklf

    if path.lower().endswith(".hkl"):
        if not (cell and spacegroup):
            raise SystemExit(f"{path}: a SHELX .hkl needs --cell and --spacegroup")
        symmetry = crystal.symmetry(unit_cell=[float(v) for v in cell.split(",")],
                                    space_group_symbol=spacegroup)
        with open(path) as handle:
            arrays = hklf.reader(file_object=handle).as_miller_arrays(
                crystal_symmetry=symmetry)
        obs = arrays[0].set_observation_type_xray_intensity()
    else:
        arrays = reflection_file_reader.any_reflection_file(path).as_miller_arrays()
        intens = [a for a in arrays if a.is_xray_intensity_array()]
        amps = [a for a in arrays if a.is_xray_amplitude_array()]
        if not (intens or amps):
            raise SystemExit(f"{path}: no intensity or amplitude array")
        obs = intens[0] if intens else amps[0]
    obs = obs.as_non_anomalous_array().merge_equivalents().array()
    if obs.is_xray_intensity_array():
        obs = obs.f_sq_as_f()
    return obs


def solve(f_obs, seed: int) -> dict:
    """Olex2's charge-flipping run; returns the phased reflections and smtbx's flags."""
    from cctbx.array_family import flex
    from smtbx.ab_initio import charge_flipping

    flex.set_random_seed(seed)
    flipping = charge_flipping.weak_reflection_improved_iterator(delta=None)
    solving = charge_flipping.solving_iterator(
        flipping, f_obs,
        normalisations_for=charge_flipping.amplitude_quasi_normalisations,
        max_solving_iterations=IterationLimit(MAX_SOLVING_ITERATIONS),
        **OLEX2_SETTINGS)
    charge_flipping.loop(solving, verbose=False, out=sys.stderr)
    out = {"had_phase_transition": bool(solving.had_phase_transition),
           "max_attempts_exceeded": bool(solving.max_attempts_exceeded),
           "phase_transition_iterations": [int(n) for n in solving.attempts]}
    if solving.f_calc_solutions:
        f_calc, shift, cc_peak = solving.f_calc_solutions[0]
        out.update(symmetrised=True, cc_peak_height=float(cc_peak),
                   shift=[float(x) for x in shift])
    else:
        f_calc = solving.flipping_iterator.f_calc
        out.update(symmetrised=False, cc_peak_height=None, shift=None)
    out["spacegroup_hall"] = f_calc.space_group_info().type().hall_symbol().strip()
    out["hkl"] = [list(h) for h in f_calc.indices()]
    out["amplitude"] = [abs(z) for z in f_calc.data()]
    out["phase_deg"] = [math.degrees(math.atan2(z.imag, z.real)) for z in f_calc.data()]
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: read, cut, flip, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reflections")
    ap.add_argument("--cell", help="a,b,c,alpha,beta,gamma (needed for .hkl)")
    ap.add_argument("--spacegroup", help="space-group symbol or Hall symbol (needed for .hkl)")
    ap.add_argument("--d-min", type=float, help="high-resolution cut (A)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="JSON output")
    args = ap.parse_args(argv)
    cpu0 = time.process_time()
    f_obs = read_f_obs(args.reflections, args.cell, args.spacegroup)
    if args.d_min:
        f_obs = f_obs.resolution_filter(d_min=args.d_min)
    cpu_read = time.process_time() - cpu0
    result = solve(f_obs, args.seed)
    result.update(n_reflections=int(f_obs.size()), d_min=float(f_obs.d_min()),
                  cpu_read=cpu_read, cpu_solve=time.process_time() - cpu0 - cpu_read)
    with open(args.out, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
