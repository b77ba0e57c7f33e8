"""French & Wilson amplitudes: the posterior against the paper's tables, brute-force
integration and reciprocalspaceship; Wilson's Sigma; the estimate's point (a smaller error than
sqrt(max(I, 0)) for weak data); centric flags and epsilon from the space group."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from pattersolve.fourier import d_spacings, miller_sphere
from pattersolve.frenchwilson import french_wilson, mean_intensity, posterior_amplitudes

# French & Wilson (1978) tables as CCP4's ctruncate carries them: E(F) / sqrt(sigma) and
# sd(F) / sqrt(sigma) against h = I/sigma - sigma/S (acentric) or I/sigma - sigma/(2S) (centric).
ACENTRIC = {-4.0: (0.42336, 0.21534), -2.0: (0.54857, 0.26886), 0.0: (0.82218, 0.34915),
            1.0: (1.07043, 0.37653), 3.0: (1.70644, 0.30416), 9.0: (2.99531, 0.16760)}
CENTRIC = {-4.0: (0.27272, 0.20265), -2.0: (0.35988, 0.26059), 0.0: (0.58137, 0.37417),
           1.0: (0.83468, 0.44360), 3.0: (1.63188, 0.34880)}


@pytest.mark.parametrize("centric,table", [(False, ACENTRIC), (True, CENTRIC)])
def test_posterior_matches_the_tables(centric, table):
    h = np.array(sorted(table))
    sigma = np.full(len(h), 4.0)  # the tables scale with sqrt(sigma)
    prior = np.full(len(h), 50.0)
    shift = (0.5 if centric else 1.0) * sigma / prior  # I/sigma = h + sigma/S (or /2S)
    f, sd = posterior_amplitudes((h + shift) * sigma, sigma, prior, np.full(len(h), centric))
    ref = np.array([table[x] for x in h]) * np.sqrt(sigma)[:, None]
    np.testing.assert_allclose(f, ref[:, 0], atol=1e-4 * 2)
    np.testing.assert_allclose(sd, ref[:, 1], atol=1e-4 * 2)


def _brute_force(i_obs, sig, prior, centric, n=400_001):
    """E[F] and sd(F) by trapezoids on a fine uniform grid in F (prior times likelihood)."""
    out = []
    for i, s, p, c in zip(i_obs, sig, prior, centric, strict=True):
        f = np.linspace(0.0, np.sqrt(max(i, 0.0) + 60.0 * s), n)[1:]
        j = f * f
        # p(F) dF: acentric 2F/p exp(-F^2/p), centric exp(-F^2/(2p)); likelihood N(I; F^2, s)
        logw = (-j / (2 * p) if c else np.log(f) - j / p) - (j - i) ** 2 / (2 * s * s)
        w = np.exp(logw - logw.max())
        m = (w * f).sum() / w.sum()
        out.append((m, np.sqrt((w * (f - m) ** 2).sum() / w.sum())))
    return np.array(out).T


def _cases(n, seed=0):
    rng = np.random.default_rng(seed)
    prior = rng.uniform(0.5, 50.0, n)
    sig = rng.uniform(0.1, 10.0, n)
    i_obs = sig * rng.uniform(-30.0, 60.0, n)
    i_obs[:4] = [-200.0 * sig[0], 0.0, 1e4 * sig[2], 0.5 * sig[3]]
    return i_obs, sig, prior, rng.random(n) < 0.3


def test_posterior_matches_brute_force_integration():
    i_obs, sig, prior, centric = _cases(40)
    f, sd = posterior_amplitudes(i_obs, sig, prior, centric)
    f_ref, sd_ref = _brute_force(i_obs, sig, prior, centric)
    np.testing.assert_allclose(f, f_ref, rtol=2e-4)
    np.testing.assert_allclose(sd, sd_ref, rtol=5e-4)
    assert (f > 0).all() and (sd > 0).all()


def test_posterior_matches_reciprocalspaceship():
    quad = pytest.importorskip("reciprocalspaceship.algorithms.scale_merged_intensities")
    i_obs, sig, prior, centric = _cases(300, seed=1)
    f, sd = posterior_amplitudes(i_obs, sig, prior, centric)
    _, _, f_rs, sd_rs = quad._french_wilson_posterior_quad(i_obs, sig, prior, centric,
                                                           npoints=4000)
    np.testing.assert_allclose(f, f_rs, rtol=2e-3)
    np.testing.assert_allclose(sd, sd_rs, rtol=5e-3)


def test_strong_reflections_are_sqrt_i_and_flat_prior_limits():
    i_obs = np.array([1e4, 400.0])
    f, sd = posterior_amplitudes(i_obs, np.ones(2), np.full(2, 1e6), np.zeros(2, bool))
    np.testing.assert_allclose(f, np.sqrt(i_obs), rtol=1e-5)
    np.testing.assert_allclose(sd, 1.0 / (2.0 * np.sqrt(i_obs)), rtol=2e-3)  # sigma / 2F
    with pytest.raises(ValueError, match="sigma > 0"):
        posterior_amplitudes(np.ones(2), np.array([1.0, 0.0]), np.ones(2), np.zeros(2, bool))


def test_mean_intensity_follows_a_wilson_falloff():
    rng = np.random.default_rng(2)
    s2 = rng.uniform(0.0, 0.4, 6000)
    true_sigma = 100.0 * np.exp(-15.0 * s2 / 2.0)  # B = 15 A^2
    eps = np.where(rng.random(6000) < 0.1, 2.0, 1.0)
    i_obs = rng.exponential(eps * true_sigma)  # acentric Wilson intensities
    est = mean_intensity(s2, i_obs, eps)
    inner = (s2 > 0.03) & (s2 < 0.37)  # beyond the outermost shell centres it is constant
    assert np.median(np.abs(est[inner] / true_sigma[inner] - 1.0)) < 0.06
    assert mean_intensity(s2[:20], i_obs[:20], eps[:20]).std() == 0.0  # too few: one shell


def test_french_wilson_beats_sqrt_for_weak_data_and_uses_the_space_group():
    """Acentric and centric Wilson amplitudes in P2(1), measured with noise: the posterior mean
    has a smaller r.m.s. error than sqrt(max(I, 0)), most of all where I < sigma."""
    cell = gemmi.UnitCell(20.0, 25.0, 30.0, 90.0, 100.0, 90.0)
    sg = gemmi.SpaceGroup("P 1 21 1")
    hkl = miller_sphere(cell, 1.2, half=True)
    ops = sg.operations()
    asu = gemmi.ReciprocalAsu(sg)
    hkl = hkl[[asu.is_in(list(map(int, h))) for h in hkl]]
    hkl = hkl[~ops.systematic_absences(hkl.astype(np.int32))]
    centric = ops.centric_flag_array(hkl.astype(np.int32)).astype(bool)
    eps = ops.epsilon_factor_without_centering_array(hkl.astype(np.int32)).astype(float)
    assert centric.any() and (~centric).any() and (eps > 1).any()
    rng = np.random.default_rng(3)
    sigma_w = 50.0 * np.exp(-20.0 * d_spacings(cell, hkl) ** -2.0 / 2.0)
    f_true = np.where(centric, np.abs(rng.normal(0.0, np.sqrt(eps * sigma_w))),
                      np.sqrt(rng.exponential(eps * sigma_w)))
    sig_i = 0.7 * eps * sigma_w  # independent of the truth, so the posterior is exact
    i_obs = f_true**2 + rng.normal(0.0, sig_i)
    f_fw, sd_fw = french_wilson(hkl, i_obs, sig_i, cell, sg)
    f_sqrt = np.sqrt(np.clip(i_obs, 0.0, None))
    weak = i_obs < sig_i
    assert weak.sum() > 200
    rms = {k: float(np.sqrt(np.mean((v[weak] - f_true[weak]) ** 2)))
           for k, v in (("fw", f_fw), ("sqrt", f_sqrt))}
    assert rms["fw"] < 0.75 * rms["sqrt"], rms
    assert np.sqrt(np.mean((f_fw - f_true) ** 2)) < 0.85 * np.sqrt(np.mean((f_sqrt - f_true)
                                                                            ** 2))
    assert (f_fw > 0).all() and (sd_fw > 0).all()
    # the posterior's sd is an honest error bar: the mean squared z-score is 1
    z2 = ((f_fw - f_true) / sd_fw) ** 2
    assert 0.9 < z2.mean() < 1.1 and 0.9 < z2[weak].mean() < 1.1, (z2.mean(), z2[weak].mean())
    # the same numbers from the pieces, with the space group's centric flags and epsilons
    sigma_est = mean_intensity(d_spacings(cell, hkl) ** -2.0, i_obs, eps)
    f_ref, _ = posterior_amplitudes(i_obs, sig_i, eps * sigma_est, centric)
    np.testing.assert_allclose(f_fw, f_ref, rtol=1e-12)
    f_flat, _ = posterior_amplitudes(i_obs, sig_i, eps * sigma_est, np.zeros(len(hkl), bool))
    assert np.abs(f_flat - f_fw)[centric].max() > 0.1  # the centric prior is not the acentric
