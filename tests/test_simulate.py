"""The physics core against gemmi and against itself (numpy vs torch, density vs Patterson)."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from pattersolve import fourier as F
from pattersolve import simulate as S
from pattersolve.errors import PattersolveError


def _random_structure(seed: int = 0, n: int = 14):
    rng = np.random.default_rng(seed)
    cell = gemmi.UnitCell(10.3, 11.1, 12.7, 81.0, 96.0, 104.0)
    frac = rng.random((n, 3))
    els = list(rng.choice(["C", "N", "O", "S"], n))
    b = rng.uniform(5, 30, n)
    return cell, frac, els, b


def _gemmi_model(cell, frac, els, b):
    st = gemmi.Structure()
    st.cell = cell
    st.spacegroup_hm = "P 1"
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    res = gemmi.Residue()
    res.name = "UNK"
    res.seqid = gemmi.SeqId(1, " ")
    for i in range(len(els)):
        a = gemmi.Atom()
        a.name = els[i]
        a.element = gemmi.Element(els[i])
        a.pos = cell.orthogonalize(gemmi.Fractional(*frac[i]))
        a.b_iso = float(b[i])
        a.occ = 1.0
        res.add_atom(a)
    chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    return st


def test_structure_factors_match_gemmi_oblique_cell():
    cell, frac, els, b = _random_structure()
    hkl = F.miller_sphere(cell, 1.5)
    f = S.structure_factors(frac, els, b, cell, hkl)
    st = _gemmi_model(cell, frac, els, b)
    calc = gemmi.StructureFactorCalculatorX(cell)
    ref = np.array([calc.calculate_sf_from_model(st[0], [int(x) for x in h]) for h in hkl])
    assert np.abs(f - ref).max() / np.abs(ref).max() < 1e-5


def test_density_matches_gemmi_density_calculator():
    """Band-limited density from our F equals gemmi's DensityCalculatorX cut at d_min."""
    cell, frac, els, b = _random_structure(1)
    d_min = 2.0
    hkl = F.miller_sphere(cell, d_min)
    f = S.structure_factors(frac, els, b, cell, hkl)
    st = _gemmi_model(cell, frac, els, b)
    dc = gemmi.DensityCalculatorX()
    dc.d_min = d_min
    dc.rate = 3
    dc.grid.setup_from(st)
    dc.put_model_density_on_grid(st[0])
    rho_g = np.array(dc.grid, copy=True)
    f_g = F.structure_factors_from_map(rho_g, hkl, cell.volume)
    assert np.abs(f_g - f).max() / np.abs(f).max() < 1e-3  # gemmi's density is cut at a radius
    rho = F.density_map(hkl, f, rho_g.shape, cell.volume)
    rho_gb = F.density_map(hkl, f_g, rho_g.shape, cell.volume)
    assert np.corrcoef(rho.ravel(), rho_gb.ravel())[0, 1] > 0.99999


def test_sign_convention_fftn_gives_the_other_hand():
    """numpy's fftn(rho) gives F* (CONVENTIONS.md): our round trip must give F itself."""
    cell, frac, els, b = _random_structure(2)
    hkl = F.miller_sphere(cell, 2.0)
    f = S.structure_factors(frac, els, b, cell, hkl)
    shape = (16, 16, 18)
    rho = F.density_map(hkl, f, shape, cell.volume)
    back = F.structure_factors_from_map(rho, hkl, cell.volume)
    assert np.allclose(back, f, atol=1e-9 * np.abs(f).max())
    wrong = np.fft.fftn(rho)[tuple((hkl % np.array(shape)).T)] * cell.volume / np.prod(shape)
    assert np.allclose(wrong, np.conj(f), atol=1e-9 * np.abs(f).max())


def test_patterson_is_autocorrelation_of_density():
    cell, frac, els, b = _random_structure(3)
    hkl = F.miller_sphere(cell, 1.8)
    f = S.structure_factors(frac, els, b, cell, hkl)
    shape = (20, 20, 22)
    rho = F.density_map(hkl, f, shape, cell.volume)
    pat = F.patterson_map(hkl, np.abs(f) ** 2, shape, cell.volume)
    # P(u) = V/N sum_x rho(x) rho(x+u), by brute force over a few u
    n = np.prod(shape)
    for u in [(0, 0, 0), (3, 5, 7), (10, 1, 19)]:
        shifted = np.roll(rho, shift=[-s for s in u], axis=(0, 1, 2))
        ac = cell.volume / n * (rho * shifted).sum()
        assert ac == pytest.approx(pat[u], rel=1e-9, abs=1e-9 * abs(pat).max())


def test_torch_maps_match_numpy():
    torch = pytest.importorskip("torch")
    cell, frac, els, b = _random_structure(4, n=10)
    shape = (18, 20, 22)
    tm = S.TorchMapMaker(cell, 2.0, shape, dtype=torch.float64)
    idx = torch.tensor([[S.ELEMENTS.index(e) for e in els]])
    rho_t, pat_t, f_t = tm.maps(torch.tensor(frac)[None], idx, torch.tensor(b)[None],
                                torch.ones(1, len(els), dtype=torch.float64))
    f = S.structure_factors(frac, els, b, cell, tm.hkl_np)
    assert np.allclose(f_t[0].numpy(), f, rtol=0, atol=1e-9 * np.abs(f).max())
    rho = F.density_map(tm.hkl_np, f, shape, cell.volume, S.f000(els))
    pat = F.patterson_map(tm.hkl_np, np.abs(f) ** 2, shape, cell.volume, S.f000(els) ** 2)
    assert np.allclose(rho_t[0].numpy(), rho, atol=1e-9 * np.abs(rho).max())
    assert np.allclose(pat_t[0].numpy(), pat, atol=1e-9 * np.abs(pat).max())


def test_padding_atoms_do_not_contribute():
    torch = pytest.importorskip("torch")
    cell, frac, els, b = _random_structure(5, n=6)
    tm = S.TorchMapMaker(cell, 2.5, (12, 12, 12), dtype=torch.float64)
    idx = torch.tensor([[S.ELEMENTS.index(e) for e in els] + [1, 1]])
    fr = torch.cat([torch.tensor(frac), torch.rand(2, 3, dtype=torch.float64)])[None]
    bb = torch.cat([torch.tensor(b), torch.tensor([20.0, 20.0], dtype=torch.float64)])[None]
    occ = torch.tensor([[1.0] * len(els) + [0.0, 0.0]], dtype=torch.float64)
    f_pad = tm.structure_factors(fr, idx, bb, occ)[0].numpy()
    f = S.structure_factors(frac, els, b, cell, tm.hkl_np)
    assert np.allclose(f_pad, f, atol=1e-9 * np.abs(f).max())


def test_miller_sphere_counts_and_half():
    cell = gemmi.UnitCell(10, 10, 10, 90, 90, 90)
    full = F.miller_sphere(cell, 1.5, half=False)
    half = F.miller_sphere(cell, 1.5, half=True)
    assert len(full) == 2 * len(half) == 1236  # PHASING_NOTES: 1,236 reflections at 1.5 A
    assert not any((-h == half).all(1).any() for h in half[:50])


def test_placement_centres_and_clash_check():
    from pattersolve.synthetic import ala_ala

    els, xyz = ala_ala()
    pl = S.place_fragment(xyz, els, cell_lengths=(10, 10, 10))
    com = (S.atomic_masses(els)[:, None] * pl.cart).sum(0) / S.atomic_masses(els).sum()
    assert np.allclose(com, 5.0)
    assert not S.clashes(pl)
    tight = S.place_fragment(xyz, els, padding=0.5)
    assert S.clashes(tight, min_distance=2.0)
    packed = S.place_fragment(xyz, els, padding=2.5)
    assert 2.0 < S.min_image_distance(packed) < 3.5


def test_envelope_mask_matches_brute_force_oblique_cell():
    """Points within r of an atom, images across the faces included, in a monoclinic cell."""
    cell = gemmi.UnitCell(9.3, 11.2, 10.1, 90, 104, 90)
    shape = (12, 14, 14)
    frac = np.random.default_rng(0).random((5, 3))
    frac[0] = [0.02, 0.97, 0.5]  # near a corner: its sphere wraps
    mask = S.envelope_mask(cell, frac, shape, 1.6)
    orth = np.array(cell.orth.mat)
    pts = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), -1)
    brute = np.zeros(shape, dtype=bool)
    for f in frac:
        d = pts - f
        d -= np.round(d)
        for shift in np.ndindex(3, 3, 3):
            c = (d + np.array(shift) - 1) @ orth.T
            brute |= (c**2).sum(-1) < 1.6**2
    assert mask.shape == shape and mask.dtype == bool
    assert mask.sum() > 100 and np.array_equal(mask, brute)
    assert mask[0, -1, 7] and mask[0, 0, 7]  # the wrapped sphere


def test_scale_to_unit_range():
    x = np.random.default_rng(0).normal(size=(4, 4, 4))
    y = S.scale_to_unit_range(x)
    assert y.min() == pytest.approx(-1) and y.max() == pytest.approx(1)
    assert np.allclose(S.scale_to_unit_range(3 * x + 7), y)


@pytest.mark.parametrize("shape", [(21, 23, 25), (24, 26, 28)])
def test_half_grid_round_trip_and_density_map_matches_full_fft(shape):
    """HalfGrid scatter/gather round-trips; the irfftn density equals fftn(F_grid).real / V."""
    cell, frac, els, b = _random_structure(6)
    hkl = F.miller_sphere(cell, 1.5)
    f = S.structure_factors(frac, els, b, cell, hkl)
    hg = F.HalfGrid(hkl, shape)
    assert hg.rshape == (shape[0], shape[1], shape[2] // 2 + 1)
    assert len(hg.mate_rows) and hg.conj.any() and not hg.conj.all()
    grid = hg.scatter(f)
    assert np.array_equal(hg.gather(grid), f)
    assert np.count_nonzero(grid) == len(hkl) + len(hg.mate_rows)
    # the half grid is the l >= 0 part of the full Hermitian grid
    full = F.f_on_grid(hkl, f, shape)
    assert np.array_equal(grid, full[:, :, : shape[2] // 2 + 1])
    assert np.array_equal(hg.grid_hkl[hg.index], np.where(hg.conj[:, None], -hkl, hkl))
    # batched gather
    batch = np.stack([grid, 2 * grid])
    assert np.array_equal(hg.gather(batch), np.stack([f, 2 * f]))
    # density map: same as the full-FFT formula, F000 included
    rho = F.density_map(hkl, f, shape, cell.volume, 37.5)
    full[0, 0, 0] = 37.5
    ref = np.fft.fftn(full).real / cell.volume
    assert rho.shape == tuple(shape)
    assert np.allclose(rho, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    with pytest.raises(PattersolveError):
        F.HalfGrid(hkl, (8, 8, 8))
