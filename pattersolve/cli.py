"""The ``pattersolve`` command: MTZ in, CCP4 map and phased MTZ out.

Only argument parsing, logging and error mapping live here; the work is in
:mod:`pattersolve.reflections`, :mod:`pattersolve.solve` and :mod:`pattersolve.output`.
torch and onnxruntime are imported only on the paths that run a network.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import PROGRAM, __version__, settings
from .errors import ExitCode, PattersolveError

log = logging.getLogger("pattersolve")

EPILOG = """\b
Examples:
  pattersolve data.mtz -o solved.map
      network + refinement; writes solved.map and solved.mtz (FWT/PHWT, PHIB/FOM, HLA-HLD)
  pattersolve data.mtz -o solved.map --method classical --json summary.json
      refinement from random phases only (the classical baseline)
  pattersolve data.mtz -o solved.map --f-label FP --sigf-label SIGFP --d-min 1.5
      explicit columns and a resolution cut
  pattersolve sucrose.hkl --cell 7.76,8.70,10.86,90,102.9,90 --spacegroup P21 -o s.map
      SHELX HKLF4 input (cell and symmetry from a .ins/.res/.cif beside it, or given)
  pattersolve --list-models

\b
Exit codes: 0 ok, 2 usage, 3 input missing, 4 input format, 5 columns, 6 data,
            7 resources, 8 model, 9 output, 10 backend, 1 internal error.
Existing outputs are never replaced unless --overwrite is given.
"""


def _floats(text: str | None, n: int, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(x) for x in text.replace(" ", ",").split(",") if x)
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise PattersolveError(f"{name} needs {n} comma-separated numbers, got {text!r}",
                               f"e.g. {name} 10,12,14,90,95,90", ExitCode.USAGE)
    return vals


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


def _print_models() -> None:
    from .runtime import list_models, model_search_path

    models = list_models()
    if not models:
        click.echo("no models found in: " + ", ".join(map(str, model_search_path())))
        return
    for m in models:
        metrics = json.loads(m.metadata.get("metrics", "{}") or "{}")
        cc = metrics.get("median_cc")
        cell = ("packed cells (any size)" if m.cell is None
                else "cell " + "x".join(f"{x:g}" for x in m.cell) + " A")
        click.echo(f"{m.name:24s} {cell}, "
                   f"grid {m.grid_spacing:g} A, d_min {m.d_min:g} A"
                   + (f", test median CC {cc:.3f}" if cc is not None else "")
                   + f"  [{m.path}]")
        if m.task:
            click.echo(f"{'':24s} {m.task}")


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"],
                                                  "max_content_width": 100})
@click.argument("input_file", metavar="INPUT", required=False,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "map_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Output CCP4 map (the phased MTZ goes beside it as .mtz).")
@click.option("--mtz-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Phased MTZ path (default: the map's name with .mtz).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a machine-readable summary here.")
@click.option("--patterson-map", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the Patterson map (header: the Patterson group).")
@click.option("--method", type=click.Choice(["auto", "hybrid", "network", "classical",
                                             "chargeflip"]),
              default="auto", show_default=True,
              help="hybrid = network + refinement; classical = refinement from random phases; "
                   "chargeflip = charge flipping (atomic resolution); auto chooses by "
                   "resolution and cell.")
@click.option("--peaks", "peaks_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the strongest density peaks as atoms to this PDB file.")
@click.option("--model", help="Model name (see --list-models) or model folder.")
@click.option("--list-models", is_flag=True, help="List the installed models and exit.")
@click.option("--backend", type=click.Choice(["auto", "onnx", "torch"]), default="auto",
              show_default=True, help="auto prefers ONNX Runtime (torch never imported).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--cycles", type=click.IntRange(1, 100000), default=settings.DEFAULT_CYCLES,
              show_default=True, help="Refinement iterations per start.")
@click.option("--starts", type=click.IntRange(1, 1000), default=settings.DEFAULT_STARTS,
              show_default=True, help="Refinement starts (best kept by amplitude residual).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), help="CPU threads for the network.")
@click.option("--average-rotations/--single-prediction", default=False, show_default=True,
              help="Average the network's predictions over the rotations of the cell onto "
                   "itself (24 Pattersons in a cubic cell): a better network-alone map, ~20x "
                   "the network time (BENCHMARKS.md, averaged over rotations).")
@click.option("--d-min", type=click.FloatRange(min=0, min_open=True),
              help="High-resolution cut (A).")
@click.option("--d-max", type=click.FloatRange(min=0, min_open=True),
              help="Low-resolution cut (A).")
@click.option("--i-label", help="Intensity column (type J).")
@click.option("--sigi-label", help="Sigma of the intensity column.")
@click.option("-f", "--f-label", help="Amplitude column (type F).")
@click.option("--sigf-label", help="Sigma of the amplitude column.")
@click.option("--free-label", help="Free-set flag column (type I).")
@click.option("--french-wilson/--no-french-wilson", default=True, show_default=True,
              help="Amplitudes from intensities by French & Wilson (else sqrt(max(I, 0))); "
                   "the Patterson always uses the intensities.")
@click.option("--cell", "cell_text", metavar="A,B,C,AL,BE,GA",
              help="Unit cell (for SHELX input without .ins, or to override).")
@click.option("--spacegroup", help="Space group (for SHELX input without .ins, or to override).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("-v", "--verbose", is_flag=True, help="Debug output.")
@click.version_option(__version__, prog_name=PROGRAM)
def pattersolve_command(input_file: Path | None, map_out: Path | None, mtz_out: Path | None,
                        json_out: Path | None, patterson_map: Path | None, method: str,
                        peaks_out: Path | None,
                        model: str | None, list_models: bool, backend: str, device: str,
                        cycles: int, starts: int, seed: int, threads: int | None,
                        average_rotations: bool, d_min: float | None, d_max: float | None,
                        i_label: str | None,
                        sigi_label: str | None, f_label: str | None, sigf_label: str | None,
                        free_label: str | None, french_wilson: bool, cell_text: str | None,
                        spacegroup: str | None, overwrite: bool, quiet: bool, verbose: bool
                        ) -> None:
    """Phase X-ray data from its Patterson map: a trained 3D convolutional network predicts
    the density, projection refinement (RAAR + shrink-wrap) fits it to the measured
    amplitudes; atomic-resolution data of small cells are phased by charge flipping.

    INPUT is an MTZ (amplitudes or intensities; any space group), an mmCIF structure-factor
    file or a SHELX HKLF4 .hkl file. Writes a CCP4 map (-o) and a phased MTZ beside it.
    """
    _setup_logging(quiet, verbose)
    if list_models:
        _print_models()
        return
    if input_file is None or map_out is None:
        raise PattersolveError("INPUT and -o/--output are required",
                               "run: pattersolve INPUT -o OUT.map (see --help)", ExitCode.USAGE)
    run(input_file=input_file, map_out=map_out, mtz_out=mtz_out, json_out=json_out,
        patterson_out=patterson_map, peaks_out=peaks_out, method=method, model=model,
        backend=backend,
        device=device, cycles=cycles, starts=starts, seed=seed, threads=threads,
        average_rotations=average_rotations, d_min=d_min, d_max=d_max,
        labels={"i_label": i_label, "sigi_label": sigi_label, "f_label": f_label,
                "sigf_label": sigf_label, "free_label": free_label},
        cell=_floats(cell_text, 6, "--cell"), spacegroup=spacegroup, overwrite=overwrite,
        french_wilson=french_wilson)


def run(*, input_file: Path, map_out: Path, mtz_out: Path | None, json_out: Path | None,
        patterson_out: Path | None, method: str, model: str | None, backend: str,
        peaks_out: Path | None = None,
        device: str, cycles: int, starts: int, seed: int, threads: int | None,
        d_min: float | None, d_max: float | None, labels: dict[str, str | None],
        cell: tuple[float, ...] | None, spacegroup: str | None, overwrite: bool,
        french_wilson: bool = True, average_rotations: bool = False) -> dict[str, Any]:
    """The whole job; returns the JSON summary."""
    import numpy as np

    from .output import check_writable, write_ccp4_map, write_json, write_phased_mtz
    from .patterson import cell_grid_shape, patterson, patterson_group
    from .phases import fom_to_hl
    from .reflections import read_reflections

    t_start = time.perf_counter()
    mtz_out = mtz_out or map_out.with_suffix(".mtz")
    outputs = [p for p in (map_out, mtz_out, json_out, patterson_out, peaks_out)
               if p is not None]
    if len({p.resolve() for p in outputs}) != len(outputs):
        raise PattersolveError("two outputs have the same path",
                               "give distinct -o, --mtz-out, --json, --patterson-map and "
                               "--peaks paths",
                               ExitCode.USAGE)
    for p in outputs:  # fail before any work
        check_writable(p, overwrite)
    if input_file.resolve() in {p.resolve() for p in outputs}:
        raise PattersolveError(f"an output would overwrite the input {input_file}",
                               "choose another output name", ExitCode.OUTPUT)

    log.info("%s %s", PROGRAM, __version__)
    log.info("parameters: method=%s model=%s backend=%s device=%s cycles=%d starts=%d seed=%d "
             "d_min=%s d_max=%s labels=%s cell=%s spacegroup=%s french_wilson=%s "
             "average_rotations=%s", method,
             model or "default", backend, device, cycles, starts, seed, d_min, d_max,
             {k: v for k, v in labels.items() if v} or "auto", cell, spacegroup, french_wilson,
             average_rotations)
    refl = read_reflections(input_file, d_min=d_min, d_max=d_max, cell=cell,
                            spacegroup=spacegroup, french_wilson=french_wilson, **labels)
    s = refl.summary
    log.info("read %s (%s): %s, cell %s", input_file, s["format"], s["spacegroup"],
             " ".join(f"{x:g}" for x in s["cell"]))
    col = s["columns"]
    log.info("columns: %s %s%s%s; Patterson from %s, amplitudes from %s", col["kind"],
             "/".join(col["value"]), f", sigma {'/'.join(col['sigma'])}" if col["sigma"] else "",
             f", free {col['free']}" if col["free"] else "", s["patterson_from"],
             s["amplitudes_from"])
    log.info("reflections: %d used of %d (P1: %d), %.2f-%.2f A, completeness %.1f%%",
             s["reflections_used"], s["reflections_in_file"], s["reflections_p1"],
             s["resolution"][0], s["resolution"][1], 100 * s["completeness"])
    for note in s["notes"]:
        log.info("  note: %s", note)

    shape = cell_grid_shape(refl.cell, refl.spacegroup, refl.hkl, refl.d_min)
    if patterson_out is not None:
        pmap = patterson(refl.hkl, refl.intensity, refl.cell, shape)
        pg = patterson_group(refl.spacegroup)
        write_ccp4_map(patterson_out, pmap, refl.cell, pg, f"Patterson ({pg.hm})", overwrite)
        log.info("wrote Patterson map %s (group %s)", patterson_out, pg.hm)

    from .abinitio import choose_method
    from .domain import domain_warnings

    if method == "auto":
        method, reason = choose_method(refl.cell, refl.d_min, n_reflections=len(refl.hkl),
                                       spacegroup=refl.spacegroup,
                                       completeness=s["completeness"])
        log.info("method: %s (%s)", method, reason)
    else:
        reason = "chosen with --method"
    predictor = None
    model_meta = None
    if method in ("network", "hybrid"):
        from .runtime import Predictor, resolve_model

        info = resolve_model(model, (refl.cell.a, refl.cell.b, refl.cell.c), refl.d_min)
        predictor = Predictor(info, backend=backend, device=device, threads=threads)
        model_meta = {"cell": info.cell, "d_min": info.d_min, "name": info.name}
        log.info("model: %s (%s)", info.name, info.task)
    warnings = domain_warnings(refl.cell, refl.d_min, len(refl.asu_hkl), refl.spacegroup,
                               model_info=model_meta, method=method)
    refine_device = "numpy"
    if device == "cuda" or (device == "auto" and predictor is not None
                            and predictor.device == "cuda"):
        refine_device = "cuda"

    from .solve import locate_in_spacegroup, place_in_cell, solve, solve_chargeflip

    if method == "chargeflip":
        sol = solve_chargeflip(refl, seed=seed)
    else:
        sol = solve(refl, shape, method, predictor=predictor, cycles=cycles, starts=starts,
                    seed=seed, device=refine_device, average_rotations=average_rotations)
        sol = locate_in_spacegroup(refl, sol)
    sol = place_in_cell(refl, sol)
    warnings += sol.warnings
    for w in warnings:
        log.warning("warning: %s", w)
    hand = sol.stages.get("hand")
    if hand:
        log.info("hand: %s (%s)", hand["basis"], hand["note"])

    # --- outputs ----------------------------------------------------------------------------
    import gemmi

    from .output import lookup_p1

    history = f"{method} phases from {input_file.name}"
    if refl.spacegroup.number == 1 or sol.symmetric:
        sg_out = refl.spacegroup
        hkl_out = refl.asu_hkl
        f_out = lookup_p1(refl.hkl, sol.f, hkl_out)
        fom_out = lookup_p1(refl.hkl, sol.fom, hkl_out)
        amp_out, sig_out, free_out = refl.asu_amplitude, refl.asu_sigma, refl.asu_free
    else:
        msg = (f"the {method} solution failed the {refl.spacegroup.hm} symmetry check: map "
               "and MTZ are written in P1 (P1-expanded data, arbitrary origin)")
        log.warning("warning: %s", msg)
        warnings.append(msg)
        sg_out = gemmi.SpaceGroup("P 1")
        hkl_out, f_out, fom_out = refl.hkl, sol.f, sol.fom
        amp_out, sig_out, free_out = refl.amplitude, refl.sigma, refl.free
    hl = fom_to_hl(fom_out, np.angle(f_out))
    written: list[Path] = []  # outputs of this run, removed again if a later one fails
    try:
        written.append(write_ccp4_map(map_out, sol.density, refl.cell, sg_out, history,
                                      overwrite))
        written.append(write_phased_mtz(mtz_out, refl.mtz, hkl_out, amp_out, sig_out,
                                        free_out, f_out, fom_out, hl, sg_out, history,
                                        overwrite))
        log.info("wrote map %s and phased MTZ %s (%s)", map_out, mtz_out, sg_out.hm)
        n_peaks = None
        if peaks_out is not None:
            from .peaks import find_peaks, write_peaks_pdb

            peaks = sol.peaks if sol.peaks is not None else find_peaks(
                sol.density, refl.cell, sg_out, n_max=settings.PEAKS_MAX)
            written.append(write_peaks_pdb(peaks_out, peaks, refl.cell, sg_out,
                                           overwrite=overwrite))
            n_peaks = len(peaks)
            log.info("wrote %d peaks to %s", n_peaks, peaks_out)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    summary: dict[str, Any] = {
        "program": PROGRAM, "version": __version__, "input": s,
        "method": method, "method_reason": reason, "map": str(map_out), "mtz": str(mtz_out),
        "spacegroup_out": sg_out.hm, "grid": list(sol.shape), "stages": sol.stages,
        "mean_fom": round(float(np.mean(sol.fom)), 4),
        "confident": sol.confident,
        "confidence_basis": (
            "symmetry agreement and model R (charge flipping)" if method == "chargeflip"
            else "not assessed: P1 data have no symmetry to check; see mean_fom and the "
            "amplitude residuals" if sol.confident is None
            else "agreement of the P1 solution with the crystal's symmetry"),
        "hand": hand,
        "warnings": warnings,
        "peaks": None if peaks_out is None else {"file": str(peaks_out), "n": n_peaks},
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    if json_out is not None:
        try:
            write_json(json_out, summary, overwrite)
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise
        log.info("wrote summary %s", json_out)
    return summary


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one line and an exit code."""
    try:
        pattersolve_command.main(args=argv, prog_name=PROGRAM, standalone_mode=False)
    except PattersolveError as exc:
        click.echo(f"{PROGRAM}: error: {exc.one_line()}", err=True)
        sys.exit(int(exc.exit_code))
    except click.exceptions.Abort:
        click.echo(f"{PROGRAM}: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(f"{PROGRAM}: interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
