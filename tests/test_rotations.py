"""Rotations of a cell onto itself and the prediction averaged over them
(pattersolve.rotations), checked against gemmi and direct summation."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from pattersolve.fourier import miller_sphere, patterson_map
from pattersolve.reflections import Reflections
from pattersolve.rotations import (
    distinct_rotations,
    grid_rotations,
    invert_map,
    rotate_map,
    rotation_averaged,
)
from pattersolve.simulate import scale_to_unit_range, structure_factors


@pytest.mark.parametrize(("params", "shape", "count"), [
    ((12, 12, 12, 90, 90, 90), (20, 20, 20), 24),  # cubic
    ((12, 12, 12, 90, 90, 90), (20, 20, 24), 8),  # cubic cell, tetragonal grid
    ((10, 10, 14, 90, 90, 90), (16, 16, 24), 8),  # tetragonal
    ((9, 10, 14, 90, 90, 90), (16, 16, 24), 4),  # orthorhombic
    ((9, 10, 14, 90, 103, 90), (16, 16, 24), 2),  # monoclinic: the twofold along b
    ((9, 10, 14, 80, 103, 95), (16, 16, 24), 1),  # triclinic
    ((10, 10, 14, 90, 90, 120), (16, 16, 24), 4),  # hexagonal: the signed permutations only
])
def test_grid_rotations_are_the_lattice_symmetries(params, shape, count):
    cell = gemmi.UnitCell(*params)
    rots = grid_rotations(cell, shape)
    assert len(rots) == count
    assert np.array_equal(rots[0], np.eye(3))
    o = np.array(cell.orth.mat.tolist())
    for r in rots:
        assert round(np.linalg.det(r)) == 1
        q = o @ r @ np.linalg.inv(o)  # the Cartesian rotation: orthogonal
        np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-9)


def _atoms(rng: np.random.Generator, n: int = 7) -> np.ndarray:
    return 0.3 + 0.4 * rng.random((n, 3))


def test_rotated_map_is_the_density_of_the_rotated_structure_gemmi():
    """gemmi's density of the atoms moved x -> R x equals rotate_map of the original."""
    cell = gemmi.UnitCell(12, 12, 12, 90, 90, 90)
    rng = np.random.default_rng(3)
    frac = _atoms(rng)

    def gemmi_density(xyz: np.ndarray) -> np.ndarray:
        st = gemmi.Structure()
        st.cell = cell
        st.spacegroup_hm = "P 1"
        model = gemmi.Model("1")
        chain = gemmi.Chain("A")
        for k, x in enumerate(xyz):
            res = gemmi.Residue()
            res.name, res.seqid = "UNK", gemmi.SeqId(k + 1, " ")
            atom = gemmi.Atom()
            atom.name, atom.element, atom.b_iso, atom.occ = "C", gemmi.Element("C"), 15.0, 1.0
            atom.pos = cell.orthogonalize(gemmi.Fractional(*x))
            res.add_atom(atom)
            chain.add_residue(res)
        model.add_chain(chain)
        st.add_model(model)
        dc = gemmi.DensityCalculatorX()
        dc.d_min = 1.0
        dc.grid.setup_from(st)
        dc.put_model_density_on_grid(st[0])
        return np.array(dc.grid, copy=True)

    rho = gemmi_density(frac)
    rots = grid_rotations(cell, rho.shape)  # gemmi's grid: cubic, even
    assert len(rots) == 24
    for r in rots[1::4]:
        moved = gemmi_density((frac @ r.T) % 1.0)
        np.testing.assert_allclose(rotate_map(rho, r), moved, atol=1e-5 * rho.max())
        np.testing.assert_array_equal(rotate_map(rotate_map(rho, r), r.T), rho)


def test_rotated_patterson_is_the_patterson_of_the_rotated_structure():
    """Direct summation: |F|^2 of the rotated atoms gives the rotated Patterson (orthorhombic)."""
    cell = gemmi.UnitCell(9, 10, 14, 90, 90, 90)
    shape = (16, 18, 24)
    hkl = miller_sphere(cell, 1.5)
    rng = np.random.default_rng(5)
    frac = _atoms(rng)
    els = ["C", "N", "O", "C", "C", "O", "N"]

    def pat(x: np.ndarray) -> np.ndarray:
        f = structure_factors(x, els, 15.0, cell, hkl)
        return patterson_map(hkl, np.abs(f) ** 2, shape, cell.volume)

    p = pat(frac)
    rots = grid_rotations(cell, shape)
    assert len(rots) == 4
    for r in rots[1:]:
        np.testing.assert_allclose(rotate_map(p, r), pat(frac @ r.T), atol=1e-8 * p.max())


def test_inversion_is_the_enantiomorph():
    rng = np.random.default_rng(0)
    rho = rng.random((6, 8, 10))
    inv = invert_map(rho)
    assert inv[0, 0, 0] == rho[0, 0, 0] and inv[1, 2, 3] == rho[5, 6, 7]
    np.testing.assert_array_equal(invert_map(inv), rho)


def test_rotations_of_the_datas_own_symmetry_are_left_out():
    cell = gemmi.UnitCell(10, 10, 10, 90, 90, 90)
    rots = grid_rotations(cell, (8, 8, 8))
    rng = np.random.default_rng(1)
    p = rng.random((8, 8, 8))
    assert len(distinct_rotations(p, rots)) == 24
    four = [r for r in rots if np.array_equal(r[2], [0, 0, 1])]  # the 4-fold about c
    assert len(four) == 4
    sym = np.mean([rotate_map(p, r) for r in four], axis=0)
    kept = distinct_rotations(sym, rots)
    assert len(kept) == 6  # 24 / 4: one per coset
    assert np.array_equal(kept[0], np.eye(3))


class _Oracle:
    """A 'network' that returns the true density in the frame of its (rotated) input, in the
    wrong hand for the rotations listed in ``wrong`` and with some noise."""

    def __init__(self, pat: np.ndarray, rho: np.ndarray, rots: list[np.ndarray],
                 wrong: set[int], noise: float = 0.0) -> None:
        self.keys = {rotate_map(pat, r).tobytes(): k for k, r in enumerate(rots)}
        self.rho, self.rots, self.wrong, self.noise = rho, rots, wrong, noise
        self.rng = np.random.default_rng(7)
        self.calls = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = []
        for m in x:
            k = self.keys[np.asarray(m, np.float32).tobytes()]
            y = rotate_map(self.rho, self.rots[k])
            if k in self.wrong:
                y = invert_map(y)
            out.append(y + self.noise * self.rng.standard_normal(y.shape))
            self.calls += 1
        return np.stack(out).astype(np.float32)


def _case():
    cell = gemmi.UnitCell(10, 10, 10, 90, 90, 90)
    shape = (12, 12, 12)
    rng = np.random.default_rng(2)
    grid = np.stack(np.meshgrid(*[np.arange(12)] * 3, indexing="ij"), axis=-1)
    rho = np.zeros(shape)
    for x in 3 + 6 * rng.random((5, 3)):  # five Gaussian atoms (sigma 1 voxel): chiral
        rho += np.exp(-0.5 * ((grid - x) ** 2).sum(-1))
    pat = scale_to_unit_range(np.real(np.fft.ifftn(np.abs(np.fft.fftn(rho)) ** 2)))
    return cell, shape, rho, pat.astype(np.float32)


def test_average_of_an_equivariant_network_is_its_prediction():
    cell, shape, rho, pat = _case()
    rots = grid_rotations(cell, shape)
    oracle = _Oracle(pat, rho, rots, wrong=set())
    avg = rotation_averaged(pat, rots, oracle)
    assert avg.n_rotations == 24 and oracle.calls == 24 and avg.inverted == 0
    np.testing.assert_allclose(avg.density, rho, atol=1e-6)
    assert avg.agreement == pytest.approx(1.0)


def test_average_takes_the_majority_hand_and_removes_noise():
    cell, shape, rho, pat = _case()
    rots = grid_rotations(cell, shape)
    # the identity and 15 others in the wrong hand: the average comes out in the wrong hand,
    # which most single predictions had
    wrong = set(range(16))
    avg = rotation_averaged(pat, rots, _Oracle(pat, rho, rots, wrong, noise=0.15))
    assert avg.inverted == 8
    assert np.corrcoef(avg.density.ravel(), invert_map(rho).ravel())[0, 1] > 0.9
    # the first prediction in the minority's hand is brought over to the majority's
    avg = rotation_averaged(pat, rots, _Oracle(pat, rho, rots, {0, 1, 2}, noise=0.15))
    assert avg.inverted == 3
    single = _Oracle(pat, rho, rots, set(), noise=0.15)(pat[None])[0]
    cc_avg = np.corrcoef(avg.density.ravel(), rho.ravel())[0, 1]
    cc_one = np.corrcoef(single.ravel(), rho.ravel())[0, 1]
    assert cc_avg > 0.9 > cc_one  # 24 noisy predictions average to a clean one
    assert 0.0 < avg.agreement < 1.0


def test_solve_reports_the_rotations_averaged(alaala):
    from pattersolve.solve import predict

    refl = Reflections.from_arrays(alaala.placement.cell, alaala.hkl, np.abs(alaala.f))

    class Identity:
        model = type("M", (), {"grid_spacing": 0.5, "d_min": 1.5, "name": "identity"})()
        description = "identity"

        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.asarray(x)

    one = predict(refl, Identity())
    avg = predict(refl, Identity(), average_rotations=True)
    assert one.rotations == 1 and avg.rotations == 24  # 10 A cube: the 24 rotations
    # an 'equivariant network' (the identity): each turned Patterson, turned back, is the
    # Patterson again, so the average is the single prediction
    assert avg.rotation_agreement == pytest.approx(1.0)
    np.testing.assert_allclose(avg.density, one.density, atol=1e-6)
    np.testing.assert_allclose(avg.f, one.f, atol=1e-6 * np.abs(one.f).max())
