"""The Python API: :func:`phase` takes measured data and returns a :class:`Solution`.

This is the whole pipeline behind the ``pattersolve`` command (which only parses options,
calls :func:`phase` and :meth:`Solution.write`): reading and column choice, the method
choice, the model, a memory check, the phasing, the symmetry check and origin, and the
output space group with its figures of merit and Hendrickson-Lattman coefficients.

Examples
--------
>>> import pattersolve
>>> s = pattersolve.phase("share/examples/alaala_1akz.mtz", method="classical", starts=1)
>>> s.method, s.spacegroup.hm, s.density.shape
('classical', 'P 1', (20, 20, 20))
>>> mtz = s.to_mtz()                           # a gemmi.Mtz: FP, FWT/PHWT, PHIB/FOM, HLA-HLD
>>> sorted(set(mtz.column_labels()) & {"FWT", "PHWT", "FOM"})
['FOM', 'FWT', 'PHWT']
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gemmi
import numpy as np

from . import PROGRAM, __version__, settings
from .errors import ExitCode, PattersolveError
from .reflections import Reflections

if TYPE_CHECKING:
    from .solve import Solution as Phasing
    from .transaction import OutputSet

log = logging.getLogger("pattersolve")

#: Valid values of ``method``.
METHODS = ("auto", "hybrid", "network", "classical", "chargeflip", "patterson")

#: What the data argument of :func:`phase` may be.
DataLike = str | os.PathLike[str] | gemmi.Mtz | Reflections | Any


@dataclass
class Options:
    """Every setting of one :func:`phase` call (logged and recorded in the summary)."""

    method: str = "auto"
    model: str | None = None
    backend: str = "auto"
    device: str = "auto"
    cycles: int = settings.DEFAULT_CYCLES
    starts: int = settings.DEFAULT_STARTS
    seed: int = 0
    threads: int | None = None
    average_rotations: bool = False
    max_memory: int | None = None
    formula: str | None = None


@dataclass
class Solution:
    """Phases, map and what the program knows about them, for one data set.

    Attributes
    ----------
    reflections
        The data as read (:class:`~pattersolve.reflections.Reflections`).
    density
        The map (``m |Fo|`` coefficients) on the full cell, ``(nu, nv, nw)``.
    spacegroup
        The space group the result is written in: the crystal's, or P1 when the solution
        failed the symmetry check.
    hkl, f, fom, hl
        Reflections in that space group's asymmetric unit (or the P1 half-sphere): Miller
        indices, complex ``|Fo| exp(i phi)``, figure of merit, HL coefficients ``(4, n)``.
    amplitude, sigma, free
        The measured ``|Fo|``, its sigma and the free flags for the same reflections.
    method, method_reason
        The method used and why it was chosen.
    confident, confidence_basis
        The program's claim about the result (None: nothing to check it against) and why.
    hand
        Which enantiomorph the map shows and on what basis (``stages["hand"]``).
    peaks
        Density peaks (:class:`pattersolve.peaks.Peaks`) where the method makes them.
    warnings
        Everything the user should know about the result.
    stages
        What each stage did and measured (the JSON summary's ``stages``).
    """

    reflections: Reflections
    density: np.ndarray
    spacegroup: gemmi.SpaceGroup
    hkl: np.ndarray
    f: np.ndarray
    fom: np.ndarray
    hl: np.ndarray
    amplitude: np.ndarray
    sigma: np.ndarray | None
    free: np.ndarray | None
    method: str
    method_reason: str
    confident: bool | None
    confidence_basis: str
    hand: dict[str, Any] | None
    peaks: Any
    warnings: list[str]
    stages: dict[str, Any]
    options: Options = field(default_factory=Options)
    seconds: float = 0.0
    _model_cache: tuple[str | None, Any] = field(default=(None, None), repr=False,
                                                 compare=False)

    # --- views ----------------------------------------------------------------------------
    @property
    def cell(self) -> gemmi.UnitCell:
        """The unit cell."""
        return self.reflections.cell

    @property
    def phases(self) -> np.ndarray:
        """Phases in degrees (PHIB)."""
        return np.degrees(np.angle(self.f))

    @property
    def mean_fom(self) -> float:
        """Mean figure of merit over the written reflections."""
        return float(np.mean(self.fom))

    def ccp4_map(self) -> gemmi.Ccp4Map:
        """The map as a :class:`gemmi.Ccp4Map` (header ready to write)."""
        from .output import ccp4_map

        return ccp4_map(self.density, self.cell, self.spacegroup, self._history())

    def to_mtz(self) -> gemmi.Mtz:
        """The phased MTZ as a :class:`gemmi.Mtz` (FP, SIGFP, FreeR_flag, FWT/PHWT,
        PHIB/FOM, HLA-HLD; the input's dataset names and wavelength)."""
        from .output import phased_mtz

        return phased_mtz(self.reflections.mtz, self.hkl, self.amplitude, self.sigma,
                          self.free, self.f, self.fom, self.hl, self.spacegroup,
                          self._history(), cell=self.cell,
                          source_label=_amplitude_label(self.reflections))

    def to_dataset(self) -> Any:
        """The phased MTZ as a ``reciprocalspaceship.DataSet`` (needs reciprocalspaceship)."""
        try:
            import reciprocalspaceship as rs
        except ImportError:
            raise PattersolveError("to_dataset() needs reciprocalspaceship",
                                   "pip install reciprocalspaceship", ExitCode.BACKEND) from None
        return rs.io.from_gemmi(self.to_mtz())

    def summary(self, files: dict[str, str | None] | None = None) -> dict[str, Any]:
        """The JSON summary (``files``: output paths by kind, as written)."""
        files = dict(files or {})
        return {
            "program": PROGRAM, "version": __version__,
            "input": self.reflections.summary,
            "method": self.method, "method_reason": self.method_reason,
            "map": files.get("map"), "mtz": files.get("mtz"),
            "spacegroup_out": self.spacegroup.hm, "grid": list(self.density.shape),
            "stages": self.stages, "mean_fom": round(self.mean_fom, 4),
            "confident": self.confident, "confidence_basis": self.confidence_basis,
            "hand": self.hand, "warnings": self.warnings,
            "peaks": (None if files.get("peaks") is None
                      else {"file": files["peaks"], "n": len(self.find_peaks())}),
            "seconds": round(self.seconds, 3),
        }

    def find_peaks(self) -> Any:
        """The method's peaks, else the strongest peaks of the map (at most PEAKS_MAX)."""
        if self.peaks is None:
            from .peaks import find_peaks

            self.peaks = find_peaks(self.density, self.cell, self.spacegroup,
                                    n_max=settings.PEAKS_MAX)
        return self.peaks

    def model(self, formula: str | None = None) -> Any:
        """A first atomic model from the map's peaks (:class:`pattersolve.molecule.Model`):
        elements from ``formula`` (else the one given to :func:`phase`, else the SHELX
        ``.ins``/CIF the symmetry came from, else C/N/O by peak strength), atoms moved by
        symmetry into connected molecules."""
        from .molecule import model_from_solution

        formula = formula or self.options.formula
        key = formula or ""
        if self._model_cache[0] != key:
            self._model_cache = (key, model_from_solution(self, formula,
                                                          _symmetry_file(self.reflections)))
        return self._model_cache[1]

    def res_text(self, formula: str | None = None) -> str:
        """The first model as a SHELX ``.res`` that SHELXL and Olex2 start from (the input
        ``.ins``'s SFAC/UNIT and refinement instructions kept)."""
        from .molecule import model_res_text

        return model_res_text(self.model(formula), _symmetry_file(self.reflections))

    def write_res(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the first model as a SHELX ``.res`` (atomically)."""
        return self.write(res_path=path, mtz_path=False, overwrite=overwrite)["res"]

    def patterson_map(self) -> tuple[np.ndarray, gemmi.SpaceGroup]:
        """The data's Patterson map on the solution's grid, and the Patterson group."""
        from .patterson import patterson, patterson_group

        refl = self.reflections
        return (patterson(refl.hkl, refl.intensity, refl.cell, self.density.shape),
                patterson_group(refl.spacegroup))

    def _history(self) -> str:
        source = Path(self.reflections.summary.get("file") or "data in memory").name
        return f"{self.method} phases from {source}"

    # --- files ----------------------------------------------------------------------------
    def write_map(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the CCP4 map (atomically)."""
        return self.write(map_path=path, mtz_path=False, overwrite=overwrite)["map"]

    def write_mtz(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the phased MTZ (atomically)."""
        return self.write(mtz_path=path, overwrite=overwrite)["mtz"]

    def write(self, map_path: str | os.PathLike[str] | None = None,
              mtz_path: str | os.PathLike[str] | None | bool = None,
              json_path: str | os.PathLike[str] | None = None,
              patterson_path: str | os.PathLike[str] | None = None,
              peaks_path: str | os.PathLike[str] | None = None, *,
              res_path: str | os.PathLike[str] | None = None,
              model_cif_path: str | os.PathLike[str] | None = None,
              overwrite: bool = False, outputs: OutputSet | None = None) -> dict[str, Path]:
        """Write the outputs as one transaction: all of them, or none and nothing changed.

        ``mtz_path`` defaults to the map's name with ``.mtz`` (see :func:`default_mtz_path`);
        ``False`` writes no MTZ. ``outputs``: an :class:`~pattersolve.transaction.OutputSet`
        already claimed for exactly these paths (the command claims it before the work).
        Returns the paths written by kind.
        """
        from .transaction import OutputSet

        paths = output_paths(self.reflections, map_path, mtz_path, json_path, patterson_path,
                             peaks_path, res_path, model_cif_path)
        own = outputs is None
        out = outputs or OutputSet(paths.values(), overwrite,
                                   protect=_input_files(self.reflections))
        try:
            if own:
                out.claim()
            self._stage(out, paths)
            out.commit()
        finally:
            if own:
                out.abort()
                out.release()
        return paths

    def _stage(self, out: OutputSet, paths: dict[str, Path]) -> None:
        from .molecule import model_structure
        from .output import json_text

        if "map" in paths:
            out.stage(paths["map"], self.ccp4_map().write_ccp4_map)
        if "mtz" in paths:
            out.stage(paths["mtz"], self.to_mtz().write_to_file)
        if "patterson" in paths:
            from .output import ccp4_map

            pmap, pg = self.patterson_map()
            out.stage(paths["patterson"],
                      ccp4_map(pmap, self.cell, pg, f"Patterson ({pg.hm})").write_ccp4_map)
        if "peaks" in paths:
            st = model_structure(self.model(), qpeaks=True)
            out.stage(paths["peaks"], st.write_pdb)
        if "model_cif" in paths:
            doc = model_structure(self.model()).make_mmcif_document()
            out.stage(paths["model_cif"], lambda tmp: doc.write_file(str(tmp)))
        if "res" in paths:
            text = self.res_text()
            out.stage(paths["res"], lambda tmp: Path(tmp).write_text(text))
        if "json" in paths:
            text = json_text(self.summary({k: str(v) for k, v in paths.items()}))
            out.stage(paths["json"], lambda tmp: Path(tmp).write_text(text))


def _amplitude_label(refl: Reflections) -> str | None:
    """The input column the amplitudes came from (its dataset is copied to the output)."""
    col = refl.summary.get("columns") or {}
    return col.get("amplitude") or (col.get("value") or [None])[0]


def _symmetry_file(refl: Reflections) -> str | None:
    """The SHELX ``.ins``/``.res`` or CIF that gave a ``.hkl`` file's cell and symmetry."""
    source = (refl.summary.get("observations") or {}).get("symmetry_from")
    return source if source and Path(source).is_file() else None


def _input_files(refl: Reflections) -> list[str]:
    """Files the data came from (never to be replaced by an output)."""
    return [str(f) for f in (refl.summary.get("file"), _symmetry_file(refl)) if f]


# -------------------------------------------------------------------------------------------
# output paths
# -------------------------------------------------------------------------------------------
def default_mtz_path(map_path: str | os.PathLike[str],
                     inputs: list[str] | tuple[str, ...] = ()) -> Path:
    """The phased MTZ's default path: the map's name with ``.mtz``.

    If that is an input file (``pattersolve data.mtz -o data.map``), ``_phased.mtz`` instead,
    so the default never replaces the data.
    """
    p = Path(map_path).with_suffix(".mtz")
    if p.resolve() in {Path(i).resolve() for i in inputs}:
        p = Path(map_path).with_name(Path(map_path).stem + "_phased.mtz")
    return p


def default_res_path(map_path: str | os.PathLike[str], data: str | os.PathLike[str],
                     inputs: list[str] | tuple[str, ...] = ()) -> Path | None:
    """The first model's default ``.res`` for SHELX ``.hkl`` data: the map's name with
    ``.res`` (``_model.res`` where that is an input file); None for other data."""
    name = Path(data).name.lower()
    if not (name.endswith(".hkl") or name.endswith(".hkl.gz")):
        return None
    p = Path(map_path).with_suffix(".res")
    if p.resolve() in {Path(i).resolve() for i in inputs}:
        p = Path(map_path).with_name(Path(map_path).stem + "_model.res")
    return p


def output_paths(refl: Reflections, map_path: Any, mtz_path: Any, json_path: Any,
                 patterson_path: Any, peaks_path: Any, res_path: Any = None,
                 model_cif_path: Any = None) -> dict[str, Path]:
    """The outputs by kind (the MTZ's default resolved; ``mtz_path=False``: no MTZ)."""
    inputs = _input_files(refl)
    if mtz_path is None and map_path is not None:
        mtz_path = default_mtz_path(map_path, inputs)
    named = {"map": map_path, "mtz": mtz_path or None, "json": json_path,
             "patterson": patterson_path, "peaks": peaks_path, "res": res_path,
             "model_cif": model_cif_path}
    return {k: Path(v) for k, v in named.items() if v is not None}


# -------------------------------------------------------------------------------------------
# the pipeline
# -------------------------------------------------------------------------------------------
def load(data: DataLike, **read_options: Any) -> Reflections:
    """Measured data from a path, a :class:`gemmi.Mtz`, a ``reciprocalspaceship.DataSet``
    or :class:`Reflections` (returned as they are)."""
    from .reflections import read_reflections

    if isinstance(data, Reflections):
        return data
    if type(data).__module__.startswith("reciprocalspaceship"):
        data = data.to_gemmi()
    if isinstance(data, gemmi.Mtz | str | os.PathLike):
        return read_reflections(data, **read_options)
    raise PattersolveError(f"cannot read data of type {type(data).__name__}",
                           "give a file path, a gemmi.Mtz, a reciprocalspaceship.DataSet or "
                           "pattersolve.Reflections", ExitCode.USAGE)


def _log_input(refl: Reflections) -> None:
    s = refl.summary
    if "columns" not in s:
        log.info("data: %d reflections in P1, cell %s", len(refl.hkl),
                 " ".join(f"{x:g}" for x in refl.cell.parameters))
        return
    log.info("read %s (%s): %s, cell %s", s.get("file"), s["format"], s["spacegroup"],
             " ".join(f"{x:g}" for x in s["cell"]))
    col = s["columns"]
    log.info("columns: %s %s%s%s; Patterson from %s, amplitudes from %s", col["kind"],
             "/".join(col["value"]), f", sigma {'/'.join(col['sigma'])}" if col["sigma"] else "",
             f", free {col['free']}" if col["free"] else "", s["patterson_from"],
             s["amplitudes_from"])
    obs = s.get("observations")
    log.info("reflections: %d used of %d%s (P1: %d), %.2f-%.2f A, completeness %.1f%%",
             s["reflections_used"], s["reflections_in_file"],
             f" (from {obs['observations']} observations)" if obs else "", s["reflections_p1"],
             s["resolution"][0], s["resolution"][1], 100 * s["completeness"])
    for note in s["notes"]:
        log.info("  note: %s", note)


def check_method(method: str) -> None:
    """Refuse a method name that does not exist, listing the valid ones."""
    if method not in METHODS:
        raise PattersolveError(f"unknown method {method!r}",
                               f"use one of: {', '.join(METHODS)}", ExitCode.USAGE)


def choose(refl: Reflections, method: str) -> tuple[str, str]:
    """The method to run and why (``auto`` decides by resolution, cell and completeness)."""
    check_method(method)
    if method != "auto":
        return method, "chosen by the caller"
    from .solve import choose_method

    return choose_method(refl.cell, refl.d_min, n_reflections=len(refl.hkl),
                         spacegroup=refl.spacegroup,
                         completeness=refl.summary.get("completeness"))


def _model_info(refl: Reflections, method: str, opt: Options) -> Any:
    """The network model the method needs (None for methods without a network)."""
    if method not in ("network", "hybrid"):
        return None
    from .runtime import resolve_model

    info = resolve_model(opt.model, (refl.cell.a, refl.cell.b, refl.cell.c), refl.d_min)
    log.info("model: %s (%s)", info.name, info.task)
    return info


def _predictor(info: Any, opt: Options) -> Any:
    """The network's predictor on the chosen backend (None without a model)."""
    if info is None:
        return None
    from .runtime import Predictor

    return Predictor(info, backend=opt.backend, device=opt.device, threads=opt.threads)


def _check_resources(refl: Reflections, shape: tuple[int, int, int], method: str,
                     info: Any, opt: Options) -> None:
    """Refuse, before any large allocation, a run estimated to need too much memory."""
    from .memory import check_memory, format_bytes

    need = check_memory(shape, method, len(refl.hkl), opt.max_memory, reflections=refl,
                        model=info, starts=opt.starts,
                        average_rotations=opt.average_rotations)
    log.info("memory: about %s at the peak", format_bytes(need))


def _run_method(refl: Reflections, shape: tuple[int, int, int], method: str,
                predictor: Any, opt: Options) -> Phasing:
    from .solve import locate_in_spacegroup, place_in_cell, solve, solve_chargeflip

    if method == "chargeflip":
        sol = solve_chargeflip(refl, seed=opt.seed)
    elif method == "patterson":
        from .heavy import solve_patterson
        from .shelx import formula_from_file

        ins = _symmetry_file(refl)
        formula = opt.formula or (formula_from_file(ins) if ins else None)
        sol = solve_patterson(refl, formula=formula, seed=opt.seed)
    else:
        device = "numpy"
        if opt.device == "cuda" or (opt.device == "auto" and predictor is not None
                                    and predictor.device == "cuda"):
            device = "cuda"
        sol = solve(refl, shape, method, predictor=predictor, cycles=opt.cycles,
                    starts=opt.starts, seed=opt.seed, device=device,
                    average_rotations=opt.average_rotations)
        sol = locate_in_spacegroup(refl, sol)
    return place_in_cell(refl, sol)


def _confidence_basis(method: str, confident: bool | None) -> str:
    if method == "chargeflip":
        return "symmetry agreement and model R (charge flipping)"
    if method == "patterson":
        return ("CC(E) of the completed heavy-atom model against models grown from random "
                "heavy-atom sites (Patterson method)")
    if confident is None:
        return ("not assessed: P1 data have no symmetry to check; see mean_fom and the "
                "amplitude residuals")
    return "agreement of the P1 solution with the crystal's symmetry"


def _in_output_group(refl: Reflections, sol: Phasing, warnings: list[str]
                     ) -> dict[str, Any]:
    """Reflections, phases and FOM in the output space group (P1 if the check failed)."""
    from .output import lookup_p1
    from .phases import fom_to_hl

    if refl.spacegroup.number == 1 or sol.symmetric:
        hkl = refl.asu_hkl
        out = {"spacegroup": refl.spacegroup, "hkl": hkl, "f": lookup_p1(refl.hkl, sol.f, hkl),
               "fom": lookup_p1(refl.hkl, sol.fom, hkl), "amplitude": refl.asu_amplitude,
               "sigma": refl.asu_sigma, "free": refl.asu_free}
    else:
        msg = (f"the {sol.method} solution failed the {refl.spacegroup.hm} symmetry check: map "
               "and MTZ are written in P1 (P1-expanded data, arbitrary origin)")
        log.warning("warning: %s", msg)
        warnings.append(msg)
        out = {"spacegroup": gemmi.SpaceGroup("P 1"), "hkl": refl.hkl, "f": sol.f,
               "fom": sol.fom, "amplitude": refl.amplitude, "sigma": refl.sigma,
               "free": refl.free}
    out["hl"] = np.asarray(fom_to_hl(out["fom"], np.angle(out["f"])))
    return out


def phase(data: DataLike, *, method: str = "auto", model: str | None = None,
          d_min: float | None = None, d_max: float | None = None, seed: int = 0,
          cycles: int = settings.DEFAULT_CYCLES, starts: int = settings.DEFAULT_STARTS,
          backend: str = "auto", device: str = "auto", threads: int | None = None,
          average_rotations: bool = False, max_memory: int | None = None,
          formula: str | None = None, **read_options: Any) -> Solution:
    """Phase measured data: read, choose the method, solve, check; a :class:`Solution`.

    Parameters
    ----------
    data
        A path (MTZ, mmCIF structure factors, SHELX ``.hkl``), a :class:`gemmi.Mtz`, a
        ``reciprocalspaceship.DataSet`` or a :class:`~pattersolve.reflections.Reflections`.
    method
        ``auto`` (by resolution and cell), ``hybrid`` (network + refinement), ``network``,
        ``classical`` (refinement from random phases) or ``chargeflip``.
    model
        Network model name or folder (default: chosen for the cell).
    d_min, d_max
        Resolution cut (Angstrom).
    seed, cycles, starts
        Random seed, refinement iterations per start and number of starts.
    backend, device, threads
        Where the network runs: ``auto``/``onnx``/``torch``, ``auto``/``cpu``/``cuda``.
    average_rotations
        Average the network's predictions over the rotations of the cell onto itself.
    max_memory
        Refuse (before any large allocation) a job estimated to need more bytes than this
        (default ``settings.DEFAULT_MAX_MEMORY``).
    formula
        The chemical formula (``"C12 H22 O11"``) for the first model's elements
        (:meth:`Solution.model`); default: from a SHELX ``.ins`` or CIF beside the data.
    **read_options
        ``i_label``, ``sigi_label``, ``f_label``, ``sigf_label``, ``free_label``, ``cell``,
        ``spacegroup``, ``french_wilson`` (:func:`pattersolve.reflections.read_reflections`).

    Raises
    ------
    PattersolveError
        For unusable input or options; its message names the problem and the fix.
    """
    t0 = time.perf_counter()
    opt = Options(method=method, model=model, backend=backend, device=device, cycles=cycles,
                  starts=starts, seed=seed, threads=threads,
                  average_rotations=average_rotations, max_memory=max_memory,
                  formula=formula)
    check_method(method)
    if formula is not None:
        from .shelx import parse_formula

        parse_formula(formula)  # a bad formula fails before the work
    if d_min is not None:
        read_options["d_min"] = d_min
    if d_max is not None:
        read_options["d_max"] = d_max
    refl = load(data, **read_options)
    _log_input(refl)
    return _phase_reflections(refl, opt, t0)


def _phase_reflections(refl: Reflections, opt: Options, t0: float) -> Solution:
    from .domain import domain_warnings
    from .patterson import cell_grid_shape

    method, reason = choose(refl, opt.method)
    log.info("method: %s (%s)", method, reason)
    shape = cell_grid_shape(refl.cell, refl.spacegroup, refl.hkl, refl.d_min)
    info = _model_info(refl, method, opt)
    _check_resources(refl, shape, method, info, opt)
    predictor = _predictor(info, opt)
    model_meta = None if info is None else {"cell": info.cell, "d_min": info.d_min,
                                            "name": info.name}
    warnings = domain_warnings(refl.cell, refl.d_min, len(refl.asu_hkl), refl.spacegroup,
                               model_info=model_meta, method=method)
    for w in warnings:  # said before the work, not after it
        log.warning("warning: %s", w)
    sol = _run_method(refl, shape, method, predictor, opt)
    for w in sol.warnings:
        log.warning("warning: %s", w)
    warnings += sol.warnings
    hand = sol.stages.get("hand")
    if hand:
        log.info("hand: %s (%s)", hand["basis"], hand["note"])
    out = _in_output_group(refl, sol, warnings)
    return Solution(reflections=refl, density=sol.density, method=method,
                    method_reason=reason, confident=sol.confident,
                    confidence_basis=_confidence_basis(method, sol.confident), hand=hand,
                    peaks=sol.peaks, warnings=warnings, stages=sol.stages, options=opt,
                    seconds=time.perf_counter() - t0, **out)
