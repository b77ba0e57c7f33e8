"""Warnings when a data set lies outside what the methods were built and tested for.

:func:`domain_warnings` returns plain sentences for the log and the JSON summary; an empty
list means nothing unusual was noticed. The network's training domain comes from the model's
metadata when given (``model_info``: keys ``cell`` (edge, A, or three edges), ``d_min`` (A),
``grid_spacing`` (A)); otherwise the paper's (PHASING_NOTES.md): 10-20 A cubic P1 cells,
dipeptides, 1.5 A data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gemmi

from .settings import ATOMIC_D_MIN, VOLUME_PER_ATOM
from .symmetry import space_group_ops

__all__ = ["domain_warnings", "TRAINING_CELL_EDGE", "TRAINING_D_MIN"]

#: largest cell edge of the training cells (A) and the training resolution (A), by default
TRAINING_CELL_EDGE = 20.0
TRAINING_D_MIN = 1.5
#: non-hydrogen atoms the training fragments hold at most (a dipeptide: ~20)
TRAINING_MAX_ATOMS = 25


def _edges(value: Any) -> list[float]:
    if value is None:
        return [TRAINING_CELL_EDGE]
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, str):
        return [float(v) for v in value.replace(",", " ").split()]
    return [float(v) for v in value]


def domain_warnings(cell: gemmi.UnitCell, d_min: float, n_reflections: int,
                    spacegroup: gemmi.SpaceGroup | None,
                    model_info: Mapping[str, Any] | None = None,
                    method: str | None = None) -> list[str]:
    """Plain-text warnings about the data relative to the methods' domain.

    Parameters
    ----------
    cell, d_min, n_reflections, spacegroup
        The data (``n_reflections``: unique reflections in the space group, or P1).
    model_info
        Network metadata (``cell``, ``d_min``); None: the defaults above.
    method
        ``"network"``, ``"hybrid"``, ``"classical"`` or ``"chargeflip"``: only warnings that
        matter for it (None: all).
    """
    info = dict(model_info or {})
    out: list[str] = []
    n_ops = len(space_group_ops(spacegroup))
    atoms_cell = cell.volume / VOLUME_PER_ATOM
    atoms_asu = atoms_cell / n_ops
    uses_network = method in (None, "network", "hybrid")
    if uses_network:
        train_edge = max(_edges(info.get("cell")))
        train_d = float(info.get("d_min", TRAINING_D_MIN))
        longest = max(cell.a, cell.b, cell.c)
        if longest > 1.5 * train_edge:
            out.append(
                f"the cell ({cell.a:.1f} x {cell.b:.1f} x {cell.c:.1f} A) is much larger than "
                f"the network's training cells (edges up to {train_edge:.0f} A): the network "
                "prediction is extrapolated and may be poor")
        if d_min > train_d + 0.25:
            out.append(
                f"the data ({d_min:.2f} A) are of lower resolution than the network was "
                f"trained on ({train_d:.2f} A): expect a blurred, less reliable prediction")
        train_cell = info.get("cell")
        same_cell = (train_cell is not None and not isinstance(train_cell, (int, float, str))
                     and len(train_cell) == 3 and all(
                         abs(e / t - 1) < 0.1 for e, t in zip(
                             sorted((cell.a, cell.b, cell.c)), sorted(train_cell), strict=True)))
        # The count assumes a crystal packed at ~18 A^3 per atom. In the model's own training
        # cell (one fragment in a mostly empty box) that assumption, not the data, is wrong:
        # the cell volume alone cannot tell a packed crystal from a sparse cell there.
        if atoms_cell > 2 * TRAINING_MAX_ATOMS and not same_cell:
            out.append(
                f"the cell holds about {atoms_cell:.0f} non-hydrogen atoms "
                f"({n_ops} asymmetric unit(s) of ~{atoms_asu:.0f}); the network was trained "
                f"on fragments of up to ~{TRAINING_MAX_ATOMS} atoms alone in a cell")
        if abs(cell.alpha - 90) > 0.5 or abs(cell.beta - 90) > 0.5 or abs(cell.gamma - 90) > 0.5:
            out.append(f"the cell is not orthogonal (alpha, beta, gamma = {cell.alpha:.1f}, "
                       f"{cell.beta:.1f}, {cell.gamma:.1f}); the network was trained on "
                       "orthogonal cells")
    if method in (None, "chargeflip"):
        if d_min > ATOMIC_D_MIN:
            out.append(
                f"charge flipping needs atomic resolution (d_min <= {ATOMIC_D_MIN} A); these "
                f"data reach {d_min:.2f} A, so atoms are not resolved and a charge-flipping "
                "solution is unlikely to be right")
    if n_reflections < 100:
        out.append(f"only {n_reflections} reflections: any phasing result is poorly determined")
    elif atoms_asu > 0 and n_reflections / max(atoms_cell, 1.0) < 10:
        out.append(
            f"only {n_reflections / max(atoms_cell, 1.0):.1f} reflections per expected atom "
            "in the cell: the phasing problem is poorly determined")
    if atoms_asu > 200:
        out.append(f"about {atoms_asu:.0f} non-hydrogen atoms per asymmetric unit: beyond "
                   "what ab initio methods here are meant for (use molecular replacement "
                   "or experimental phasing)")
    return out
