"""From density peaks to a first model: elements assigned, molecules assembled.

:func:`build_model` takes the peaks of an atomic-resolution map (one per symmetry orbit) and

1. measures each peak's strength: its height and, when a map is given, the density
   integrated within :data:`INTEGRATION_RADIUS` of it, each relative to its median over the
   expected atoms, averaged (on the measured sets of BENCHMARKS.md neither alone ranked the
   elements as well); peaks within :data:`SPECIAL_SNAP` of a special position are put on it
   (occupancy 1/multiplicity);
2. decides how many peaks are atoms and of which elements. With a formula (per formula unit;
   Z from the file, else from the cell volume at :data:`VOLUME_PER_ATOM` A^3 per non-H atom)
   the asymmetric unit's non-H atoms are ranked against the peaks, heaviest element on the
   strongest peak; the labels are then exchanged in pairs while that lowers a cost of
   electron-count misfit, too many neighbours (O at most 2, halogens 1, C 4, ...) and bond
   lengths far from the pair's typical lengths (:data:`TYPICAL_BONDS`; else the sum of
   covalent radii). Without a formula the peaks above :data:`NOISE_FRACTION` of the typical
   peak are atoms, labelled C, N or O by their strength relative to the median atom (taken
   for carbon) and too many neighbours: a guess, said so in :attr:`Model.notes`. No
   hydrogens;
3. moves the atoms by symmetry operators and lattice translations into connected fragments
   (bonded: closer than the sum of covalent radii + :data:`BOND_TOLERANCE`), grown from the
   heaviest atom along the shortest bonds, the largest fragment's centre put nearest the
   cell's centre and every further fragment as close as it comes to those before it (a
   counter-ion beside its molecule); the remaining peaks (Q-peaks) go to their image nearest
   an atom.

:func:`model_structure` gives the model as a :class:`gemmi.Structure` (chain A, one residue
``UNL`` per fragment, atoms C1, O2, ...) for PDB and mmCIF files; :func:`model_res_text` as a
SHELX ``.res`` (:mod:`pattersolve.shelx`).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

from .shelx import (
    Formula,
    ResAtom,
    formula_from_file,
    kept_instructions,
    parse_formula,
    res_text,
    wavelength_from_file,
)

__all__ = ["Atom", "Model", "build_model", "model_structure", "model_res_text",
           "write_model_res", "write_model_mmcif", "model_from_solution", "asu_counts",
           "formula_units", "model_small_cif_text", "assemble", "integrate_peaks"]

# constants of the model building (A unless said)
VOLUME_PER_ATOM = 18.0  # A^3 per non-hydrogen atom: Z from the cell volume
INTEGRATION_RADIUS = 0.7  # density summed within this of a peak
SPECIAL_SNAP = 0.4  # a peak this close to its own symmetry image sits on the special position
BOND_TOLERANCE = 0.4  # bonded: distance < r_cov(a) + r_cov(b) + this
NOISE_FRACTION = 0.4  # without a formula: atoms are peaks above this x the typical atom
COUNT_SIGMA = 0.15  # relative error of an electron count measured from the map
BOND_SIGMA = 0.05  # spread of a bond length about the nearest typical length
RADII_SIGMA = 0.12  # ... about the sum of covalent radii, for pairs not in TYPICAL_BONDS
DEFAULT_U = 0.05  # A^2, isotropic U written for every atom
#: The most neighbours an element has in a molecule (others: 6; metals: 8).
MAX_NEIGHBOURS = {"H": 1, "F": 1, "Cl": 1, "Br": 1, "I": 1, "O": 2, "S": 4, "Se": 2,
                  "N": 4, "C": 4, "B": 4, "Si": 4, "P": 5}
#: Typical bond lengths (A) of common pairs, single to triple and aromatic (rounded from the
#: CSD averages of Allen et al., J. Chem. Soc. Perkin Trans. 2, 1987, S1-S19).
TYPICAL_BONDS: dict[frozenset[str], tuple[float, ...]] = {
    frozenset(k.split("-")): v for k, v in {
        "C-C": (1.20, 1.34, 1.39, 1.53), "C-N": (1.15, 1.28, 1.34, 1.47),
        "C-O": (1.21, 1.34, 1.43), "C-F": (1.35,), "C-Cl": (1.75,), "C-Br": (1.90,),
        "C-I": (2.10,), "C-S": (1.68, 1.75, 1.82), "C-P": (1.80,), "C-Si": (1.86,),
        "C-B": (1.58,), "C-Se": (1.95,), "N-N": (1.25, 1.35, 1.45), "N-O": (1.22, 1.40),
        "O-O": (1.48,), "S-O": (1.44, 1.50, 1.58), "S-N": (1.60, 1.68), "S-S": (2.05,),
        "P-O": (1.48, 1.58), "P-N": (1.65,), "P-F": (1.55,), "Si-O": (1.64,),
        "B-O": (1.37,), "B-F": (1.38,), "B-N": (1.55,), "S-F": (1.56,), "N-F": (1.40,),
    }.items()}
#: Light elements a formula-free model is made of, by atomic number.
GUESS_ELEMENTS = ("C", "N", "O")


@dataclass
class Atom:
    """An atom (``element`` set) or a Q-peak (``element`` None) of a :class:`Model`."""

    label: str
    element: str | None
    frac: np.ndarray  # (3,) fractional, the fragment's image (may lie outside [0, 1))
    score: float  # integrated density (or height) of the peak
    sigma: float  # peak height in r.m.s. of the map
    occupancy: float = 1.0  # 1 / site multiplicity
    fragment: int = -1  # index into Model.fragments (atoms only)


@dataclass
class Model:
    """A first model: atoms in fragments, Q-peaks, and how it was made."""

    cell: gemmi.UnitCell
    spacegroup: gemmi.SpaceGroup
    atoms: list[Atom]
    qpeaks: list[Atom]
    fragments: list[list[int]]  # atom indices, largest fragment first
    formula: Formula | None
    z: float  # formula units per cell (ZERR)
    notes: list[str] = field(default_factory=list)

    @property
    def n_ops(self) -> int:
        """Operators of the space group, centring included."""
        return len(list(self.spacegroup.operations()))

    def frac(self) -> np.ndarray:
        """Fractional coordinates of the atoms, (n, 3)."""
        return np.array([a.frac for a in self.atoms]).reshape(-1, 3)

    def cart(self) -> np.ndarray:
        """Cartesian coordinates of the atoms (A), (n, 3)."""
        return self.frac() @ np.array(self.cell.orth.mat, dtype=np.float64).T

    def elements(self) -> list[str]:
        """Element of each atom."""
        return [str(a.element) for a in self.atoms]


# ---------------------------------------------------------------------------------------------
# symmetry helpers
# ---------------------------------------------------------------------------------------------
def _ops(spacegroup: gemmi.SpaceGroup) -> list[tuple[np.ndarray, np.ndarray]]:
    """All operators (centring included) as (R, t), identity first."""
    return [(np.array(op.rot, float) / op.DEN, np.array(op.tran, float) / op.DEN)
            for op in spacegroup.operations()]


def _orth(cell: gemmi.UnitCell) -> np.ndarray:
    return np.array(cell.orth.mat, dtype=np.float64)


def _snap_special(frac: np.ndarray, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Peaks near a special position moved onto it; and the occupancy 1/multiplicity."""
    orth = _orth(cell)
    out = np.array(frac, dtype=np.float64).reshape(-1, 3)
    occ = np.ones(len(out))
    for i, x in enumerate(out):
        near = []
        for rot, tran in _ops(spacegroup):
            d = rot @ x + tran - x
            d -= np.rint(d)
            if np.linalg.norm(orth @ d) < SPECIAL_SNAP:
                near.append((rot, tran - np.rint(rot @ x + tran - x)))
        # the average of the images is the nearest point fixed by the site-symmetry group
        out[i] = np.mean([rot @ x + t for rot, t in near], axis=0)
        occ[i] = 1.0 / len(near)
    return out, occ


def _contacts(frac: np.ndarray, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup,
              max_d: float) -> list[tuple[int, int, np.ndarray, float]]:
    """Pairs (i, j, T, d): the image ``T x_j`` (T a 4x4 fractional operator: symmetry and
    lattice translation) lies within ``max_d`` of ``x_i``; self-images at 0 left out."""
    orth = _orth(cell)
    out = []
    seen: set[tuple[int, int, int, int, int]] = set()
    for rot, tran in _ops(spacegroup):
        images = frac @ rot.T + tran  # (n, 3)
        diff = images[None, :, :] - frac[:, None, :]
        base = -np.rint(diff)
        for shift in np.ndindex(3, 3, 3):
            t = base + np.array(shift, dtype=np.float64) - 1.0
            d = np.linalg.norm((diff + t) @ orth.T, axis=-1)
            for i, j in zip(*np.nonzero((d < max_d) & (d > 1e-3)), strict=True):
                # images that coincide (j on a special position) count once
                key = (int(i), int(j), *np.rint(100 * (images[j] + t[i, j])).astype(int))
                if key in seen:
                    continue
                seen.add(key)
                op = np.eye(4)
                op[:3, :3], op[:3, 3] = rot, tran + t[i, j]
                out.append((int(i), int(j), op, float(d[i, j])))
    return out


def _radius(element: str | None) -> float:
    return float(gemmi.Element(element or "C").covalent_r)


def _bonded(e1: str | None, e2: str | None, d: float) -> bool:
    return d < _radius(e1) + _radius(e2) + BOND_TOLERANCE


# ---------------------------------------------------------------------------------------------
# measuring peaks
# ---------------------------------------------------------------------------------------------
def integrate_peaks(density: np.ndarray, cell: gemmi.UnitCell, frac: np.ndarray,
                    radius: float = INTEGRATION_RADIUS) -> np.ndarray:
    """The map summed over grid points within ``radius`` (A) of each peak, times the volume
    of a grid cell (electrons, for a map in e/A^3)."""
    rho = np.asarray(density, dtype=np.float64)
    shape = np.array(rho.shape)
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    rec = np.array([cell.reciprocal().a, cell.reciprocal().b, cell.reciprocal().c])
    reach = np.ceil(radius * rec * shape).astype(int) + 1
    grids = np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)  # (m, 3) grid steps
    orth = _orth(cell)
    base = np.rint(frac * shape).astype(int)  # nearest grid point of each peak
    points = base[:, None, :] + offsets[None, :, :]  # (n, m, 3)
    d = np.linalg.norm((points / shape - frac[:, None, :]) @ orth.T, axis=-1)
    values = rho[tuple(np.moveaxis(points % shape, -1, 0))]
    return np.where(d <= radius, values, 0.0).sum(axis=1) * cell.volume / shape.prod()


def peak_scores(sigma: np.ndarray, integral: np.ndarray | None, n_atoms: int) -> np.ndarray:
    """One strength per peak: the height (r.m.s. units) and, when a map was integrated, the
    integrated density, each divided by its median over the ``n_atoms`` strongest, averaged."""
    def rel(x: np.ndarray) -> np.ndarray:
        top = np.sort(x)[::-1][:max(n_atoms, 1)]
        med = float(np.median(top)) if len(top) else 1.0
        return x / (med if med > 0 else 1.0)

    sigma = np.asarray(sigma, dtype=np.float64)
    if integral is None:
        return rel(sigma)
    return 0.5 * (rel(sigma) + rel(np.asarray(integral, dtype=np.float64)))


# ---------------------------------------------------------------------------------------------
# how many atoms of which elements
# ---------------------------------------------------------------------------------------------
def formula_units(formula: Formula, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup
                  ) -> float:
    """Z: the formula's own, else from the cell volume (:data:`VOLUME_PER_ATOM` per non-H
    atom), rounded to a sensible number of molecules per asymmetric unit (Z' = 1/4 ... 8,
    Z a whole number)."""
    if formula.z:
        return float(formula.z)
    n_ops = len(list(spacegroup.operations()))
    n_heavy = sum(formula.non_hydrogen().values()) or 1.0
    estimate = cell.volume / (VOLUME_PER_ATOM * n_heavy)
    choices = [zp * n_ops for zp in (0.25, 0.5, 1, 2, 3, 4, 6, 8)
               if zp * n_ops >= 1 and abs(zp * n_ops - round(zp * n_ops)) < 1e-9]
    return float(min(choices, key=lambda z: abs(np.log(z / max(estimate, 1e-3)))))


def asu_counts(formula: Formula, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup
               ) -> dict[str, float]:
    """Non-hydrogen atoms of each element in the asymmetric unit (fractions: special
    positions)."""
    n_ops = len(list(spacegroup.operations()))
    z = formula_units(formula, cell, spacegroup)
    return {e: n * z / n_ops for e, n in formula.non_hydrogen().items() if n > 0}


def _slots(counts: dict[str, float]) -> list[str]:
    """Element labels for the peaks, heaviest first: a count of 1/2 or more is a (special
    position) atom, e.g. Mg 0.5 -> one Mg, O 3.5 -> four O."""
    out: list[str] = []
    for e, c in counts.items():
        out += [e] * max(1, math.ceil(c - 0.25))
    return sorted(out, key=lambda e: -gemmi.Element(e).atomic_number)


def _label_cost(labels: list[str], q: np.ndarray, pairs: np.ndarray, dist: np.ndarray,
                lengths: bool = True) -> float:
    """Misfit of element labels: electron counts, neighbours beyond the element's maximum
    and (``lengths``) bond lengths against typical ones."""
    z = np.array([gemmi.Element(e).atomic_number for e in labels], dtype=np.float64)
    r = np.array([_radius(e) for e in labels])
    cost = float(np.sum(((q - z) / (COUNT_SIGMA * z)) ** 2))
    if len(pairs):
        ideal = r[pairs[:, 0]] + r[pairs[:, 1]]
        bonded = dist < ideal + BOND_TOLERANCE
        if lengths:
            cost += sum(_bond_cost(labels[i], labels[j], d) for (i, j), d
                        in zip(pairs[bonded], dist[bonded], strict=True))
        nb = np.bincount(pairs[bonded, 0], minlength=len(labels))
        most = np.array([MAX_NEIGHBOURS.get(e, 8 if gemmi.Element(e).is_metal else 6)
                         for e in labels])
        cost += float(np.sum(9.0 * np.maximum(nb - most, 0) ** 2))
    return cost


def _bond_cost(e1: str, e2: str, d: float) -> float:
    """Misfit of one bond length: to the nearest typical length of the pair, else to the sum
    of covalent radii; at most 4."""
    typical = TYPICAL_BONDS.get(frozenset((e1, e2)))
    if typical is None:
        return min(((d - _radius(e1) - _radius(e2)) / RADII_SIGMA) ** 2, 4.0)
    return min(min((d - t) ** 2 for t in typical) / BOND_SIGMA ** 2, 4.0)


def _refine_labels(labels: list[str], q: np.ndarray, pairs: np.ndarray, dist: np.ndarray,
                   choices: tuple[str, ...] | None = None) -> list[str]:
    """Greedy descent of :func:`_label_cost`: exchange two atoms' elements (composition
    kept) or, with ``choices`` (no formula), relabel one atom judged by electron count and
    neighbours only; the best move first, until none helps."""
    labels = list(labels)
    lengths = choices is None
    best = _label_cost(labels, q, pairs, dist, lengths)
    for _ in range(4 * len(labels) + 10):
        moves = ([(i, e) for i in range(len(labels)) for e in choices if e != labels[i]]
                 if choices else
                 [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels))
                  if labels[i] != labels[j]])
        trial_best, trial_labels = best, None
        for a, b in moves:
            trial = list(labels)
            if choices:
                trial[a] = str(b)
            else:
                trial[a], trial[b] = labels[b], labels[a]
            c = _label_cost(trial, q, pairs, dist, lengths)
            if c < trial_best - 1e-9:
                trial_best, trial_labels = c, trial
        if trial_labels is None:
            break
        best, labels = trial_best, trial_labels
    return labels


def _subset(contacts: list[tuple[int, int, np.ndarray, float]], chosen: np.ndarray
            ) -> list[tuple[int, int, np.ndarray, float]]:
    """The contacts between the chosen peaks, numbered by their place in ``chosen``."""
    rank = {int(a): k for k, a in enumerate(chosen)}
    return [(rank[i], rank[j], op, d) for i, j, op, d in contacts if i in rank and j in rank]


def _choose_atoms(score: np.ndarray, pairs_all: list[tuple[int, int, np.ndarray, float]],
                  counts: dict[str, float] | None, geometry: bool = True
                  ) -> tuple[np.ndarray, list[str], list[str]]:
    """Which peaks are atoms (indices, strongest first), their elements (``geometry``: the
    labels refined with the bonding), and notes."""
    order = np.argsort(-score, kind="stable")
    notes = []
    if counts is not None:
        slots = _slots(counts)
        if len(slots) > len(score):
            notes.append(f"only {len(score)} peaks for the {len(slots)} atoms of the formula: "
                         f"the lightest {len(slots) - len(score)} are missing")
        atoms = order[:len(slots)]
        labels = slots[:len(atoms)]
        z = np.array([gemmi.Element(e).atomic_number for e in labels], dtype=np.float64)
        q = score[atoms] * z.sum() / max(score[atoms].sum(), 1e-12)
        choices = None
    else:
        atoms = order[score[order] >= NOISE_FRACTION]
        ref = float(np.median(score[atoms])) if len(atoms) else 1.0
        q = 6.0 * score[atoms] / ref  # the typical atom taken for carbon
        labels = [min(GUESS_ELEMENTS, key=lambda e, v=v: abs(gemmi.Element(e).atomic_number
                                                             - v)) for v in q]
        choices = GUESS_ELEMENTS
        notes.append("no formula given: atoms are the peaks above "
                     f"{NOISE_FRACTION:g} x the typical peak, labelled C, N or O by strength "
                     "and bonding (a guess; give the formula to assign elements)")
    rows = _subset(pairs_all, atoms)
    pairs = np.array([r[:2] for r in rows], dtype=int).reshape(-1, 2)
    dist = np.array([r[3] for r in rows], dtype=np.float64)
    if geometry:
        labels = _refine_labels(labels, q, pairs, dist, choices)
    return atoms, labels, notes


# ---------------------------------------------------------------------------------------------
# assembling fragments
# ---------------------------------------------------------------------------------------------
def _grow_fragments(n: int, labels: list[str], strength: np.ndarray,
                    contacts: list[tuple[int, int, np.ndarray, float]]
                    ) -> tuple[list[list[int]], list[np.ndarray]]:
    """Connected fragments grown from the heaviest (then strongest) atom along the shortest
    bonds; each atom's 4x4 fractional operator onto its place in its fragment."""
    by_atom: list[list[tuple[int, np.ndarray, float]]] = [[] for _ in range(n)]
    for i, j, op, d in contacts:
        if _bonded(labels[i], labels[j], d):
            by_atom[i].append((j, op, d))
    seeds = sorted(range(n), key=lambda i: (-gemmi.Element(labels[i]).atomic_number,
                                            -strength[i]))
    placed: dict[int, np.ndarray] = {}
    fragments: list[list[int]] = []
    tie = 0
    for seed in seeds:
        if seed in placed:
            continue
        frag: list[int] = []
        heap: list[tuple[float, int, int, np.ndarray]] = [(0.0, tie, seed, np.eye(4))]
        while heap:
            _, _, j, op = heapq.heappop(heap)
            if j in placed:
                continue
            placed[j] = op
            frag.append(j)
            for k, op_k, d in by_atom[j]:
                if k not in placed:
                    tie += 1
                    heapq.heappush(heap, (d, tie, k, op @ op_k))
        fragments.append(frag)
    return fragments, [placed[i] for i in range(n)]


def assemble(frac: np.ndarray, elements: list[str], cell: gemmi.UnitCell,
             spacegroup: gemmi.SpaceGroup, strength: np.ndarray | None = None,
             contacts: list[tuple[int, int, np.ndarray, float]] | None = None
             ) -> tuple[np.ndarray, list[list[int]]]:
    """Atoms (one per symmetry orbit) moved into connected fragments.

    Parameters
    ----------
    frac, elements
        Fractional coordinates ``(n, 3)`` and element symbols.
    cell, spacegroup
        The crystal's.
    strength
        Orders the seeds among atoms of one element (default: as given).
    contacts
        Precomputed :func:`_contacts` of ``frac`` (internal).

    Returns
    -------
    positions, fragments
        The atoms' new fractional coordinates (each a symmetry image of the input) and the
        fragments as index lists, largest first; the largest fragment's centre nearest the
        cell's centre, every other fragment as close as it comes to those before it.
    """
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    if contacts is None:
        max_d = 2 * max((_radius(e) for e in elements), default=1.0) + BOND_TOLERANCE
        contacts = _contacts(frac, cell, spacegroup, max_d)
    strength = np.zeros(len(frac)) if strength is None else np.asarray(strength)
    fragments, ops = _grow_fragments(len(frac), list(elements), strength, contacts)
    fragments.sort(key=lambda f: (-len(f), -sum(gemmi.Element(elements[i]).atomic_number
                                                for i in f)))
    pos = np.array([frac[k] @ ops[k][:3, :3].T + ops[k][:3, 3]
                    for k in range(len(frac))]).reshape(-1, 3)
    for n, frag in enumerate(fragments):
        placed = [i for f in fragments[:n] for i in f]
        pos[frag] = _place(pos[frag], cell, spacegroup, pos[placed] if placed else None)
    return pos, fragments


def _place(frac: np.ndarray, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup,
           anchors: np.ndarray | None = None) -> np.ndarray:
    """The symmetry image (operator and lattice translation) of a whole fragment whose centre
    lies nearest the cell's centre or, given ``anchors`` (fractional), whose closest atom
    lies nearest an anchor."""
    orth = _orth(cell)
    target = np.full(3, 0.5) if anchors is None else anchors.mean(axis=0)
    best, best_d = frac, np.inf
    for rot, tran in _ops(spacegroup):
        image = frac @ rot.T + tran
        base = np.floor(target - image.mean(axis=0) + 0.5)
        for shift in np.ndindex(3, 3, 3):
            moved = image + base + np.array(shift) - 1.0
            if anchors is None:
                d = float(np.linalg.norm(orth @ (moved.mean(axis=0) - target)))
            else:
                d = float(np.linalg.norm((moved[:, None] - anchors[None]) @ orth.T,
                                         axis=-1).min())
            if d < best_d - 1e-6:
                best, best_d = moved, d
    return best


def _nearest_images(points: np.ndarray, anchors: np.ndarray, cell: gemmi.UnitCell,
                    spacegroup: gemmi.SpaceGroup) -> np.ndarray:
    """Each point's symmetry image nearest to any anchor (fractional)."""
    if len(anchors) == 0 or len(points) == 0:
        return points
    orth = _orth(cell)
    out = points.copy()
    best = np.full(len(points), np.inf)
    for rot, tran in _ops(spacegroup):
        images = points @ rot.T + tran  # (n, 3)
        diff = images[:, None, :] - anchors[None, :, :]
        moved = images[:, None, :] - np.rint(diff)  # (n, m, 3) nearest to each anchor
        d = np.linalg.norm((moved - anchors[None, :, :]) @ orth.T, axis=-1)
        j = d.argmin(axis=1)
        dmin = d[np.arange(len(points)), j]
        better = dmin < best - 1e-6
        out[better] = moved[np.arange(len(points)), j][better]
        best = np.minimum(best, dmin)
    return out


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
def _as_formula(formula: Formula | str | dict[str, float] | None) -> Formula | None:
    if formula is None or isinstance(formula, Formula):
        return formula
    if isinstance(formula, dict):
        return Formula(dict(formula))
    return Formula(parse_formula(formula))


def build_model(peaks: Any, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup,
                density: np.ndarray | None = None,
                formula: Formula | str | dict[str, float] | None = None,
                geometry: bool = True) -> Model:
    """Atoms with elements, assembled into fragments, and Q-peaks, from density peaks.

    Parameters
    ----------
    peaks
        :class:`pattersolve.peaks.Peaks` (``frac``, ``sigma``), one per symmetry orbit.
    cell, spacegroup
        The crystal's.
    density
        The map on the full cell (``(nu, nv, nw)``) the peaks' strengths are integrated on;
        None: heights only.
    formula
        Per formula unit (``"C12 H22 O11"``, a :class:`~pattersolve.shelx.Formula` with Z
        from a file, or counts); None: C/N/O guessed (see the module's description).
    geometry
        Refine the elements with the bonding (False: by peak strength alone).

    Returns
    -------
    Model
        Atoms by fragment (largest first), Q-peaks by height, and notes on what was assumed.
    """
    formula = _as_formula(formula)
    n_ops = len(list(spacegroup.operations()))
    frac, occ = _snap_special(np.asarray(peaks.frac, dtype=np.float64).reshape(-1, 3), cell,
                              spacegroup)
    sigma = np.asarray(peaks.sigma, dtype=np.float64)
    counts = asu_counts(formula, cell, spacegroup) if formula is not None else None
    n_guess = len(_slots(counts)) if counts else max(1, round(
        cell.volume / (VOLUME_PER_ATOM * n_ops)))
    integral = (integrate_peaks(density, cell, frac) if density is not None and len(frac)
                else None)
    score = peak_scores(sigma, integral, n_guess)
    elements = list(counts) if counts else list(GUESS_ELEMENTS)
    max_d = 2 * max(_radius(e) for e in elements) + BOND_TOLERANCE
    contacts = _contacts(frac, cell, spacegroup, max_d)
    chosen, labels, notes = _choose_atoms(score, contacts, counts, geometry)
    pos, fragments = assemble(frac[chosen], labels, cell, spacegroup, score[chosen],
                              _subset(contacts, chosen))
    atoms = _named_atoms(fragments, labels, pos, chosen, score, sigma, occ)
    rest = np.array([i for i in np.argsort(-sigma, kind="stable") if i not in set(chosen)],
                    dtype=int)
    qpos = _nearest_images(frac[rest], pos, cell, spacegroup)
    qpeaks = [Atom(f"Q{k + 1}", None, qpos[k], float(score[i]), float(sigma[i]), float(occ[i]))
              for k, i in enumerate(rest)]
    z = formula_units(formula, cell, spacegroup) if formula is not None else float(n_ops)
    if formula is not None:
        notes.insert(0, f"formula {formula} ({formula.source}), Z = {z:g}")
    frags = [[k for k, a in enumerate(atoms) if a.fragment == n] for n in range(len(fragments))]
    return Model(cell, spacegroup, atoms, qpeaks, frags, formula, z, notes)


def _named_atoms(fragments: list[list[int]], labels: list[str], pos: np.ndarray,
                 chosen: np.ndarray, score: np.ndarray, sigma: np.ndarray, occ: np.ndarray
                 ) -> list[Atom]:
    """Atoms in fragment order, named by element and a running number (C1, C2, O1...)."""
    count: dict[str, int] = {}
    atoms = []
    for n, frag in enumerate(fragments):
        for k in frag:
            e = labels[k]
            count[e] = count.get(e, 0) + 1
            i = int(chosen[k])
            atoms.append(Atom(f"{e}{count[e]}", e, pos[k], float(score[i]), float(sigma[i]),
                              float(occ[i]), n))
    return atoms


def model_from_solution(solution: Any, formula: Formula | str | None = None,
                        ins: str | Path | None = None, geometry: bool = True) -> Model:
    """:func:`build_model` on a :class:`pattersolve.api.Solution`'s peaks and map; the
    formula (and Z) from ``ins`` (a ``.ins``/``.res``/CIF) when none is given."""
    if formula is None and ins is not None and Path(ins).is_file():
        formula = formula_from_file(ins)
    return build_model(solution.find_peaks(), solution.cell, solution.spacegroup,
                       density=solution.density, formula=formula, geometry=geometry)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def _is_shelx(path: str | Path | None) -> bool:
    return path is not None and Path(path).is_file() and Path(path).suffix.lower() in (
        ".ins", ".res")


def _instructions(ins: str | Path | None) -> list[str]:
    """The input's kept instructions, and the defaults it does not set (L.S. or CGLS...)."""
    from .shelx import DEFAULT_INSTRUCTIONS

    kept = kept_instructions(ins) if _is_shelx(ins) else []
    keys = {c.split()[0].upper() for c in kept}
    if "CGLS" in keys:
        keys.add("L.S.")
    return kept + [c for c in DEFAULT_INSTRUCTIONS if c.split()[0].upper() not in keys]


def _sfac_unit(model: Model, ins: str | Path | None) -> tuple[list[str] | None,
                                                               list[float] | None]:
    """SFAC/UNIT of the input .ins/.res, else of the formula (hydrogen included)."""
    from .shelx import _cards, _sfac_elements

    if _is_shelx(ins):
        cards = _cards(Path(str(ins)).read_text(errors="replace"))
        unit = [float(v) for c in cards if c[0].upper() == "UNIT" for v in c[1:]]
        sfac = _sfac_elements(cards)
        if sfac and len(unit) == len(sfac):
            return sfac, unit
    if model.formula is None:
        return None, None
    counts = model.formula.counts
    sfac = sorted(counts, key=lambda e: (e != "C", e != "H", e))
    return sfac, [counts[e] * model.z for e in sfac]


def model_res_text(model: Model, ins: str | Path | None = None,
                   wavelength: float | None = None, title: str | None = None) -> str:
    """The model as a SHELX ``.res`` (:func:`pattersolve.shelx.res_text`).

    ``ins``: the data's ``.ins``/``.res`` (SFAC/UNIT and :data:`~pattersolve.shelx.
    KEPT_INSTRUCTIONS` copied, wavelength read) or CIF (wavelength read).
    """
    from . import __version__

    sfac, unit = _sfac_unit(model, ins)
    remarks = [f"pattersolve {__version__}: first model from density peaks",
               *model.notes, f"{len(model.atoms)} atoms in {len(model.fragments)} "
               "fragments; Q-peak heights in r.m.s. of the map"]
    atoms = [ResAtom(a.label, a.element, tuple(a.frac), a.occupancy, DEFAULT_U)
             for a in model.atoms]
    qpeaks = [ResAtom(q.label, None, tuple(q.frac), q.occupancy, DEFAULT_U, q.sigma)
              for q in model.qpeaks]
    return res_text(model.cell, model.spacegroup, atoms, qpeaks,
                    title=title or f"pattersolve model in {model.spacegroup.hm}",
                    wavelength=wavelength or wavelength_from_file(ins), z=model.z, sfac=sfac,
                    unit=unit, instructions=_instructions(ins), remarks=remarks)


def write_model_res(path: str | Path, model: Model, ins: str | Path | None = None,
                    wavelength: float | None = None, title: str | None = None,
                    overwrite: bool = True) -> Path:
    """Write :func:`model_res_text` atomically."""
    from .transaction import write_atomic

    text = model_res_text(model, ins, wavelength, title)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text), overwrite)


def model_structure(model: Model, residue: str = "UNL", qpeaks: bool = False
                    ) -> gemmi.Structure:
    """The model as a :class:`gemmi.Structure`: chain A, one HETATM residue per fragment
    (``residue``, numbered from 1), atoms named as in the ``.res`` with their elements,
    occupancy 1/multiplicity, B = 8 pi^2 U. ``qpeaks``: the Q-peaks too, as residue ``PEK``
    (element X, B-factor = height in r.m.s. units)."""
    st = gemmi.Structure()
    st.cell = model.cell
    st.spacegroup_hm = model.spacegroup.xhm()
    chain = gemmi.Chain("A")
    groups = [(residue, [model.atoms[i] for i in frag]) for frag in model.fragments]
    if qpeaks and model.qpeaks:
        groups.append(("PEK", model.qpeaks))
    orth = _orth(model.cell)
    serial = 0
    for n, (name, members) in enumerate(groups):
        res = gemmi.Residue()
        res.name, res.seqid, res.het_flag = name, gemmi.SeqId(n + 1, " "), "H"
        for a in members:
            serial += 1
            atom = gemmi.Atom()
            atom.name = a.label
            atom.element = gemmi.Element(a.element or "X")
            atom.pos = gemmi.Position(*(orth @ a.frac))
            atom.occ = a.occupancy
            atom.b_iso = (8 * np.pi ** 2 * DEFAULT_U if a.element
                          else float(np.clip(a.sigma, -99.99, 999.99)))
            atom.serial = serial
            res.add_atom(atom)
        chain.add_residue(res)
    gmodel = gemmi.Model(1)
    gmodel.add_chain(chain)
    st.add_model(gmodel)
    st.setup_entities()
    return st


def write_model_mmcif(path: str | Path, model: Model, overwrite: bool = True) -> Path:
    """Write :func:`model_structure` as mmCIF (gemmi's ``make_mmcif_document``), atomically."""
    from .transaction import write_atomic

    doc = model_structure(model).make_mmcif_document()
    return write_atomic(path, lambda tmp: doc.write_file(str(tmp)), overwrite)


def model_small_cif_text(model: Model, name: str = "pattersolve") -> str:
    """The model as a small-molecule (coreCIF) file: cell, symmetry operators and atom sites
    (label, element, fractional x y z, U_iso, occupancy), for programs that read CIF rather
    than ``.res`` (``gemmi.read_small_structure`` reads it back)."""
    doc = gemmi.cif.Document()
    block = doc.add_new_block(name)
    for key, value in zip(("length_a", "length_b", "length_c", "angle_alpha", "angle_beta",
                           "angle_gamma"), model.cell.parameters, strict=True):
        block.set_pair(f"_cell_{key}", f"{value:.4f}")
    block.set_pair("_space_group_name_H-M_alt", gemmi.cif.quote(model.spacegroup.hm))
    block.set_pair("_space_group_IT_number", str(model.spacegroup.number))
    if model.formula is not None:
        block.set_pair("_chemical_formula_sum", gemmi.cif.quote(str(model.formula)))
        block.set_pair("_cell_formula_units_Z", f"{model.z:g}")
    ops = block.init_loop("_space_group_symop_", ["id", "operation_xyz"])
    for k, op in enumerate(model.spacegroup.operations()):
        ops.add_row([str(k + 1), gemmi.cif.quote(op.triplet())])
    sites = block.init_loop("_atom_site_", ["label", "type_symbol", "fract_x", "fract_y",
                                            "fract_z", "U_iso_or_equiv", "occupancy"])
    for a in model.atoms:
        sites.add_row([a.label, str(a.element), *(f"{v:.6f}" for v in a.frac),
                       f"{DEFAULT_U:.4f}", f"{a.occupancy:.4f}"])
    return doc.as_string()
