"""Amplitudes from intensities: the French & Wilson (1978) posterior.

``sqrt(max(I, 0))`` turns every weak or negative intensity into an amplitude of (nearly) zero,
with a first-order sigma that is meaningless there. French & Wilson instead take the posterior
mean of ``|F|`` given the measurement ``I ~ N(|F|^2, sigma^2)`` and Wilson's prior for a random
atomic structure, with mean intensity ``eps * Sigma(d)`` (``eps`` the reflection's
multiplicity factor, ``Sigma`` the mean intensity of its resolution shell):

* acentric: ``p(F) = 2 F / (eps Sigma) exp(-F^2 / (eps Sigma))``;
* centric: ``p(F) = sqrt(2 / (pi eps Sigma)) exp(-F^2 / (2 eps Sigma))``.

Both priors fold into the likelihood: with ``J = F^2``, the acentric posterior of ``J`` is a
normal of mean ``I - sigma^2 / (eps Sigma)`` and width ``sigma`` truncated at 0, and the centric
posterior of ``F`` is ``exp(-(F^2 - mu)^2 / (2 sigma^2))`` with ``mu = I - sigma^2 / (2 eps
Sigma)``. :func:`posterior_amplitudes` takes the mean and variance of ``F`` over these on an
adaptive grid in ``F`` (dense where the posterior lives, for strong and weak reflections
alike); the paper's tables, which ctruncate interpolates, are samples of the same integrals
(``tests/test_frenchwilson.py`` checks them, brute force and reciprocalspaceship). ``Sigma``
comes from :func:`mean_intensity` (``<I / eps>`` in equal-count shells of ``1/d^2``,
interpolated). No reflection is rejected (ctruncate drops ``I < -3.7 sigma``); a very negative
one gets a small amplitude with a small sigma.

Example
-------
>>> import numpy as np
>>> f, sig_f = posterior_amplitudes(np.array([0.0]), np.array([1.0]), np.array([np.inf]),
...                                 np.array([False]))
>>> round(float(f[0]), 3)  # E|Z|^(1/2) for a half-normal: 2^(1/4) Gamma(3/4) / sqrt(pi)
0.822
"""

from __future__ import annotations

import gemmi
import numpy as np

from .fourier import d_spacings
from .settings import FW_MIN_PER_SHELL, FW_NODES, FW_SHELLS, FW_WIDTH

__all__ = ["french_wilson", "mean_intensity", "posterior_amplitudes"]


def mean_intensity(s2: np.ndarray, intensity: np.ndarray, epsilon: np.ndarray,
                   n_shells: int = FW_SHELLS, min_per_shell: int = FW_MIN_PER_SHELL
                   ) -> np.ndarray:
    """Wilson's ``Sigma``: the mean of ``I / eps`` in resolution shells, per reflection.

    Parameters
    ----------
    s2
        ``1 / d^2`` of each reflection.
    intensity
        Measured intensities (negative values included: they are part of the mean).
    epsilon
        Multiplicity (epsilon) factors.
    n_shells
        At most this many equal-count shells of ``1/d^2``...
    min_per_shell
        ...each holding at least this many reflections (fewer shells for small data sets).

    Returns
    -------
    numpy.ndarray
        ``Sigma`` at each reflection, linear in ``1/d^2`` between shell centres (constant
        beyond the outermost), floored at a small positive value.
    """
    s2 = np.asarray(s2, dtype=np.float64)
    scaled = np.asarray(intensity, dtype=np.float64) / np.asarray(epsilon, dtype=np.float64)
    n = len(s2)
    k = int(max(1, min(n_shells, n // max(1, min_per_shell))))
    order = np.argsort(s2)
    chunks = np.array_split(order, k)
    centres = np.array([s2[c].mean() for c in chunks])
    means = np.array([scaled[c].mean() for c in chunks])
    floor = 1e-3 * max(float(np.abs(scaled).mean()), 1e-30)
    means = np.maximum(means, floor)
    if k == 1:
        return np.full(n, means[0])
    return np.interp(s2, centres, means)


def posterior_amplitudes(intensity: np.ndarray, sigma: np.ndarray, prior: np.ndarray,
                         centric: np.ndarray, nodes: int = FW_NODES, width: float = FW_WIDTH,
                         chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation of ``|F|`` given ``I``, ``sigma(I)``, the prior.

    Parameters
    ----------
    intensity, sigma
        Measurement and its standard deviation (``sigma > 0``).
    prior
        ``eps * Sigma``, the prior's mean intensity (``inf``: a flat prior on ``J = F^2``
        for acentric and on ``F`` for centric reflections).
    centric
        True for centric reflections.
    nodes
        Quadrature points per reflection.
    width
        The grid spans ``mu +- width * sigma`` in ``F^2`` (clipped at 0; for ``mu`` far below
        0, ``width^2 / 2`` decay lengths ``sigma^2 / |mu|`` of the posterior's tail).
    chunk
        Reflections per vectorised block (memory).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``E[F]`` and ``sqrt(E[(F - E[F])^2])``.
    """
    i_obs = np.asarray(intensity, dtype=np.float64)
    sig = np.asarray(sigma, dtype=np.float64)
    prior = np.broadcast_to(np.asarray(prior, dtype=np.float64), i_obs.shape)
    centric = np.broadcast_to(np.asarray(centric, dtype=bool), i_obs.shape)
    if np.any(~(sig > 0)):
        raise ValueError("French-Wilson needs sigma > 0 for every reflection")
    mu = i_obs - np.where(centric, 0.5, 1.0) * sig**2 / prior
    f_mean = np.empty_like(i_obs)
    f_var = np.empty_like(i_obs)
    t = np.linspace(0.0, 1.0, nodes)
    for a in range(0, len(i_obs), chunk):
        sl = slice(a, a + chunk)
        m, s, c = mu[sl, None], sig[sl, None], centric[sl, None]
        # the posterior's width in F^2: sigma, or less when mu is far below 0, where the
        # truncated normal decays like exp(-|mu| J / sigma^2) from J = 0 (the grid then spans
        # width^2 / 2 of those decay lengths, as far as width sigmas reach into a normal tail)
        s_j = s * np.minimum(1.0, 0.5 * width * s / np.maximum(-m, 1e-300))
        lo = np.sqrt(np.maximum(m - width * s_j, 0.0))
        hi = np.sqrt(np.maximum(m, 0.0) + width * s_j)
        f = lo + (hi - lo) * t  # (n, nodes), uniform in F
        logw = -((f * f - m) ** 2) / (2.0 * s * s)
        logw = logw + np.where(c, 0.0, np.log(np.maximum(f, 1e-300)))  # acentric: F dF
        w = np.exp(logw - logw.max(axis=1, keepdims=True))
        w[:, [0, -1]] *= 0.5  # trapezoid
        norm = w.sum(axis=1)
        mean = (w * f).sum(axis=1) / norm
        f_mean[sl] = mean
        f_var[sl] = (w * (f - mean[:, None]) ** 2).sum(axis=1) / norm  # two-pass: no cancellation
    return f_mean, np.sqrt(f_var)


def french_wilson(hkl: np.ndarray, intensity: np.ndarray, sigma: np.ndarray,
                  cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Amplitudes and their sigmas from merged intensities, by French & Wilson.

    Parameters
    ----------
    hkl
        Unique reflections ``(n, 3)`` of the crystal's space group.
    intensity, sigma
        Merged ``I`` and ``sigma(I) > 0``.
    cell, spacegroup
        For ``1/d^2``, centric flags and epsilon factors (gemmi).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``F`` and ``sigma(F)``.
    """
    hkl = np.asarray(hkl, dtype=np.int32)
    ops = spacegroup.operations()
    eps = ops.epsilon_factor_without_centering_array(hkl).astype(np.float64)
    centric = ops.centric_flag_array(hkl).astype(bool)
    s2 = d_spacings(cell, hkl) ** -2.0
    sigma_w = mean_intensity(s2, intensity, eps)
    return posterior_amplitudes(intensity, sigma, eps * sigma_w, centric)

