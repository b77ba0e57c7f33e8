"""How much memory a run will need, and the check that refuses one that would not fit.

:func:`estimate_peak_bytes` adds up the arrays each stage of a method holds at once, on the
grids that stage works on, and takes the largest stage plus a fixed base (the interpreter,
numpy, gemmi and pattersolve; onnxruntime and its session for the network methods). The
stages and what they hold (counts of float64 grids, ``g = 8 N`` bytes on a grid of ``N``
points; a complex half grid of ``numpy.fft.rfftn`` is about one ``g``):

* ``read``: the reflections (about :data:`READ_BYTES_PER_REFLECTION` each) and the index box
  that :func:`pattersolve.reflections.read_reflections` enumerates to count the possible
  reflections (:data:`COUNT_BYTES_PER_INDEX` per index, boxes up to :data:`COUNT_BOX_LIMIT`).
* ``refine`` (classical, hybrid; :func:`pattersolve.refine.refine_phases` on the cell grid):
  the problem's half grids (target, tolerance, bounds, ``1/d^2``: 2.8 g), one starting
  density and one result per start (2 g each), the iterate, the two previous projections and
  the support (3.3 g), and the amplitude projection's temporaries and FFT copies (6.4 g): see
  :data:`REFINE_GRIDS`; per reflection the starting phases and each start's model ``F``.
* ``predict`` (network, hybrid; :func:`pattersolve.solve.predict` on the model grid of ``M``
  points): the Patterson on the model grid, its float32 copy and the network's activations
  (:func:`network_bytes_per_point`), then the prediction's structure factors (complex FFT:
  :data:`PREDICT_BYTES_PER_POINT`). With ``--average-rotations`` the rotated Pattersons and
  predictions (:data:`ROTATION_BYTES_PER_POINT` per rotation) and batches of
  ``ROTATION_BATCH`` maps through the network. ONNX Runtime keeps the activations' memory
  (its arena) until the end of the run, so every later stage holds it too.
* ``hand`` (hybrid): the origin search of :func:`pattersolve.phasematch.match_phases` on its
  oversampled grid (:data:`HAND_SEARCH_BYTES_PER_POINT`).
* ``symmetry`` (every method, space groups other than P1):
  :func:`pattersolve.symmetry.locate_origin` on twice the symmetry grid along each axis
  (``F = 8 S`` points): the map, its transform, the grid indices (3 int64 per point) and the
  correlation sum, plus per operator the indices of ``R x``, their float temporaries and the
  operator's cross-correlation: :data:`ORIGIN_BYTES_PER_POINT`.
* ``chargeflip``: the flipping iterations and the symmetrised maps on the symmetry grid, the
  origin search (as above; in P1 only the fine map), and the peak-model structure factors of
  :func:`pattersolve.abinitio.peak_model_f` (8192 reflections at a time against every
  symmetry image of up to ``2 V / 18`` peaks: :data:`PEAK_MODEL_BYTES`).
* ``output``: the final map, its Patterson (``--patterson-map``) and the written copies.

The numbers are the arrays of the code as it stands; ``bench/bench_memory.py`` compares the
estimate with the peak resident memory of the real command (BENCHMARKS.md, memory estimate).
On a GPU (``--device cuda``) refinement runs in the GPU's memory and the estimate of the host's
memory is high.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import settings
from .errors import ExitCode, PattersolveError

if TYPE_CHECKING:  # pragma: no cover
    from .reflections import Reflections
    from .runtime import ModelInfo

log = logging.getLogger("pattersolve")

MIB = 2**20
GIB = 2**30

#: Interpreter, numpy, gemmi, click and pattersolve's modules: the peak resident memory after
#: the imports (``bench/bench_memory.py`` measures it) and a few MiB of the run's small arrays.
BASE_BYTES = 45 * MIB
#: What ``import onnxruntime`` adds (measured by ``bench/bench_memory.py`` too).
ONNXRUNTIME_BYTES = 20 * MIB
#: An ONNX Runtime session: this many times the size of ``model.onnx`` (fp16 weights made
#: fp32 and pre-packed for the convolutions), plus :data:`SESSION_BYTES`.
SESSION_FILE_FACTOR = 6
SESSION_BYTES = 4 * MIB
#: Per reflection of the P1 half-sphere while the input is read and expanded.
READ_BYTES_PER_REFLECTION = 100
#: Per Miller index of the box enumerated to count the possible reflections (int64 indices,
#: their float copy, ``1/d^2`` and masks).
COUNT_BYTES_PER_INDEX = 72
#: Boxes larger than this are not enumerated (``reflections._count_possible`` estimates).
COUNT_BOX_LIMIT = 2e7
#: Refinement on the cell grid: float64 grids held at its peak, ``a + b * starts`` (2 more
#: with a starting prediction: its map on the cell grid and the guided start's prior).
REFINE_GRIDS = (12.5, 2.0)
#: Refinement, per reflection: the half-grid indices, ``a + b * starts`` bytes.
REFINE_BYTES_PER_REFLECTION = (60, 24)
#: Prediction, per model-grid point: the Patterson (8 B), its complex transform (2 x 16 B),
#: the scaled float32 input and output, and the prediction's complex structure factors.
PREDICT_BYTES_PER_POINT = 72
#: Per rotation and model-grid point with ``--average-rotations``: the distinct rotated
#: Pattersons, the turned-back predictions and their aligned stack (3 float64 maps).
ROTATION_BYTES_PER_POINT = 24
#: Per point of phasematch's origin-search grid (the grid's fractional coordinates, the
#: permitted-shift mask, the complex map and its transform).
HAND_SEARCH_BYTES_PER_POINT = 128
#: locate_origin per point of its fine grid: in P1 (the map only), with one operator besides
#: the identity, and with more (the previous operator's arrays live while the next is made).
ORIGIN_BYTES_PER_POINT = {1: 25, 2: 168, 3: 208}
#: Charge flipping on its grid (float64 maps): the symmetrised E-maps and the peak search of
#: the recycling (the flipping iterations hold fewer: their maps and transforms, 6).
CHARGEFLIP_GRIDS = 19.0
#: peak_model_f: bytes per (reflection in a block, symmetry image of a peak).
PEAK_MODEL_BYTES = 48
#: Reflections per block in peak_model_f.
PEAK_MODEL_BLOCK = 8192
#: The output map, its Patterson and the written copies (float64 grids of the map's grid).
OUTPUT_GRIDS = 6.0
#: A suggested resolution cut leaves at least this many reflections (refinement's minimum).
MIN_REFLECTIONS_LEFT = 10

#: ``patterson`` (pattersolve.heavy) is estimated as charge flipping: maps on the same
#: symmetry grid and a peak model; not yet checked against measured peaks (bench_memory).
METHODS = ("classical", "hybrid", "network", "chargeflip", "patterson")
_UNITS = {"B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


# ---------------------------------------------------------------------------------------------
# user text -> bytes
# ---------------------------------------------------------------------------------------------
def physical_memory() -> int | None:
    """Bytes of memory this process may use: the machine's RAM, or a smaller cgroup limit
    (containers); None where the system does not say."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < 2**60:
            sizes.append(int(text))
    sizes = [s for s in sizes if s > 0]
    return min(sizes) if sizes else None


def parse_memory(text: str) -> int:
    """Bytes from text such as ``8G``, ``500M``, ``1.5GiB``, ``2048`` (bytes) or ``50%``.

    Units are binary (``K`` = 1024) and case-insensitive, with an optional ``B`` or ``iB``; a
    percentage is of :func:`physical_memory`.

    Raises
    ------
    PattersolveError
        ``ExitCode.USAGE`` for anything else, or a size that is not positive.
    """
    fix = "give a size such as 8G, 500M or 50% (of this machine's memory)"
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(%|[kmgt](?:i?b)?|b)?\s*", str(text),
                     re.IGNORECASE)
    if m is None:
        raise PattersolveError(f"cannot read the memory size {text!r}", fix, ExitCode.USAGE)
    value, unit = float(m.group(1)), (m.group(2) or "B").upper()
    if unit == "%":
        total = physical_memory()
        if total is None:
            raise PattersolveError(f"{text!r} is a share of this machine's memory, which the "
                                   "system does not report", "give a size such as 8G",
                                   ExitCode.USAGE)
        if not 0 < value <= 100:
            raise PattersolveError(f"memory share {text!r} is not in (0, 100]%", fix,
                                   ExitCode.USAGE)
        return int(total * value / 100)
    size = int(value * _UNITS[unit[0]])
    if size <= 0:
        raise PattersolveError(f"memory size {text!r} is not positive", fix, ExitCode.USAGE)
    return size


def format_bytes(n: float) -> str:
    """``512 MiB``, ``1.2 GiB``, ``3.4 TiB``."""
    for unit, size in (("TiB", 2**40), ("GiB", GIB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / MIB:.0f} MiB"


# ---------------------------------------------------------------------------------------------
# the estimate
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Network:
    """What running a model costs: activations per model-grid point, and its session."""

    bytes_per_point: float
    session_bytes: int


def network_bytes_per_point(config: dict[str, Any]) -> float:
    """ONNX Runtime's activations per grid point (float32) for a network config.

    At full resolution the encoder holds its two convolutions' outputs and the circularly
    padded input of the next (about 4 maps of ``max(enc, feat)`` channels); with ``unet_skip``
    the decoder also holds the encoder's features, their concatenation with the upsampled
    features and its padded copy (5 more).
    """
    channels = max(int(config.get("enc_channels", 16)), int(config.get("feat_channels", 16)))
    maps = 4 + (5 if config.get("unet_skip") else 0)
    return 4.0 * channels * maps


def network_cost(model: ModelInfo) -> Network:
    """:class:`Network` of an installed model (from its card and the ONNX file's size)."""
    config = json.loads(model.metadata.get("config", "{}") or "{}")
    onnx = Path(model.path) / "model.onnx"
    size = onnx.stat().st_size if onnx.is_file() else 0
    return Network(bytes_per_point=network_bytes_per_point(config),
                   session_bytes=ONNXRUNTIME_BYTES + SESSION_BYTES + SESSION_FILE_FACTOR * size)


def _points(shape: Sequence[int] | None) -> int:
    return 0 if shape is None else int(np.prod([int(n) for n in shape], dtype=np.float64))


def _origin_bytes(symmetry_shape: Sequence[int] | None, n_operators: int) -> float:
    fine = 8 * _points(symmetry_shape)
    return ORIGIN_BYTES_PER_POINT[min(max(n_operators, 1), 3)] * fine


def estimate_phases(shape: Sequence[int], method: str, n_reflections: int, *,
                    starts: int = settings.DEFAULT_STARTS,
                    symmetry_shape: Sequence[int] | None = None, n_operators: int = 1,
                    model_shape: Sequence[int] | None = None, network: Network | None = None,
                    n_rotations: int = 1, search_points: int = 0, peak_images: int = 0,
                    count_box: float = 0.0) -> dict[str, float]:
    """Bytes held at the peak of each stage of a run (without the base); see the module
    docstring. Parameters as :func:`estimate_peak_bytes`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    n_refl = float(n_reflections)
    g = 8.0 * _points(shape)
    boxed = count_box if count_box <= COUNT_BOX_LIMIT else 0.0
    phases = {"read": READ_BYTES_PER_REFLECTION * n_refl + COUNT_BYTES_PER_INDEX * boxed}
    held = 0.0  # kept to the end of the run once made (the network's arena)
    if method in ("network", "hybrid"):
        m = _points(model_shape)
        net = network or Network(0.0, 0)
        batch = min(n_rotations, settings.ROTATION_BATCH) if n_rotations > 1 else 1
        held = net.bytes_per_point * m * batch
        rotations = ROTATION_BYTES_PER_POINT * m * n_rotations if n_rotations > 1 else 0.0
        phases["predict"] = held + rotations + PREDICT_BYTES_PER_POINT * m
        held += 4.0 * m  # the prediction (float32) stays with the solution
    if method in ("classical", "hybrid"):
        k = max(1, int(starts))
        grids = REFINE_GRIDS[0] + REFINE_GRIDS[1] * k + (2.0 if method == "hybrid" else 0.0)
        per_refl = REFINE_BYTES_PER_REFLECTION[0] + REFINE_BYTES_PER_REFLECTION[1] * k
        phases["refine"] = held + grids * g + per_refl * n_refl
    if method == "hybrid":
        phases["hand"] = held + 2 * g + HAND_SEARCH_BYTES_PER_POINT * search_points
    if method == "network":
        phases["map"] = held + 4 * g + 64 * n_refl
    if method in ("chargeflip", "patterson"):
        s = 8.0 * _points(symmetry_shape)
        block = min(n_refl, PEAK_MODEL_BLOCK)
        phases["chargeflip"] = CHARGEFLIP_GRIDS * s + 2 * s
        phases["origin"] = _origin_bytes(symmetry_shape, n_operators) + s
        phases["peak model"] = PEAK_MODEL_BYTES * block * peak_images + 2 * s
        g = max(g, s) if symmetry_shape is not None else g
    elif n_operators > 1 and symmetry_shape is not None:
        phases["symmetry"] = held + g + _origin_bytes(symmetry_shape, n_operators)
    phases["output"] = held + OUTPUT_GRIDS * g + 64 * n_refl
    return phases


def estimate_peak_bytes(shape: Sequence[int], method: str, n_reflections: int, *,
                        starts: int = settings.DEFAULT_STARTS,
                        symmetry_shape: Sequence[int] | None = None, n_operators: int = 1,
                        model_shape: Sequence[int] | None = None,
                        network: Network | None = None, n_rotations: int = 1,
                        search_points: int = 0, peak_images: int = 0,
                        count_box: float = 0.0) -> int:
    """Peak memory (bytes) of a run of ``method`` on the cell grid ``shape``.

    Parameters
    ----------
    shape
        The cell grid (:func:`pattersolve.patterson.cell_grid_shape`).
    method
        ``classical``, ``hybrid``, ``network`` or ``chargeflip`` (not ``auto``).
    n_reflections
        Reflections of the P1 half-sphere.
    starts
        Refinement starts (``--starts``).
    symmetry_shape, n_operators
        The grid of the symmetry check and of charge flipping
        (:func:`pattersolve.symmetry.grid_for_chargeflip`) and the space group's number of
        operators (1: P1, no symmetry check). Without them the symmetry check is left out.
    model_shape, network, n_rotations
        The network's grid (:func:`pattersolve.solve.model_grid`), its cost
        (:func:`network_cost`) and the rotations averaged (``--average-rotations``; 1: off).
    search_points
        Points of the hybrid hand check's origin-search grid.
    peak_images
        Charge flipping: peaks times symmetry operators in the final peak model.
    count_box
        Miller indices enumerated to count the possible reflections.

    Returns
    -------
    int
        Bytes: the base plus the largest stage (:func:`estimate_phases`).
    """
    phases = estimate_phases(shape, method, n_reflections, starts=starts,
                             symmetry_shape=symmetry_shape, n_operators=n_operators,
                             model_shape=model_shape, network=network, n_rotations=n_rotations,
                             search_points=search_points, peak_images=peak_images,
                             count_box=count_box)
    base = BASE_BYTES
    if method in ("network", "hybrid"):
        base += (network.session_bytes if network is not None
                 else ONNXRUNTIME_BYTES + SESSION_BYTES)
    return int(base + max(phases.values()))


# ---------------------------------------------------------------------------------------------
# the estimate of a run on given data
# ---------------------------------------------------------------------------------------------
def _resolve(model: ModelInfo | str | None, refl: Reflections) -> ModelInfo:
    from .runtime import ModelInfo, resolve_model

    if isinstance(model, ModelInfo):
        return model
    return resolve_model(model, (refl.cell.a, refl.cell.b, refl.cell.c), refl.d_min)


def run_arguments(refl: Reflections, method: str, model: ModelInfo | str | None = None,
                  average_rotations: bool = False, hkl: np.ndarray | None = None,
                  d_min: float | None = None) -> dict[str, Any]:
    """The keyword arguments of :func:`estimate_peak_bytes` for a run on ``refl``.

    ``hkl`` and ``d_min`` replace the data's own (a resolution cut); ``model`` (a
    :class:`~pattersolve.runtime.ModelInfo`, a name or None: chosen for the data as the run
    does) matters only to the network methods. Only small arrays (of the reflections' size)
    are made.
    """
    from .abinitio import expected_atoms
    from .fourier import grid_shape_for_spacing
    from .symmetry import grid_for_chargeflip

    hkl = refl.hkl if hkl is None else hkl
    d_min = refl.d_min if d_min is None else float(d_min)
    cell, sg = refl.cell, refl.spacegroup
    n_ops = len(sg.operations())
    box = math.prod(2 * math.floor(x / d_min) + 1 for x in (cell.a, cell.b, cell.c))
    args: dict[str, Any] = {"n_operators": n_ops, "count_box": float(box),
                            "symmetry_shape": grid_for_chargeflip(cell, hkl, sg)}
    if method in ("chargeflip", "patterson"):
        n_exp = expected_atoms(cell, sg)
        peaks = max(2, math.ceil(1.2 * n_exp), math.ceil(2 * n_exp))
        args["peak_images"] = peaks * n_ops
    if method in ("network", "hybrid"):
        info = _resolve(model, refl)
        args["model_shape"] = grid_shape_for_spacing(cell, info.grid_spacing, multiple=2)
        args["network"] = network_cost(info)
        if average_rotations:
            from .rotations import grid_rotations

            args["n_rotations"] = max(1, len(grid_rotations(cell, args["model_shape"])))
    if method == "hybrid":
        import gemmi

        from .phasematch import _search_grid

        args["search_points"] = _points(_search_grid(hkl, gemmi.SpaceGroup("P 1")))
    return args


def _estimate_at(refl: Reflections, method: str, d_min: float, model: Any, starts: int,
                 average_rotations: bool) -> int | None:
    """The estimate with the data cut at ``d_min`` (None: too few reflections left)."""
    from .patterson import cell_grid_shape

    keep = refl.d >= d_min - settings.D_MIN_EPS
    if keep.sum() < MIN_REFLECTIONS_LEFT:
        return None
    hkl = refl.hkl[keep]
    d_cut = float(refl.d[keep].min())
    shape = cell_grid_shape(refl.cell, refl.spacegroup, hkl, d_cut)
    args = run_arguments(refl, method, model, average_rotations, hkl=hkl, d_min=d_cut)
    return estimate_peak_bytes(shape, method, len(hkl), starts=starts, **args)


def _nice_up(x: float) -> float:
    """``x`` rounded up to two significant digits (at least 0.1)."""
    if x <= 0.1:
        return 0.1
    scale = 10.0 ** (math.floor(math.log10(x)) - 1)
    return round(math.ceil(x / scale - 1e-9) * scale, 6)


def coarser_d_min(refl: Reflections, method: str, max_bytes: int, model: Any = None,
                  starts: int = settings.DEFAULT_STARTS, average_rotations: bool = False
                  ) -> tuple[float, int] | None:
    """The finest resolution cut (two significant digits, leaving at least
    :data:`MIN_REFLECTIONS_LEFT` reflections) whose run fits in ``max_bytes``, with its
    estimate; None if no cut fits."""
    if len(refl.d) < MIN_REFLECTIONS_LEFT:
        return None
    d_top = float(np.partition(refl.d, len(refl.d) - MIN_REFLECTIONS_LEFT)[
        len(refl.d) - MIN_REFLECTIONS_LEFT])  # keeps MIN_REFLECTIONS_LEFT reflections
    candidates = []
    d = _nice_up(refl.d_min * 1.02)
    while d <= d_top:
        candidates.append(d)
        d = _nice_up(d * 1.05)
    found = None
    lo, hi = 0, len(candidates) - 1
    while lo <= hi:  # the estimate falls as the cut coarsens: bisect
        mid = (lo + hi) // 2
        est = _estimate_at(refl, method, candidates[mid], model, starts, average_rotations)
        if est is not None and est <= max_bytes:
            found, hi = (candidates[mid], est), mid - 1
        else:
            lo = mid + 1
    return found


def _other_methods(refl: Reflections | None, method: str) -> list[str]:
    """Methods to suggest instead of ``method``: refinement alone first, the network methods
    only in place of each other (their model is known), charge flipping at atomic
    resolution."""
    others = ["classical"]
    if method in ("network", "hybrid"):
        others += [m for m in ("network", "hybrid") if m != method]
    if refl is not None and refl.d_min <= settings.ATOMIC_D_MIN:
        others.append("chargeflip")
    return [m for m in others if m != method]


def _cheaper_method(refl: Reflections | None, shape: Sequence[int], method: str,
                    n_reflections: int, max_bytes: int, args: dict[str, Any], model: Any,
                    starts: int, average_rotations: bool) -> tuple[str, int] | None:
    """The cheapest other method that fits, with its estimate (None: none does)."""
    best = None
    for other in _other_methods(refl, method):
        if refl is not None:
            kw = run_arguments(refl, other, model, average_rotations)
        else:
            kw = {k: v for k, v in args.items() if other in ("network", "hybrid")
                  or k not in ("model_shape", "network", "n_rotations", "search_points")}
        est = estimate_peak_bytes(shape, other, n_reflections, starts=starts, **kw)
        if est <= max_bytes and (best is None or est < best[1]):
            best = (other, est)
    return best


def _advice(refl: Reflections | None, shape: Sequence[int], method: str, n_reflections: int,
            est: int, limit: int, args: dict[str, Any], model: Any, starts: int,
            average_rotations: bool) -> str:
    """What would fit: a coarser ``--d-min``, a cheaper ``--method`` (with a cut if it needs
    one), a larger ``--max-memory``."""
    fixes = ["cut the resolution with a larger --d-min"] if refl is None else []
    if refl is not None:
        cut = coarser_d_min(refl, method, limit, model, starts, average_rotations)
        if cut is not None:
            fixes.append(f"cut the resolution with --d-min {cut[0]:g} (about "
                         f"{format_bytes(cut[1])})")
    other = _cheaper_method(refl, shape, method, n_reflections, limit, args, model, starts,
                            average_rotations)
    if other is not None:
        fixes.append(f"use --method {other[0]} (about {format_bytes(other[1])})")
    elif refl is not None and not fixes:
        for name in _other_methods(refl, method):
            both = coarser_d_min(refl, name, limit, model, starts, average_rotations)
            if both is not None:
                fixes.append(f"use --method {name} with --d-min {both[0]:g} (about "
                             f"{format_bytes(both[1])})")
                break
    total = physical_memory()
    fixes.append(f"raise the limit with --max-memory {math.ceil(est / GIB)}G "
                 + (f"(this machine has {format_bytes(total)})" if total
                    else "if the machine has that much"))
    return ", or ".join(fixes)


def check_memory(shape: Sequence[int], method: str, n_reflections: int,
                 max_bytes: int | None = None, *, reflections: Reflections | None = None,
                 model: ModelInfo | str | None = None, starts: int = settings.DEFAULT_STARTS,
                 average_rotations: bool = False) -> int:
    """Refuse a run whose estimated peak memory is above ``max_bytes``, before it starts.

    Parameters
    ----------
    shape, method, n_reflections
        As :func:`estimate_peak_bytes` (the method chosen, not ``auto``).
    max_bytes
        The limit (``--max-memory``); None: :data:`pattersolve.settings.DEFAULT_MAX_MEMORY`.
    reflections
        The data: with them the estimate includes the symmetry check, the network's grid,
        charge flipping's peak model and the count of possible reflections, and the advice
        names a ``--d-min`` that fits. Without them only the cell grid counts.
    model
        The network's model (a :class:`~pattersolve.runtime.ModelInfo`, a name, or None for
        the one the run picks for the data); network and hybrid only.
    starts, average_rotations
        ``--starts`` and ``--average-rotations``.

    Returns
    -------
    int
        The estimate in bytes.

    Raises
    ------
    PattersolveError
        ``ExitCode.RESOURCES``, naming the estimate, the limit and what would fit:
        ``--d-min``, ``--method``, ``--max-memory``.
    """
    default = max_bytes is None
    limit = parse_memory(settings.DEFAULT_MAX_MEMORY) if default else int(max_bytes)
    args = {} if reflections is None else run_arguments(reflections, method, model,
                                                        average_rotations)
    est = estimate_peak_bytes(shape, method, n_reflections, starts=starts, **args)
    log.debug("memory: about %s estimated for %s on the grid %s (limit %s)", format_bytes(est),
             method, "x".join(str(int(n)) for n in shape), format_bytes(limit))
    if est <= limit:
        return est
    share = " of this machine's memory" if settings.DEFAULT_MAX_MEMORY.endswith("%") else ""
    where = f"the default, {settings.DEFAULT_MAX_MEMORY}{share}" if default else "--max-memory"
    raise PattersolveError(
        f"the {method} run on the {'x'.join(str(int(n)) for n in shape)} grid would need about "
        f"{format_bytes(est)} of memory, above the limit of {format_bytes(limit)} ({where})",
        _advice(reflections, shape, method, n_reflections, est, limit, args, model, starts,
                average_rotations), ExitCode.RESOURCES)
