"""On-the-fly training data: fragments -> cell placement -> batched maps (torch, CPU or CUDA).

Each example is one fragment placed by :func:`pattersolve.simulate.place_fragment`, its
density and Patterson computed by :class:`pattersolve.simulate.TorchMapMaker` and both maps
scaled to ``[-1, 1]`` by their own minimum and maximum (the paper's normalisation).

Cells
    ``cell = [a, b, c]``: every example in that cell, centred by centre of mass (the paper).
    ``padding = g``: a packed cell per example, edges = the (rotated) fragment's extent + ``g``,
    rounded *up* to a multiple of ``cell_round`` A so that examples fall into a few cell
    buckets. A batch is split into groups of equal cell; each group is one forward pass (the
    network is fully convolutional), and the loss is normalised by the whole batch, so a batch
    of mixed cells is gradient accumulation over its groups. A fixed box for all cells would be
    wrong: the Patterson of a packed cell is periodic with *that* cell.

Clashes
    A fragment whose periodic image comes closer than ``min_distance`` in its unrotated
    placement is dropped when the dataset is built. With ``rotation = true`` a clashing
    orientation is redrawn up to 10 times, then the (valid) unrotated placement is used.

Degraded inputs (training split only)
    ``amplitude_noise``, ``missing_fraction`` and ``low_resolution_cut`` make the Patterson
    from noisy amplitudes and with reflections left out (:meth:`TorchMapMaker.patterson` on
    the changed intensities), so the network learns what measured data look like; the target
    density stays exact, and validation and test maps stay clean (the model cards' numbers).

Determinism
    Every random choice of example ``i`` in epoch ``e`` comes from
    ``numpy.random.default_rng([seed, split, e, i])``, and the order of epoch ``e`` is
    ``default_rng([seed, e]).permutation(n)``, so a batch depends only on (seed, epoch, step):
    exact resume and any number of DDP ranks see the same global batches. The degradation of
    example ``i`` has its own stream, ``default_rng([seed, split, e, i, 1])``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gemmi
import numpy as np

from pattersolve.fourier import d_spacings, grid_shape_for_spacing
from pattersolve.simulate import (
    ELEMENTS,
    Placement,
    TorchMapMaker,
    clashes,
    orthorhombic_cell,
    place_fragment,
    random_rotation,
    scale_to_unit_range_torch,
)

from .shards import Fragment

if TYPE_CHECKING:  # pragma: no cover
    import torch

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_ELEMENT_INDEX = {e: i for i, e in enumerate(ELEMENTS)}
_ROTATION_TRIES = 10


@dataclass(frozen=True)
class DataConfig:
    """How examples are made (the ``[data]`` table of a training config).

    Attributes
    ----------
    residues
        ``"all"`` or ``"dialanine"``: must match the shards' preparation.
    length
        Residues per fragment: must match the shards.
    cell
        Fixed cell edges in A, or None with ``padding`` for packed cells.
    padding
        Packed cells: edge = extent + padding (A).
    cell_round
        Packed cells: edges rounded up to a multiple of this (A), the bucket size.
    grid_spacing
        Target grid spacing (A); grid sizes are even.
    d_min
        Resolution of the structure factors (A).
    rotation
        Random orientation per example (else the PDB orientation).
    b_iso
        One B for all atoms (A^2), or None for the B factors of the PDB file.
    min_distance
        Reject placements closer than this to a periodic image (A).
    amplitude_noise
        Training split only: the Patterson (the network's input) is made from amplitudes
        ``|F| |1 + s e|`` with ``e`` standard normal per reflection and ``s`` drawn per example
        uniformly from ``[0, amplitude_noise]``. The target density stays exact. 0: off.
    missing_fraction
        Training split only: a fraction drawn per example uniformly from ``[0,
        missing_fraction]`` of the reflections is left out of the Patterson. 0: off.
    low_resolution_cut
        Training split only: for half of the examples, every reflection with ``d`` above a cut
        drawn uniformly from ``[low_resolution_cut, 2 low_resolution_cut]`` A is left out of the
        Patterson (missing low-resolution data, the benchmark's 2-lowres). 0: off.
    """

    residues: str = "dialanine"
    length: int = 2
    cell: tuple[float, float, float] | None = (10.0, 10.0, 10.0)
    padding: float | None = None
    cell_round: float = 1.0
    grid_spacing: float = 0.5
    d_min: float = 1.5
    rotation: bool = False
    b_iso: float | None = 15.0
    min_distance: float = 2.0
    amplitude_noise: float = 0.0
    missing_fraction: float = 0.0
    low_resolution_cut: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.amplitude_noise <= 1.0:
            raise ValueError("data.amplitude_noise must be in [0, 1]")
        if not 0.0 <= self.missing_fraction < 1.0:
            raise ValueError("data.missing_fraction must be in [0, 1)")
        if self.low_resolution_cut and self.low_resolution_cut <= self.d_min:
            raise ValueError("data.low_resolution_cut must be 0 (off) or above data.d_min")
        if (self.cell is None) == (self.padding is None):
            raise ValueError("give exactly one of data.cell and data.padding")
        if self.residues not in ("all", "dialanine"):
            raise ValueError(f"data.residues must be 'all' or 'dialanine', not {self.residues!r}")
        if self.cell is not None:
            object.__setattr__(self, "cell", tuple(float(x) for x in self.cell))

    @property
    def augmented(self) -> bool:
        """Whether the training split's Pattersons are degraded (noise or missing data)."""
        return bool(self.amplitude_noise or self.missing_fraction or self.low_resolution_cut)


@dataclass
class Group:
    """Examples of one batch that share a cell (one forward pass).

    Attributes
    ----------
    patterson, density
        ``(b, 1, nu, nv, nw)`` float32 maps scaled to ``[-1, 1]``.
    f
        ``(b, n_refl)`` complex structure factors of the true fragment (unscaled).
    hkl
        ``(n_refl, 3)`` Miller indices of ``f``.
    cell
        The P1 cell.
    positions
        Index of each example within the batch.
    sources
        ``Fragment.source`` of each example.
    """

    patterson: torch.Tensor
    density: torch.Tensor
    f: torch.Tensor
    hkl: np.ndarray
    cell: gemmi.UnitCell
    positions: list[int]
    sources: list[str]


def _lengths(p: Placement) -> tuple[float, float, float]:
    return (float(p.cell.a), float(p.cell.b), float(p.cell.c))


class FragmentMaps:
    """Fragments of one split turned into batches of maps.

    Parameters
    ----------
    fragments
        The split's fragments (:func:`pattersolve_train.shards.load_split`).
    cfg
        The data configuration.
    seed
        Base seed of every random choice.
    split
        ``"train"``, ``"val"`` or ``"test"`` (part of the seed).
    device
        Torch device the maps are made on.
    """

    def __init__(self, fragments: Sequence[Fragment], cfg: DataConfig, seed: int = 0,
                 split: str = "train", device: str = "cpu") -> None:
        self.cfg = cfg
        self.seed = int(seed)
        self.split_code = _SPLIT_CODE[split]
        #: degraded Pattersons (DataConfig.amplitude_noise, ...) on the training split only
        self.augment = split == "train" and cfg.augmented
        self.device = device
        self._makers: OrderedDict[tuple[float, float, float], TorchMapMaker] = OrderedDict()
        #: micro-batches of the current bucketed chunk (pattersolve_train.train)
        self.chunk_cache: dict[tuple[int, ...], list[list[int]]] = {}
        self.fragments = [f for f in fragments if not self._clashes(self._place(f, None))]
        self.n_dropped = len(fragments) - len(self.fragments)

    def __len__(self) -> int:
        return len(self.fragments)

    # -- placement ----------------------------------------------------------------------------
    def _place(self, frag: Fragment, rotation: np.ndarray | None) -> Placement:
        cfg = self.cfg
        if cfg.cell is not None:
            return place_fragment(frag.xyz, frag.elements, cell_lengths=cfg.cell,
                                  rotation=rotation)
        tight = place_fragment(frag.xyz, frag.elements, rotation=rotation, padding=cfg.padding)
        lengths = np.array(_lengths(tight))
        bucket = np.ceil(lengths / cfg.cell_round - 1e-9) * cfg.cell_round
        cart = tight.cart + (bucket - lengths) / 2.0  # same centring, in the bucket cell
        return Placement(cell=orthorhombic_cell(bucket), frac=cart / bucket, cart=cart)

    def _clashes(self, p: Placement) -> bool:
        # bounding boxes apart along every axis: no image can come closer (cheap, usual case)
        extent = p.cart.max(0) - p.cart.min(0)
        if np.all(extent + self.cfg.min_distance <= np.array(_lengths(p))):
            return False
        return clashes(p, self.cfg.min_distance)

    def placement(self, index: int, epoch: int) -> Placement:
        """The placement of fragment ``index`` in ``epoch`` (deterministic)."""
        frag = self.fragments[index]
        if not self.cfg.rotation:
            return self._place(frag, None)
        rng = np.random.default_rng([self.seed, self.split_code, epoch, index])
        for _ in range(_ROTATION_TRIES):
            p = self._place(frag, random_rotation(rng))
            if not self._clashes(p):
                return p
        return self._place(frag, None)

    def bucketed_batches(self, indices: Sequence[int], epoch: int, batch_size: int,
                         shuffle_key: Sequence[int]) -> list[list[int]]:
        """Cut ``indices`` into batches of ``batch_size`` that mostly share one cell.

        Packed cells give every example its own cell, and each cell is one forward pass
        (:meth:`batch`). Grouping a chunk of the epoch by cell before cutting it into
        batches turns ~``batch_size`` passes per batch into a few (hard-regime tripeptides,
        batches of 64, chunks of 256 batches: bench/bench_training.py). Each cell's examples
        fill whole batches in epoch order; the remainders, sorted by cell, fill the rest.
        The batches are then shuffled with ``default_rng(shuffle_key)``, so small and large
        cells are not trained in a fixed sequence. Every index is used exactly once and
        ``len(indices) // batch_size`` batches come back (a remainder is dropped). Costs one
        placement per index (~0.07 ms for a tripeptide; :meth:`batch` places them again).
        """
        by_cell: dict[tuple[float, float, float], list[int]] = {}
        for i in indices:
            by_cell.setdefault(_lengths(self.placement(int(i), epoch)), []).append(int(i))
        batches: list[list[int]] = []
        rest: list[int] = []
        for cell in sorted(by_cell):
            items = by_cell[cell]
            n_full = len(items) // batch_size * batch_size
            batches += [items[k: k + batch_size] for k in range(0, n_full, batch_size)]
            rest += items[n_full:]
        batches += [rest[k: k + batch_size] for k in range(0, len(rest), batch_size)]
        batches = [b for b in batches if len(b) == batch_size]
        perm = np.random.default_rng(list(shuffle_key)).permutation(len(batches))
        return [batches[k] for k in perm]

    def order(self, epoch: int) -> np.ndarray:
        """The example order of ``epoch``: a permutation of ``range(len(self))``."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self))

    def maker(self, lengths: tuple[float, float, float]) -> TorchMapMaker:
        """The (cached) map maker of a cell."""
        key = tuple(round(x, 6) for x in lengths)
        if key in self._makers:
            self._makers.move_to_end(key)
            return self._makers[key]
        cell = orthorhombic_cell(key)
        shape = grid_shape_for_spacing(cell, self.cfg.grid_spacing, multiple=2)
        maker = TorchMapMaker(cell, self.cfg.d_min, shape, device=self.device)
        self._makers[key] = maker
        if len(self._makers) > 128:
            self._makers.popitem(last=False)
        return maker

    def _intensity_factor(self, maker: TorchMapMaker, index: int, epoch: int) -> np.ndarray:
        """Per-reflection factor on ``|F|^2`` for example ``index`` in ``epoch``: ``|1 + s e|^2``
        (amplitude noise), 0 for reflections left out (random ones, and for some examples all
        with ``d`` above a cut). Its own random stream, so placements do not change when
        augmentation is on."""
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, self.split_code, epoch, index, 1])
        m = len(maker.hkl_np)
        factor = np.ones(m)
        if cfg.amplitude_noise:
            s = rng.uniform(0.0, cfg.amplitude_noise)
            factor *= (1.0 + s * rng.standard_normal(m)) ** 2
        if cfg.missing_fraction:
            factor[rng.random(m) < rng.uniform(0.0, cfg.missing_fraction)] = 0.0
        if cfg.low_resolution_cut and rng.random() < 0.5:
            cut = rng.uniform(cfg.low_resolution_cut, 2.0 * cfg.low_resolution_cut)
            factor[d_spacings(maker.cell, maker.hkl_np) > cut] = 0.0
        return factor

    # -- batches ------------------------------------------------------------------------------
    def batch(self, indices: Sequence[int], epoch: int) -> list[Group]:
        """Maps of the given fragments, grouped by cell (one group for a fixed cell)."""
        import torch

        placed = [(pos, int(i), self.placement(int(i), epoch)) for pos, i in enumerate(indices)]
        by_cell: dict[tuple[float, float, float], list[tuple[int, int, Placement]]] = {}
        for item in placed:
            by_cell.setdefault(_lengths(item[2]), []).append(item)
        groups = []
        for lengths in sorted(by_cell):
            items = by_cell[lengths]
            maker = self.maker(lengths)
            n_max = max(len(self.fragments[i].elements) for _, i, _ in items)
            b = len(items)
            frac = np.zeros((b, n_max, 3))
            element = np.zeros((b, n_max), dtype=np.int64)
            b_iso = np.zeros((b, n_max))
            occ = np.zeros((b, n_max))
            for row, (_, i, p) in enumerate(items):
                frag = self.fragments[i]
                n = len(frag.elements)
                frac[row, :n] = p.frac
                element[row, :n] = [_ELEMENT_INDEX[e] for e in frag.elements]
                b_iso[row, :n] = frag.b_iso if self.cfg.b_iso is None else self.cfg.b_iso
                occ[row, :n] = 1.0
            kw = {"device": maker.device, "dtype": maker.dtype}
            element_t = torch.as_tensor(element, device=maker.device)
            occ_t = torch.as_tensor(occ, **kw)
            rho, pat, f = maker.maps(torch.as_tensor(frac, **kw), element_t,
                                     torch.as_tensor(b_iso, **kw), occ_t)
            if self.augment:
                factor = torch.as_tensor(np.stack([self._intensity_factor(maker, i, epoch)
                                                   for _, i, _ in items]), **kw)
                f000 = (maker.f0[element_t] * occ_t).sum(1)
                pat = maker.patterson((f.real**2 + f.imag**2) * factor, f000)
            groups.append(Group(
                patterson=scale_to_unit_range_torch(pat).unsqueeze(1).float(),
                density=scale_to_unit_range_torch(rho).unsqueeze(1).float(),
                f=f, hkl=maker.hkl_np, cell=maker.cell,
                positions=[pos for pos, _, _ in items],
                sources=[self.fragments[i].source for _, i, _ in items],
            ))
        return groups

    def groups(self, indices: Sequence[int], batch_size: int, epoch: int = 0
               ) -> Iterator[Group]:
        """The cell groups of ``indices`` taken ``batch_size`` at a time, in order (epoch
        ``epoch`` placements): how evaluation and BatchNorm recalibration walk a set."""
        for start in range(0, len(indices), batch_size):
            yield from self.batch(indices[start: start + batch_size], epoch)


def fixed_indices(n_total: int, n: int) -> list[int]:
    """The first ``n`` examples (evaluation sets are the split's first examples, in order)."""
    return list(range(min(n, n_total)))
