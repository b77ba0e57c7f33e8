"""Refinement with noisy amplitudes: the amplitude projection, RAAR's beta at the end, F000, and
the hybrid pool of guided and classical starts (issue 29; bench/bench_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pattersolve import fourier, synthetic
from pattersolve import refine as rf
from pattersolve import simulate as sim
from pattersolve.refine import refine_phases

ELEMENTS, ALA_ALA = synthetic.ala_ala()


@pytest.fixture(scope="module")
def noisy():
    """Ala-Ala in a 10 A cube at 1.5 A, 10 % amplitude noise, sigma = 0.1 |Fo|."""
    rng = np.random.default_rng(0)
    sd = synthetic.simulate_fragment(ELEMENTS, ALA_ALA, 1.5, cell_lengths=[10.0] * 3,
                                     rotation=sim.random_rotation(rng))
    amp = np.abs(sd.f) * np.abs(1.0 + 0.1 * rng.standard_normal(len(sd.f)))
    cell = sd.placement.cell
    return cell, sd.hkl, sd.f, amp, 0.1 * amp, fourier.grid_shape_for_spacing(cell, 0.6)


def _engine(noisy, k):
    cell, hkl, _, amp, sigma, shape = noisy
    f000 = sim.f000(ELEMENTS)
    old = rf.REFINE_SIGMA_K
    rf.REFINE_SIGMA_K = k
    try:
        prob = rf._setup(hkl, amp, sigma, cell, shape, f000)
    finally:
        rf.REFINE_SIGMA_K = old
    return rf._Engine(prob, rf._NumpyBackend(), 0.9, adapt_f000=False), prob


def _projected_amplitudes(noisy, k, x):
    eng, prob = _engine(noisy, k)
    g = np.fft.rfftn(eng.project_amplitudes(x))
    return np.abs(g[prob.meas]), np.abs(np.fft.rfftn(x)[prob.meas]), prob


def test_projection_is_exact_with_k_zero(noisy):
    """The shipped projection (REFINE_SIGMA_K = 0) puts the measured amplitude on every
    measured reflection and keeps its phase, whatever sigma says."""
    cell, hkl, f, amp, _, shape = noisy
    x = fourier.density_map(hkl, f * 1.7, shape, cell.volume)
    new, _, prob = _projected_amplitudes(noisy, 0.0, x)
    np.testing.assert_allclose(new, prob.target[prob.meas], rtol=1e-9)
    g0, g1 = np.fft.rfftn(x)[prob.meas], np.fft.rfftn(
        _engine(noisy, 0.0)[0].project_amplitudes(x))[prob.meas]
    assert np.abs(np.angle(g1 * np.conj(g0))).max() < 1e-6


def test_projection_relaxes_within_k_sigma(noisy):
    """With k > 0 an amplitude moves only to the edge of ``Fo +- k sigma``; one inside stays."""
    cell, hkl, f, amp, _, shape = noisy
    x = fourier.density_map(hkl, f, shape, cell.volume)  # true |F|: mostly within 2 sigma
    for k in (1.0, 2.0):
        new, old, prob = _projected_amplitudes(noisy, k, x)
        target, tol = prob.target[prob.meas], prob.tol[prob.meas]
        assert np.all(new >= target - tol - 1e-6) and np.all(new <= target + tol + 1e-6)
        inside = np.abs(old - target) < tol
        assert inside.mean() > 0.5
        np.testing.assert_allclose(new[inside], old[inside], rtol=1e-9)
        assert np.any(new[~inside] != old[~inside])


def test_beta_falls_at_the_end():
    eng = rf._Engine.__new__(rf._Engine)
    eng.beta = 0.9
    cycles = 600
    betas = [eng.beta_at(it, cycles) for it in range(cycles)]
    start = cycles - round(rf.REFINE_ANNEAL_FRACTION * cycles)
    assert all(b == 0.9 for b in betas[:start])
    assert betas[-1] == pytest.approx(rf.REFINE_BETA_END)
    assert np.all(np.diff(betas[start:]) < 0)


def test_f000_stays_with_complete_data_and_follows_with_missing(noisy):
    cell, hkl, f, amp, sigma, shape = noisy
    full = refine_phases(hkl, amp, cell, shape, sigma=sigma, n_starts=1, cycles=60, rng=0)
    assert full.f000 == full.extra["f000_start"]
    gappy = amp.copy()
    gappy[np.random.default_rng(1).uniform(size=len(amp)) < 0.05] = np.nan
    part = refine_phases(hkl, gappy, cell, shape, sigma=sigma, n_starts=1, cycles=60, rng=0)
    assert part.f000 < part.extra["f000_start"]


@pytest.mark.slow
def test_hybrid_pool_is_never_worse_than_its_classical_starts():
    """Packed cell, a prediction that is pure noise: the guided start and the unrefined
    prediction compete with classical mode's own starts (the same random phases), so the
    chosen residual is at most classical mode's."""
    elements, xyz = synthetic.asp_ala_val()
    sd = synthetic.simulate_fragment(elements, xyz, 2.5, padding=2.5, b_iso=15.0,
                                     rotation=sim.random_rotation(np.random.default_rng(0)))
    cell, hkl = sd.placement.cell, sd.hkl
    amp = np.abs(sd.f)
    shape = fourier.grid_shape_for_spacing(cell, 0.8)
    junk = np.random.default_rng(3).normal(size=shape)
    hyb = refine_phases(hkl, amp, cell, shape, start_density=junk, n_starts=3, cycles=120,
                        rng=0)
    cla = refine_phases(hkl, amp, cell, shape, n_starts=3, cycles=120, rng=0)
    assert [s["kind"] for s in hyb.starts] == ["guided", "random", "random", "random"]
    for h, c in zip(hyb.starts[1:], cla.starts, strict=True):
        assert h["residual"] == pytest.approx(c["residual"], abs=1e-12)
    assert hyb.residual_final <= cla.residual_final + 1e-12
