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
from typing import TYPE_CHECKING, Any

import click

from . import PROGRAM, __version__, settings
from .errors import ExitCode, PattersolveError

if TYPE_CHECKING:
    from .transaction import OutputSet

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
            7 resources, 8 model, 9 output, 10 backend, 130 interrupted,
            1 internal error (a bug: please report it with the traceback).
Outputs: all are written, or none. They are claimed (locked) at the start, written to
temporary files beside their targets and renamed into place together once all are ready;
existing outputs are replaced only with --overwrite, and only regular files.
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
              help="Phased MTZ path (default: the map's name with .mtz, or with _phased.mtz "
                   "where that is the input file).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a machine-readable summary here.")
@click.option("--patterson-map", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the Patterson map (header: the Patterson group).")
@click.option("--method", type=click.Choice(["auto", "hybrid", "network", "classical",
                                             "chargeflip", "patterson"]),
              default="auto", show_default=True,
              help="hybrid = network + refinement; classical = refinement from random phases; "
                   "chargeflip = charge flipping (atomic resolution); patterson = heavy atoms "
                   "from the Patterson + Fourier recycling (one heavy atom among light ones, "
                   "down to about 1.6 A); auto chooses by resolution and cell.")
@click.option("--peaks", "peaks_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the first model (elements assigned, molecules assembled) and the "
                   "remaining peaks to this PDB file.")
@click.option("--res", "res_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the first model as a SHELX .res for SHELXL/Olex2 (default for "
                   "SHELX .hkl input: the map's name with .res).")
@click.option("--no-res", is_flag=True, help="No .res for SHELX .hkl input.")
@click.option("--model-cif", "model_cif_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the first model as mmCIF.")
@click.option("--formula", metavar="TEXT",
              help='Chemical formula for the model\'s elements, e.g. "C12 H22 O11" '
                   "(default: SFAC/UNIT of the .ins or the CIF's formula).")
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
@click.option("--max-memory", "max_memory_text", metavar="SIZE",
              help="Refuse a job estimated to need more memory than this (e.g. 8G, 500M; "
                   "default: 80% of this machine's memory).")
@click.option("--overwrite", is_flag=True,
              help="Replace existing output files (only once every new output is ready).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("-v", "--verbose", is_flag=True, help="Debug output.")
@click.version_option(__version__, prog_name=PROGRAM)
def pattersolve_command(input_file: Path | None, map_out: Path | None, mtz_out: Path | None,
                        json_out: Path | None, patterson_map: Path | None, method: str,
                        peaks_out: Path | None, res_out: Path | None, no_res: bool,
                        model_cif_out: Path | None, formula: str | None,
                        model: str | None, list_models: bool, backend: str, device: str,
                        cycles: int, starts: int, seed: int, threads: int | None,
                        average_rotations: bool, d_min: float | None, d_max: float | None,
                        i_label: str | None,
                        sigi_label: str | None, f_label: str | None, sigf_label: str | None,
                        free_label: str | None, french_wilson: bool, cell_text: str | None,
                        spacegroup: str | None, max_memory_text: str | None, overwrite: bool,
                        quiet: bool, verbose: bool) -> None:
    """Phase X-ray data from its Patterson map: a trained 3D convolutional network predicts
    the density, projection refinement (RAAR + shrink-wrap) fits it to the measured
    amplitudes; atomic-resolution data of small cells are phased by charge flipping.

    INPUT is an MTZ (amplitudes or intensities; any space group), an mmCIF structure-factor
    file or a SHELX HKLF4 .hkl file. Writes a CCP4 map (-o) and a phased MTZ beside it.
    """
    _setup_logging(quiet, verbose)
    max_memory = None
    if max_memory_text is not None:
        from .memory import parse_memory

        max_memory = parse_memory(max_memory_text)
    if list_models:
        _print_models()
        return
    if input_file is None or map_out is None:
        raise PattersolveError("INPUT and -o/--output are required",
                               "run: pattersolve INPUT -o OUT.map (see --help)", ExitCode.USAGE)
    outputs = {"map": map_out, "mtz": mtz_out, "json": json_out, "patterson": patterson_map,
               "peaks": peaks_out, "res": res_out, "model_cif": model_cif_out}
    run(input_file=input_file, outputs=outputs, overwrite=overwrite, no_res=no_res,
        formula=formula, method=method, model=model, backend=backend, device=device, cycles=cycles,
        starts=starts, seed=seed, threads=threads, average_rotations=average_rotations,
        d_min=d_min, d_max=d_max, max_memory=max_memory, i_label=i_label,
        sigi_label=sigi_label, f_label=f_label, sigf_label=sigf_label, free_label=free_label,
        cell=_floats(cell_text, 6, "--cell"), spacegroup=spacegroup,
        french_wilson=french_wilson)


def _inputs(input_file: Path) -> list[str]:
    """The input and the SHELX files beside a .hkl that may give its cell and symmetry."""
    stem = input_file.name.removesuffix(".gz").removesuffix(".hkl").removesuffix(".HKL")
    beside = [input_file.with_name(stem + s) for s in (".ins", ".res", ".cif")]
    return [str(input_file)] + [str(p) for p in beside if p.exists()]


def _claim_outputs(input_file: Path, named: dict[str, Path | None], no_res: bool,
                   overwrite: bool) -> tuple[OutputSet, dict[str, Path]]:
    """Fill in the default MTZ and .res, then check and lock every output before any work
    (a second run with the same outputs fails here, at once)."""
    from .api import default_mtz_path, default_res_path
    from .transaction import OutputSet

    inputs = _inputs(input_file)
    named = dict(named)
    named["mtz"] = named.get("mtz") or default_mtz_path(named["map"], inputs)
    if named.get("res") is None and not no_res:
        named["res"] = default_res_path(named["map"], input_file, inputs)
    paths = {k: Path(v) for k, v in named.items() if v is not None}
    return OutputSet(paths.values(), overwrite, protect=inputs).claim(), paths


def run(*, input_file: Path, outputs: dict[str, Path | None], overwrite: bool = False,
        no_res: bool = False, **options: Any) -> dict[str, Any]:
    """The whole job: claim the outputs, :func:`pattersolve.phase`, write; the JSON summary.

    ``outputs``: paths by kind (``map``, ``mtz``, ``json``, ``patterson``, ``peaks``,
    ``res``, ``model_cif``; None: not written, or the default); ``options`` are
    :func:`pattersolve.phase`'s keyword arguments.
    """
    from .api import phase

    t_start = time.perf_counter()
    claimed, paths = _claim_outputs(input_file, outputs, no_res, overwrite)
    try:
        log.info("%s %s", PROGRAM, __version__)
        log.info("parameters: %s", ", ".join(f"{k}={v}" for k, v in options.items()
                                             if v is not None))
        sol = phase(input_file, **options)
        sol.seconds = time.perf_counter() - t_start
        sol.write(paths["map"], paths["mtz"], paths.get("json"), paths.get("patterson"),
                  paths.get("peaks"), res_path=paths.get("res"),
                  model_cif_path=paths.get("model_cif"), outputs=claimed)
    finally:
        claimed.abort()
        claimed.release()
    log.info("wrote %s (%s)", ", ".join(str(p) for p in paths.values()), sol.spacegroup.hm)
    return sol.summary({k: str(v) for k, v in paths.items()})


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one line and an exit code."""
    try:
        pattersolve_command.main(args=argv, prog_name=PROGRAM, standalone_mode=False)
    except PattersolveError as exc:
        click.echo(f"{PROGRAM}: error: {exc.one_line()}", err=True)
        sys.exit(int(exc.exit_code))
    except click.exceptions.Abort:
        click.echo(f"{PROGRAM}: interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(f"{PROGRAM}: interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
