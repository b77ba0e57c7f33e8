"""Tests for pattersolve.refine: projection phase refinement against amplitudes."""

from __future__ import annotations

import numpy as np
import pytest

from pattersolve import fourier, synthetic
from pattersolve import simulate as sim
from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.phasematch import align_phases, match_phases
from pattersolve.phases import amplitude_residual, phase_error_deg, sigmaa_fom
from pattersolve.refine import refine_phases

# the Ala-Ala dipeptide of PDB 1AKZ 113-114 (pattersolve.synthetic), heavy atoms
ELEMENTS, ALA_ALA = synthetic.ala_ala()


def _fragment(cell_length=10.0, d_min=1.5, seed=0, spacing=0.6):
    rng = np.random.default_rng(seed)
    sd = synthetic.simulate_fragment(ELEMENTS, ALA_ALA, d_min, cell_lengths=[cell_length] * 3,
                                     rotation=sim.random_rotation(rng))
    cell = sd.placement.cell
    return cell, sd.hkl, sd.f, fourier.grid_shape_for_spacing(cell, spacing)


def _degraded_prediction(cell, hkl, f, shape, seed=0):
    """True density blurred (B = 40), phases 60 degrees off on average, map noise, [-1, 1]."""
    return synthetic.degraded_prediction(cell, hkl, f, shape, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def ala10():
    return _fragment()


def test_residual_is_scale_free():
    fo = np.array([1.0, 2.0, 3.0])
    assert amplitude_residual(fo, 7.0 * fo) == pytest.approx(0.0, abs=1e-12)
    assert amplitude_residual(fo, np.array([3.0, 2.0, 1.0])) > 0.2


def test_classical_random_start_solves_ala_ala(ala10):
    cell, hkl, f, shape = ala10
    res = refine_phases(hkl, np.abs(f), cell, shape, n_starts=2, rng=1)
    m = match_phases(hkl, f, res.f, cell)
    assert m.weighted_error < 10.0 and m.map_cc > 0.98
    assert res.mode == "classical" and len(res.starts) == 2
    assert res.residual_final < 0.08 < res.residual_start
    assert res.residual_final == pytest.approx(min(s["residual"] for s in res.starts))
    # each start's model F is kept; the chosen one gives the output's phases
    assert len(res.f_starts) == 2
    for s, fs in zip(res.starts, res.f_starts, strict=True):
        assert s["residual"] == pytest.approx(amplitude_residual(np.abs(f), fs))
    big = np.abs(f) > 0.1 * np.abs(f).max()
    assert np.all(phase_error_deg(np.angle(res.f_starts[res.chosen][big]),
                                  np.angle(res.f[big])) < 1e-6)
    assert np.allclose(np.abs(res.f), np.abs(f))  # measured amplitudes, refined phases
    assert res.density.shape == shape and res.density.dtype == np.float64
    # F000 estimated from the Patterson, then made self-consistent: near the electron count
    assert res.extra["f000_start"] == pytest.approx(sim.f000(ELEMENTS), rel=0.15)
    assert res.f000 == pytest.approx(sim.f000(ELEMENTS), rel=0.03)
    assert np.all((res.fom >= 0) & (res.fom <= 1)) and res.fom.mean() > 0.9


def test_refinement_from_true_phases_stays(ala10):
    cell, hkl, f, shape = ala10
    rho = fourier.density_map(hkl, f, shape, cell.volume, sim.f000(ELEMENTS))
    start = np.maximum(rho, 0.0) ** 1.5  # true phases, distorted amplitudes
    res = refine_phases(hkl, np.abs(f), cell, shape, start_density=start, n_starts=1, rng=0)
    assert res.chosen == 0  # the refined model beats its own start
    m = match_phases(hkl, f, res.f, cell)
    assert m.weighted_error < 5.0
    # 600 cycles of shrink-wrap may slide the molecule by a third of an A (the origin is free)
    assert np.linalg.norm(((m.shift + 0.5) % 1.0) - 0.5) < 0.04 and not m.inverted
    assert res.residual_final < res.residual_start


def test_unrefined_start_is_a_candidate(ala10):
    cell, hkl, f, shape = ala10
    rho = fourier.density_map(hkl, f, shape, cell.volume, sim.f000(ELEMENTS))
    # the exact map has residual 0: no refined start can beat it, so it is returned as is
    res = refine_phases(hkl, np.abs(f), cell, shape, start_density=rho, n_starts=2, rng=0)
    assert res.chosen == -1 and res.residual_final == pytest.approx(0.0, abs=1e-9)
    assert np.allclose(res.f, f, atol=1e-8 * np.abs(f).max())
    assert all(s["residual"] > 0.0 for s in res.starts)


def test_refinement_improves_degraded_prediction(ala10):
    cell, hkl, f, shape = ala10
    pred, f_bad = _degraded_prediction(cell, hkl, f, shape)
    before = match_phases(hkl, f, f_bad, cell).weighted_error
    assert before > 45.0
    res = refine_phases(hkl, np.abs(f), cell, shape, start_density=pred, n_starts=2, rng=0)
    after = match_phases(hkl, f, res.f, cell).weighted_error
    assert res.mode == "hybrid"
    assert after < 10.0 and after < before - 30.0
    assert res.residual_final < res.residual_start


def _packed_tripeptide(seed: int, max_phase_error: float):
    """Asp-Ala-Val in a packed P1 cell (edges = extent + 2.5 A) at 2.5 A (the hard regime), and
    a degraded prediction of it."""
    from pattersolve.patterson import cell_grid_shape
    from pattersolve.reflections import Reflections

    elements, xyz = synthetic.asp_ala_val()
    sd = synthetic.simulate_fragment(elements, xyz, 2.5, padding=2.5, b_iso=15.0,
                                     rotation=sim.random_rotation(np.random.default_rng(seed)))
    cell, hkl, f = sd.placement.cell, sd.hkl, sd.f
    refl = Reflections.from_arrays(cell, hkl, np.abs(f),
                                   0.02 * np.abs(f) + 1e-3 * np.abs(f).max())
    shape = cell_grid_shape(refl.cell, refl.spacegroup, refl.hkl, refl.d_min)
    pred, _ = synthetic.degraded_prediction(cell, hkl, f, shape, np.random.default_rng(seed),
                                            max_phase_error=max_phase_error, noise=0.3)
    return refl, f, shape, pred


def test_guided_start_keeps_a_good_prediction_in_packed_cells(monkeypatch):
    """Hard regime (packed cell, 2.5 A), a prediction ~30 deg off: RAAR from it leaves its basin
    (~50 deg); the guided start stays near it, and its pull toward the prediction matters (ER
    without the pull drifts further in the worst cases). Six orientations, one start each."""
    from pattersolve import refine

    errors: dict[str, list[float]] = {"guided": [], "no pull": [], "raar": []}
    for seed in range(6):
        refl, f, shape, pred = _packed_tripeptide(seed, max_phase_error=60.0)
        for name, errs in errors.items():
            monkeypatch.setattr(refine, "HYBRID_GUIDE_WEIGHT", 0.0 if name == "no pull" else 0.5)
            res = refine_phases(refl.hkl, refl.amplitude, refl.cell, shape, sigma=refl.sigma,
                                start_density=pred, n_starts=1, rng=0, guided=name != "raar")
            assert res.starts[0]["kind"] == ("raar" if name == "raar" else "guided")
            errs.append(match_phases(refl.hkl, f, res.f, refl.cell).weighted_error)
    med = {k: float(np.median(v)) for k, v in errors.items()}
    assert med["guided"] < 25.0 and med["raar"] > med["guided"] + 15.0
    assert med["guided"] < med["no pull"] and max(errors["guided"]) < max(errors["no pull"])


def test_guided_start_by_default_only_in_packed_cells(ala10):
    """``guided=None`` uses the packing estimated from F000: the hard regime's packed cell gets
    the guided start, a dipeptide in a 10 A cube does not. The estimate follows the true
    fraction of the cell within 1.6 A of an atom."""
    cell, hkl, f, shape = ala10
    pred, _ = _degraded_prediction(cell, hkl, f, shape)
    open_cell = refine_phases(hkl, np.abs(f), cell, shape, start_density=pred, n_starts=2, rng=0)
    assert not open_cell.extra["guided"] and open_cell.extra["packing"] < 0.12
    assert [s["kind"] for s in open_cell.starts] == ["raar", "raar"]

    refl, f3, shape3, pred3 = _packed_tripeptide(0, max_phase_error=60.0)
    packed = refine_phases(refl.hkl, refl.amplitude, refl.cell, shape3, sigma=refl.sigma,
                           start_density=pred3, n_starts=2, rng=0)
    # the guided start, then classical ones (random phases) in the same pool
    assert packed.extra["guided"] and [s["kind"] for s in packed.starts] == ["guided", "random",
                                                                              "random"]
    elements, xyz = synthetic.asp_ala_val()
    placed = synthetic.simulate_fragment(
        elements, xyz, 2.5, padding=2.5, b_iso=15.0,
        rotation=sim.random_rotation(np.random.default_rng(0))).placement
    inside = sim.envelope_mask(placed.cell, placed.frac, (48, 48, 48), 1.6)
    assert packed.extra["packing"] == pytest.approx(inside.mean(), rel=0.15)
    assert packed.extra["packing"] > 0.15


def test_fixed_support_of_the_true_envelope_solves_packed_cells():
    """A fixed support of 1.6 A spheres on the true atoms (the "true-envelope bound" of
    PHASING_NOTES) solves the hard regime's packed cells from random phases, where shrink-wrap
    from the Patterson and a 3 A envelope do not: the support's precision is what counts."""
    elements, xyz = synthetic.asp_ala_val()
    errors: dict[str, list[float]] = {"1.6": [], "3.0": [], "shrink-wrap": []}
    for seed in range(4):
        refl, f, shape, _ = _packed_tripeptide(seed, max_phase_error=60.0)
        frac = synthetic.simulate_fragment(
            elements, xyz, 2.5, padding=2.5, b_iso=15.0,
            rotation=sim.random_rotation(np.random.default_rng(seed))).placement.frac
        for name in errors:
            support = None if name == "shrink-wrap" else \
                sim.envelope_mask(refl.cell, frac, shape, float(name))
            res = refine_phases(refl.hkl, refl.amplitude, refl.cell, shape, sigma=refl.sigma,
                                n_starts=2, rng=0, support=support)
            assert res.extra["fixed_support"] == (support is not None)
            errors[name].append(match_phases(refl.hkl, f, res.f, refl.cell).weighted_error)
    assert max(errors["1.6"]) < 12.0
    assert np.median(errors["3.0"]) > 25.0 and np.median(errors["shrink-wrap"]) > 20.0


def test_fixed_support_is_checked(ala10):
    cell, hkl, f, shape = ala10
    with pytest.raises(ValueError, match="support"):
        refine_phases(hkl, np.abs(f), cell, shape, support=np.ones((4, 4, 4), bool))
    with pytest.raises(ValueError, match="support"):
        refine_phases(hkl, np.abs(f), cell, shape, support=np.zeros(shape, bool))
    pred, _ = _degraded_prediction(cell, hkl, f, shape)
    with pytest.raises(ValueError, match="guided"):
        refine_phases(hkl, np.abs(f), cell, shape, start_density=pred, guided=True,
                      support=np.ones(shape, bool))
    # fix_support=False: the given support is only the first one (shrink-wrap moves it)
    first = np.zeros(shape, bool)
    first[: shape[0] // 2] = True
    res = refine_phases(hkl, np.abs(f), cell, shape, n_starts=1, rng=0, support=first,
                        fix_support=False)
    assert not res.extra["fixed_support"] and res.extra["support_fraction"] == 0.5
    fixed = refine_phases(hkl, np.abs(f), cell, shape, n_starts=1, rng=0, support=first)
    assert fixed.extra["fixed_support"]
    outside = np.abs(fixed.density - fixed.density.mean())[~first].mean()
    assert outside < 0.5 * np.abs(fixed.density - fixed.density.mean())[first].mean()


def test_numpy_and_torch_agree(ala10):
    pytest.importorskip("torch")
    cell, hkl, f, shape = ala10
    a = refine_phases(hkl, np.abs(f), cell, shape, n_starts=2, rng=5, device="numpy")
    b = refine_phases(hkl, np.abs(f), cell, shape, n_starts=2, rng=5, device="torch")
    assert b.extra["device"] == "torch"
    ea = match_phases(hkl, f, a.f, cell).weighted_error
    eb = match_phases(hkl, f, b.f, cell).weighted_error
    assert ea < 10.0 and eb < 10.0
    assert a.residual_final == pytest.approx(b.residual_final, abs=0.01)
    assert a.extra["f000_start"] == b.extra["f000_start"]  # same Patterson estimate
    assert a.f000 == pytest.approx(b.f000, rel=0.02)
    assert [s["residual_start"] for s in a.starts] == pytest.approx(
        [s["residual_start"] for s in b.starts])  # same starting phases
    pred, _ = _degraded_prediction(cell, hkl, f, shape, seed=1)
    h = refine_phases(hkl, np.abs(f), cell, shape, start_density=pred, n_starts=2, rng=0,
                      device="torch", guided=True)
    assert h.mode == "hybrid" and match_phases(hkl, f, h.f, cell).weighted_error < 10.0
    hn = refine_phases(hkl, np.abs(f), cell, shape, start_density=pred, n_starts=2, rng=0,
                       guided=True)
    assert [s["kind"] for s in h.starts] == [s["kind"] for s in hn.starts] == ["guided",
                                                                           "random", "random"]
    assert h.starts[0]["residual"] == pytest.approx(hn.starts[0]["residual"], abs=1e-6)


def test_cuda_without_gpu_is_a_backend_error(ala10):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cell, hkl, f, shape = ala10
    with pytest.raises(PattersolveError, match="CUDA") as info:
        refine_phases(hkl, np.abs(f), cell, shape, device="cuda")
    assert info.value.exit_code == ExitCode.BACKEND


def test_sigma_and_missing_reflections_12A():
    cell, hkl, f, shape = _fragment(cell_length=12.0, seed=3)
    rng = np.random.default_rng(2)
    amp = np.abs(f) * (1.0 + 0.05 * rng.normal(size=len(f)))
    sigma = 0.05 * np.abs(f)
    amp[rng.uniform(size=len(f)) < 0.05] = np.nan  # 5 % unmeasured, left free
    res = refine_phases(hkl, amp, cell, shape, sigma=sigma, n_starts=2, rng=0)
    m = match_phases(hkl, f, res.f, cell)
    assert m.weighted_error < 8.0
    # missing reflections inflate the Patterson estimate of F000; the support updates
    # bring it back to the electron count
    assert res.extra["f000_start"] > 1.3 * sim.f000(ELEMENTS)
    assert res.f000 == pytest.approx(sim.f000(ELEMENTS), rel=0.05)
    missing = ~np.isfinite(amp)
    # unmeasured reflections get the model's own amplitude and a phase near the truth
    assert np.all(np.isfinite(res.f)) and np.all(np.abs(res.f[missing]) > 0)
    aligned = align_phases(hkl[missing], res.f[missing], m)
    err = phase_error_deg(aligned, f[missing])
    w = np.abs(f[missing])
    assert (w * err).sum() / w.sum() < 30.0


def test_sigmaa_fom_tracks_model_quality(ala10):
    cell, hkl, f, _ = ala10
    _, _, f_other, _ = _fragment(seed=7)
    good = sigmaa_fom(hkl, np.abs(f), f * 1.3, cell)
    bad = sigmaa_fom(hkl, np.abs(f), f_other, cell)
    assert good.mean() > 0.95 and bad.mean() < good.mean() - 0.2


def test_bad_inputs_raise_user_errors(ala10):
    cell, hkl, f, shape = ala10
    with pytest.raises(PattersolveError, match="device"):
        refine_phases(hkl, np.abs(f), cell, shape, device="tpu")
    with pytest.raises(PattersolveError, match="shape"):
        refine_phases(hkl, np.abs(f), cell, shape, start_density=np.zeros((4, 4, 4)))
    with pytest.raises(PattersolveError, match="grid size"):
        refine_phases(hkl, np.abs(f), cell, (8, 8, 8))
