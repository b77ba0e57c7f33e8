"""Tests for pattersolve.phases: FOM <-> HL, phases from maps, phase errors."""

from __future__ import annotations

import numpy as np
import pytest

from pattersolve import fourier
from pattersolve import simulate as sim
from pattersolve.phases import (
    bessel_ratio,
    fom_to_hl,
    fom_to_x,
    hl_to_fom,
    ls_scale,
    phase_error_deg,
    phases_from_density,
    unit_phase,
)


def _ratio_by_quadrature(x: float) -> float:
    phi = np.linspace(0.0, 2.0 * np.pi, 20000, endpoint=False)
    w = np.exp(x * (np.cos(phi) - 1.0))
    return float((w * np.cos(phi)).sum() / w.sum())


@pytest.mark.parametrize("x", [0.0, 0.05, 0.7, 3.0, 12.0, 59.99, 60.01, 80.0, 400.0])
def test_bessel_ratio_matches_quadrature(x):
    assert bessel_ratio(np.array([x]))[0] == pytest.approx(_ratio_by_quadrature(x), abs=1e-9)


def test_bessel_ratio_against_numpy_i0_derivative():
    # I1 = dI0/dx: central difference of numpy's i0
    x = np.array([0.3, 1.0, 4.0, 9.0])
    h = 1e-5
    i1 = (np.i0(x + h) - np.i0(x - h)) / (2 * h)
    assert np.allclose(bessel_ratio(x), i1 / np.i0(x), rtol=1e-7)


def test_fom_hl_round_trip():
    rng = np.random.default_rng(0)
    fom = np.concatenate([[0.0, 1e-4, 0.5, 0.99, 0.9999], rng.uniform(0, 0.999, 200)])
    phi = rng.uniform(-np.pi, np.pi, len(fom))
    hla, hlb, hlc, hld = fom_to_hl(fom, phi)
    assert np.all(hlc == 0) and np.all(hld == 0)
    m, p = hl_to_fom(hla, hlb, hlc, hld)
    assert np.allclose(m, fom, atol=1e-9)
    nonzero = fom > 1e-3
    assert np.all(phase_error_deg(p[nonzero], phi[nonzero]) < 1e-6)
    # X grows monotonically with m and matches known values: m(1) = 0.4464
    assert fom_to_x(np.array([0.44638997]))[0] == pytest.approx(1.0, rel=1e-6)
    assert np.all(np.diff(fom_to_x(np.linspace(0.01, 0.99, 50))) > 0)


def test_hl_to_fom_numeric_path_with_c_d_terms():
    # bimodal distribution exp(C cos 2phi) with C > 0: peaks at 0 and pi, centroid ~0
    m, _ = hl_to_fom(np.array([0.0]), np.array([0.0]), np.array([3.0]), np.array([0.0]))
    assert m[0] == pytest.approx(0.0, abs=1e-12)
    # numeric path agrees with the closed form when C, D are tiny
    m1, p1 = hl_to_fom(np.array([1.2]), np.array([-0.7]), np.array([1e-12]), np.array([0.0]))
    m0, p0 = hl_to_fom(np.array([1.2]), np.array([-0.7]))
    assert m1[0] == pytest.approx(m0[0], abs=1e-9) and p1[0] == pytest.approx(p0[0], abs=1e-9)


def test_phase_error_deg_wraps():
    a = np.exp(1j * np.radians([179.0, -179.0, 10.0]))
    b = np.exp(1j * np.radians([-179.0, 179.0, 350.0]))
    assert np.allclose(phase_error_deg(a, b), [2.0, 2.0, 20.0])
    assert np.allclose(phase_error_deg(np.radians([90.0]), np.radians([-90.0])), [180.0])


def test_phases_from_density_recovers_structure_factors():
    cell = sim.orthorhombic_cell([9.0, 10.0, 11.0])
    frac = np.array([[0.1, 0.2, 0.3], [0.4, 0.25, 0.6], [0.7, 0.8, 0.15]])
    hkl = fourier.miller_sphere(cell, 2.0)
    f = sim.structure_factors(frac, ["C", "N", "O"], 20.0, cell, hkl)
    shape = fourier.grid_shape_for_spacing(cell, 0.5)
    rho = fourier.density_map(hkl, f, shape, cell.volume, 22.0)
    back = phases_from_density(3.0 * rho - 1.0, hkl, cell.volume)  # affine scale
    assert np.allclose(back, 3.0 * f, atol=1e-9 * np.abs(f).max())


def test_unit_phase_and_least_squares_scale():
    f = np.array([3.0 + 4.0j, 0.0, -2.0j])
    assert np.allclose(unit_phase(f), [0.6 + 0.8j, 0.0, -1.0j])
    calc = np.array([1.0, 2.0, 3.0])
    assert ls_scale(2.5 * calc, calc) == 2.5
    assert ls_scale(calc, np.zeros(3)) == 0.0
    # the scale minimises the squared difference
    obs = np.array([1.2, 1.9, 3.3])
    k = ls_scale(obs, calc)
    def sq(s: float) -> float:
        return float(((obs - s * calc) ** 2).sum())

    assert sq(k) < sq(1.01 * k) and sq(k) < sq(0.99 * k)
