"""The enantiomorph of a training target, the twin-invariant loss and map centrosymmetry."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pattersolve_train import train as T

from pattersolve.fourier import density_map, grid_shape_for_spacing, structure_factors_from_map
from pattersolve.phases import centrosymmetry
from pattersolve.simulate import structure_factors
from pattersolve.synthetic import asp_ala_val, simulate_fragment

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _packed_tripeptide(shape_spacing: float = 0.8):
    """Asp-Ala-Val in a packed cell (the hard regime's placement), its map and grid."""
    elements, xyz = asp_ala_val()
    sim = simulate_fragment(elements, xyz, d_min=2.5, cell_lengths=None, padding=2.5)
    shape = grid_shape_for_spacing(sim.placement.cell, shape_spacing)
    rho = density_map(sim.hkl, sim.f, shape, sim.placement.cell.volume)
    return sim, shape, rho


def test_inverted_target_is_the_enantiomorph_in_the_same_frame() -> None:
    sim, shape, rho = _packed_tripeptide()
    inv = T.invert_maps(torch.from_numpy(rho)[None, None])[0, 0].numpy()
    # the map of the atoms inverted through the cell centre (fractional x -> 1 - x), where
    # place_fragment centres the fragment: a D-peptide, computed from its atoms
    f_inv = structure_factors(1.0 - sim.placement.frac, sim.elements, sim.b_iso,
                              sim.placement.cell, sim.hkl)
    rho_inv = density_map(sim.hkl, f_inv, shape, sim.placement.cell.volume)
    np.testing.assert_allclose(inv, rho_inv, atol=1e-9 * np.abs(rho).max())
    # the same Patterson (F_inv = conj F), and a different map
    np.testing.assert_allclose(f_inv, np.conj(sim.f), rtol=1e-9, atol=1e-9)
    assert np.corrcoef(rho.ravel(), inv.ravel())[0, 1] < 0.6
    # an involution, voxel i -> -i mod n along every axis
    x = torch.randn(2, 1, 5, 6, 7)
    y = T.invert_maps(x)
    assert torch.equal(T.invert_maps(y), x)
    assert y[1, 0, 1, 2, 3] == x[1, 0, 4, 4, 4] and y[0, 0, 0, 0, 0] == x[0, 0, 0, 0, 0]


def test_twin_loss_scores_the_better_hand() -> None:
    _, _, rho = _packed_tripeptide()
    t = torch.from_numpy(rho).float()[None, None]
    t = (t - t.min()) / (t.max() - t.min())
    other_hand = T.invert_maps(t)
    loss, cc = T.loss_terms(other_hand, t, 0.1)
    twin_loss, twin_cc = T.loss_terms(other_hand, t, 0.1, twin=True)
    assert float(cc) < 0.6 and float(twin_cc) == pytest.approx(1.0, abs=1e-6)
    assert float(twin_loss) == pytest.approx(0.0, abs=1e-6)
    assert float(loss) > 0.05
    # a prediction of the right hand scores the same either way; the hedge (the average of
    # both hands, what the plain loss rewards when the hand is unknown) is no longer optimal
    assert torch.allclose(T.loss_terms(t, t, 0.1, twin=True)[0], T.loss_terms(t, t, 0.1)[0])
    hedge = (t + other_hand) / 2
    assert float(T.loss_terms(hedge, t, 0.1, twin=True)[0]) > 0.01
    # gradients flow through the chosen branch
    p = other_hand.clone().requires_grad_(True)
    T.loss_terms(p + 0.1 * torch.randn_like(p), t, 0.1, twin=True)[0].sum().backward()
    assert p.grad is not None and float(p.grad.abs().sum()) > 0


def test_centrosymmetry_measures_the_hedge() -> None:
    sim, shape, rho = _packed_tripeptide()
    inv = T.invert_maps(torch.from_numpy(rho)[None, None])[0, 0].numpy()
    chiral = centrosymmetry(rho)
    assert chiral < 0.7
    assert centrosymmetry(rho + inv) == pytest.approx(1.0, abs=1e-9)
    # a centre anywhere on the grid counts: shift the symmetric map
    assert centrosymmetry(np.roll(rho + inv, (3, 1, 2), axis=(0, 1, 2))) == pytest.approx(1.0)
    # a centrosymmetric map has phases 0 or 180 deg about its centre: real F
    f = structure_factors_from_map(rho + inv, sim.hkl, sim.placement.cell.volume)
    assert np.abs(f.imag).max() < 1e-9 * np.abs(f).max()
    assert centrosymmetry(np.zeros((4, 4, 4))) == 1.0


def test_fit_with_twin_loss(tmp_path: Path, train_shards: Path) -> None:
    cfg = replace(T.load_config(CONFIGS / "tiny.toml"), shards=str(train_shards),
                  loss_twin=True, max_steps=30, log_every=10, eval_every=30)
    result = T.fit(cfg, tmp_path / "run", progress=False)
    assert np.isfinite(result.last_metrics["val_loss"])
    assert json.loads((tmp_path / "run" / T.CONFIG_JSON).read_text())["loss_twin"] is True
    # the shipped twin config asks for it
    assert T.load_config(CONFIGS / "hard_tri_twin.toml").loss_twin


def test_runs_saved_before_the_key_still_resume(tmp_path: Path, train_shards: Path) -> None:
    cfg = replace(T.load_config(CONFIGS / "tiny.toml"), shards=str(train_shards),
                  max_steps=6, log_every=3, eval_every=6)
    run = tmp_path / "run"
    T.fit(cfg, run, progress=False, stop_at=3)
    saved = json.loads((run / T.CONFIG_JSON).read_text())
    del saved["loss_twin"]  # what a run started before loss_twin existed holds
    (run / T.CONFIG_JSON).write_text(json.dumps(saved))
    assert T.fit(cfg, run, resume=True, progress=False).last_metrics["step"] == 6
