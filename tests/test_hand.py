"""The hand (enantiomorph) of a solution: the network's where it learned one, arbitrary
otherwise, and a refined solution inverted back to the prediction's hand."""

from __future__ import annotations

import dataclasses

import gemmi
import numpy as np
import pytest

from pattersolve.phasematch import match_phases
from pattersolve.reflections import Reflections
from pattersolve.runtime import ModelInfo, list_models
from pattersolve.solve import Prediction, _network_hand


def _shifted(hkl: np.ndarray, f: np.ndarray, t: tuple[float, float, float]) -> np.ndarray:
    return f * np.exp(2j * np.pi * hkl @ np.asarray(t))


@pytest.fixture()
def case(alaala):
    refl = Reflections.from_arrays(alaala.placement.cell, alaala.hkl, np.abs(alaala.f))
    pred = Prediction(density=np.zeros((2, 2, 2)), shape=(2, 2, 2), f=alaala.f.copy(),
                      covered=np.ones(len(alaala.hkl), bool), seconds=0.0, model="m",
                      backend="test")
    return refl, pred, alaala.f


def test_solution_in_the_other_hand_is_inverted_to_the_network_hand(case):
    refl, pred, f_true = case
    other = _shifted(refl.hkl, np.conj(f_true), (0.13, 0.5, 0.71))  # other hand, moved
    assert match_phases(refl.hkl, f_true, other, refl.cell).inverted
    f, hand = _network_hand(refl, other, pred, learned=True, centrosym=0.5, refined=True)
    assert hand["basis"] == "network" and hand["inverted_to_network_hand"] is True
    m = match_phases(refl.hkl, f_true, f, refl.cell)
    assert not m.inverted and m.weighted_error < 1e-6
    np.testing.assert_allclose(np.abs(f), np.abs(other))  # the fit to the data is untouched
    # a solution already in the prediction's hand is left alone
    same = _shifted(refl.hkl, f_true, (0.3, 0.1, 0.0))
    f2, hand2 = _network_hand(refl, same, pred, learned=True, centrosym=0.5, refined=True)
    assert hand2["inverted_to_network_hand"] is False and np.array_equal(f2, same)


def test_hand_stays_arbitrary_when_the_network_cannot_tell(case):
    refl, pred, f_true = case
    other = np.conj(f_true)
    f, hand = _network_hand(refl, other, pred, learned=False, centrosym=0.5, refined=True)
    assert hand["basis"] == "arbitrary" and "twin" in hand["note"]
    assert np.array_equal(f, other)
    rng = np.random.default_rng(0)
    unrelated = np.abs(f_true) * np.exp(2j * np.pi * rng.random(len(f_true)))
    f, hand = _network_hand(refl, unrelated, pred, learned=True, centrosym=0.5,
                            refined=True)
    assert hand["basis"] == "arbitrary" and hand["phase_difference_to_prediction"] > 60
    assert np.array_equal(f, unrelated)
    # a prediction that hedges between the hands gives none, however close the solution
    f, hand = _network_hand(refl, other, pred, learned=True, centrosym=0.93, refined=True)
    assert hand["basis"] == "arbitrary" and "hedges" in hand["note"]
    assert np.array_equal(f, other)
    # the network alone: its hand, unverified
    f, hand = _network_hand(refl, f_true, pred, learned=True, centrosym=0.5, refined=False)
    assert hand["basis"] == "prediction" and "unverified" in hand["note"]
    # ... unless the prediction does not fit the amplitudes (the network near the floor, as on
    # noisy or low-resolution-less data): then its hand means nothing
    f, hand = _network_hand(refl, f_true, pred, learned=True, centrosym=0.5, refined=False,
                            residual=0.35)
    assert hand["basis"] == "prediction" and hand["prediction_amplitude_residual"] == 0.35
    f, hand = _network_hand(refl, f_true, pred, learned=True, centrosym=0.5, refined=False,
                            residual=0.72)
    assert hand["basis"] == "arbitrary" and "R 0.72 > 0.6" in hand["note"]


def test_centrosymmetric_space_group_has_no_hand(case):
    refl, pred, f_true = case
    refl = dataclasses.replace(refl, spacegroup=gemmi.SpaceGroup("P -1"))
    f, hand = _network_hand(refl, np.conj(f_true), pred, learned=True, centrosym=0.5,
                            refined=True)
    assert hand["basis"] == "centrosymmetric" and np.array_equal(f, np.conj(f_true))


def test_shipped_models_say_whether_they_learned_the_hand(tmp_path):
    models = {m.name: m for m in list_models()}
    assert models["alaala-10A"].learned_hand and models["all-12A"].learned_hand
    assert not models["hard-tri"].learned_hand  # twin-invariant loss: blind to the hand
    assert not ModelInfo(path=tmp_path, card={"metadata": {}}).learned_hand  # not recorded


def test_network_gives_l_alanine_whatever_the_data_hand(alaala):
    """Both enantiomorphs have the same amplitudes and the same Patterson: the hand of the
    answer is alaala-10A's learned chirality. L-Ala-Ala (the PDB's) comes out as itself;
    its mirror image, D-Ala-Ala, comes out inverted, i.e. as L too (what the hand note warns)."""
    from pattersolve import synthetic
    from pattersolve.patterson import cell_grid_shape
    from pattersolve.runtime import Predictor
    from pattersolve.solve import solve

    predictor = Predictor({m.name: m for m in list_models()}["alaala-10A"], backend="onnx",
                          device="cpu", threads=1)
    els, xyz = synthetic.ala_ala()
    for sign, inverted in ((1, False), (-1, True)):
        sim = synthetic.simulate_fragment(els, sign * xyz, 1.5)
        refl = Reflections.from_arrays(sim.placement.cell, sim.hkl, np.abs(sim.f))
        shape = cell_grid_shape(refl.cell, refl.spacegroup, refl.hkl, refl.d_min)
        sol = solve(refl, shape, "hybrid", predictor=predictor, seed=0)
        m = match_phases(refl.hkl, sim.f, sol.f, refl.cell)
        assert m.weighted_error < 10 and m.inverted is inverted, (sign, m.to_dict())
        assert sol.stages["hand"]["basis"] == "network"
