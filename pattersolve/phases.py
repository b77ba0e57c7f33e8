"""Phases from densities, amplitude residuals, figures of merit, Hendrickson-Lattman coefficients.

Conventions (docs/conventions.md): ``F(h) = sum_j f_j exp(+2 pi i h.x_j)``,
``F = V * ifftn(rho)``. Phases are in radians unless a name says ``deg``.

The FOM <-> HL conversion uses the acentric phase probability
``P(phi) ~ exp(X cos(phi - phi_best))`` whose figure of merit is ``m = I1(X) / I0(X)``;
``HLA = X cos(phi_best)``, ``HLB = X sin(phi_best)``, ``HLC = HLD = 0`` (what phenix and
refmac expect from an experimental-phasing bundle). No scipy: ``I1/I0`` comes from a power
series for moderate ``X`` and its asymptotic expansion for large ``X``.
"""

from __future__ import annotations

import gemmi
import numpy as np

from .fourier import d_spacings, structure_factors_from_map
from .settings import FOM_MIN_PER_BIN, FOM_SIGMAA_RANGE

#: Largest FOM converted to HL coefficients (m = 1 would need X = infinity).
FOM_MAX = 0.9999
#: X above which the asymptotic expansion of I1(X)/I0(X) is used (error < 1e-10 there).
_SERIES_LIMIT = 60.0
_N_SERIES = 200


def phases_from_density(rho: np.ndarray, hkl: np.ndarray, volume: float) -> np.ndarray:
    """Complex structure factors of a density map at the given Miller indices.

    Parameters
    ----------
    rho
        Density on the full P1 cell, shape ``(nu, nv, nw)`` (any affine scale: the phases of
        ``h != 0`` do not depend on an offset or a positive scale).
    hkl
        Miller indices ``(n, 3)``; they must fit the grid.
    volume
        Cell volume in A^3.

    Returns
    -------
    numpy.ndarray
        complex128 ``F(h) = V * ifftn(rho)`` sampled at ``hkl``.
    """
    return structure_factors_from_map(np.asarray(rho, dtype=np.float64), hkl, volume)


def unit_phase(f: np.ndarray) -> np.ndarray:
    """``F / |F|``: the phases of complex structure factors as unit numbers (0 where F = 0)."""
    return f / np.maximum(np.abs(f), 1e-30)


def bessel_ratio(x: np.ndarray) -> np.ndarray:
    """``I1(x) / I0(x)`` for ``x >= 0`` (the acentric figure of merit of ``X = x``).

    Power series (ratio of the two series, no overflow up to :data:`_SERIES_LIMIT`), and
    ``1 - 1/(2x) - 1/(8x^2) - 1/(8x^3) - 25/(128x^4) - 13/(32x^5)`` above it.
    """
    x = np.abs(np.asarray(x, dtype=np.float64))
    out = np.empty_like(x)
    small = x <= _SERIES_LIMIT
    xs = x[small]
    if xs.size:
        q = (xs / 2.0) ** 2
        term = np.ones_like(xs)  # (x/2)^(2k) / (k!)^2 for I0
        i0 = np.ones_like(xs)
        i1 = np.ones_like(xs)  # I1 * 2 / x: sum (x/2)^(2k) / (k! (k+1)!)
        t1 = np.ones_like(xs)
        for k in range(1, _N_SERIES):
            term = term * q / (k * k)
            t1 = t1 * q / (k * (k + 1))
            i0 += term
            i1 += t1
        out[small] = i1 * (xs / 2.0) / i0
    xl = x[~small]
    if xl.size:
        inv = 1.0 / xl
        out[~small] = 1.0 - inv * (0.5 + inv * (0.125 + inv * (0.125 + inv * (
            25.0 / 128.0 + inv * 13.0 / 32.0))))
    return out


def fom_to_x(fom: np.ndarray) -> np.ndarray:
    """Invert ``m = I1(X) / I0(X)`` for ``X >= 0`` (bisection in ``log X``, vectorised)."""
    m = np.clip(np.asarray(fom, dtype=np.float64), 0.0, FOM_MAX)
    lo = np.full(m.shape, -20.0)
    hi = np.full(m.shape, np.log(1e5))
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        above = bessel_ratio(np.exp(mid)) > m
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    x = np.exp(0.5 * (lo + hi))
    return np.where(m <= 0.0, 0.0, x)


def fom_to_hl(fom: np.ndarray, phase_rad: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hendrickson-Lattman coefficients of a unimodal (acentric) phase distribution.

    Parameters
    ----------
    fom
        Figure of merit in ``[0, 1]`` (clipped to :data:`FOM_MAX`).
    phase_rad
        Best phase in radians.

    Returns
    -------
    HLA, HLB, HLC, HLD
        ``X cos(phi)``, ``X sin(phi)``, zeros, zeros, with ``I1(X)/I0(X) = fom``.
    """
    x = fom_to_x(fom)
    phi = np.asarray(phase_rad, dtype=np.float64)
    zero = np.zeros_like(x)
    return x * np.cos(phi), x * np.sin(phi), zero, zero.copy()


def hl_to_fom(hla: np.ndarray, hlb: np.ndarray, hlc: np.ndarray | None = None,
              hld: np.ndarray | None = None, n_points: int = 360
              ) -> tuple[np.ndarray, np.ndarray]:
    """Figure of merit and centroid phase of ``P(phi) ~ exp(A cos + B sin + C cos2 + D sin2)``.

    With ``C = D = 0`` this is exact (``m = I1(X)/I0(X)``, ``X = |(A, B)|``); otherwise the
    centroid ``<exp(i phi)>`` is integrated numerically on ``n_points`` phases.

    Returns
    -------
    fom, phase_rad
        ``|<exp(i phi)>|`` and its argument (radians).
    """
    a = np.asarray(hla, dtype=np.float64)
    b = np.asarray(hlb, dtype=np.float64)
    if (hlc is None or not np.any(hlc)) and (hld is None or not np.any(hld)):
        return bessel_ratio(np.hypot(a, b)), np.arctan2(b, a)
    c = np.zeros_like(a) if hlc is None else np.asarray(hlc, dtype=np.float64)
    d = np.zeros_like(a) if hld is None else np.asarray(hld, dtype=np.float64)
    phi = np.linspace(0.0, 2.0 * np.pi, n_points, endpoint=False)
    expo = (a[..., None] * np.cos(phi) + b[..., None] * np.sin(phi)
            + c[..., None] * np.cos(2 * phi) + d[..., None] * np.sin(2 * phi))
    expo -= expo.max(axis=-1, keepdims=True)
    p = np.exp(expo)
    centroid = (p * np.exp(1j * phi)).sum(-1) / p.sum(-1)
    return np.abs(centroid), np.angle(centroid)


def phase_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute phase difference in degrees, in ``[0, 180]``, per reflection.

    ``a`` and ``b`` are complex structure factors (their arguments are compared) or real
    phases in radians.
    """
    pa = np.angle(a) if np.iscomplexobj(a) else np.asarray(a, dtype=np.float64)
    pb = np.angle(b) if np.iscomplexobj(b) else np.asarray(b, dtype=np.float64)
    d = np.angle(np.exp(1j * (pa - pb)))
    return np.degrees(np.abs(d))


def centrosymmetry(rho: np.ndarray) -> float:
    """How centrosymmetric a periodic map is: ``max_t CC(rho(x), rho(t - x))`` over centres.

    1 for a map with a centre of symmetry anywhere on the grid (its phases are then 0 or 180
    degrees about that centre); well below 1 for a chiral molecule. A prediction that averages
    a structure and its enantiomorph (both have the same Patterson) comes out near 1, and
    phase retrieval started from it stagnates. The correlation over all centres is one
    convolution: ``sum_x rho(x) rho(t - x) = ifftn(fftn(rho)^2) (t)`` (``rho`` mean-removed).
    """
    r = np.asarray(rho, dtype=np.float64)
    r = r - r.mean()
    norm = float((r * r).sum())
    if norm == 0.0:
        return 1.0
    f = np.fft.fftn(r)
    return float(np.fft.ifftn(f * f).real.max() / norm)


# ---------------------------------------------------------------------------------------------
# amplitude residuals and figures of merit
# ---------------------------------------------------------------------------------------------
def ls_scale(obs: np.ndarray, calc: np.ndarray) -> float:
    """Least-squares scale ``k`` of ``calc`` onto ``obs`` (minimises ``sum (obs - k calc)^2``
    for real arrays); 0 when ``calc`` is all zero."""
    den = float((calc * calc).sum())
    return float((obs * calc).sum()) / den if den > 0 else 0.0


def amplitude_residual(f_obs: np.ndarray, f_calc: np.ndarray) -> float:
    """``R = sum | |Fo| - k |Fc| | / sum |Fo|`` with ``k`` the least-squares scale."""
    fo = np.abs(np.asarray(f_obs, dtype=np.complex128))
    fc = np.abs(np.asarray(f_calc, dtype=np.complex128))
    ok = np.isfinite(fo) & np.isfinite(fc)
    fo, fc = fo[ok], fc[ok]
    k = ls_scale(fo, fc)
    return float(np.abs(fo - k * fc).sum() / max(fo.sum(), 1e-30))


def sigmaa_fom(hkl: np.ndarray, f_obs: np.ndarray, f_calc: np.ndarray, cell: gemmi.UnitCell,
               min_per_bin: int = FOM_MIN_PER_BIN) -> np.ndarray:
    """SigmaA-like figure of merit per reflection, an estimate that needs no truth.

    In resolution bins of equal count (at least ``min_per_bin`` reflections) the normalised
    amplitudes ``Eo``, ``Ec`` (observed, and of the model) give
    ``sigmaA^2 = corr(Eo^2, Ec^2)`` (clipped to :data:`~pattersolve.settings.FOM_SIGMAA_RANGE`);
    then ``m = I1(X) / I0(X)`` with ``X = 2 sigmaA Eo Ec / (1 - sigmaA^2)`` (acentric).

    Reflections with a missing ``f_obs`` get the value computed with ``Eo = Ec``.
    """
    fo = np.abs(np.asarray(f_obs, dtype=np.float64))
    fc = np.abs(np.asarray(f_calc, dtype=np.complex128))
    d = d_spacings(cell, hkl)
    order = np.argsort(-d)
    n_bins = max(1, len(order) // max(1, min_per_bin))
    fom = np.zeros(len(fo))
    for chunk in np.array_split(order, n_bins):
        o, c = fo[chunk], fc[chunk]
        ok = np.isfinite(o)
        if ok.sum() < 3 or (c * c).sum() <= 0:
            fom[chunk] = 0.0
            continue
        eo = o / np.sqrt(np.mean(o[ok] ** 2))
        ec = c / np.sqrt(np.mean(c**2))
        cc = np.corrcoef(eo[ok] ** 2, ec[ok] ** 2)[0, 1]
        sa2 = float(np.clip(np.nan_to_num(cc), *FOM_SIGMAA_RANGE))
        eo = np.where(ok, eo, ec)
        x = 2.0 * np.sqrt(sa2) * eo * ec / (1.0 - sa2)
        fom[chunk] = bessel_ratio(x)
    return fom
