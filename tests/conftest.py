"""Shared fixtures: simulated data sets (no ../shared needed) and the shared-data locator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: this test needs the project's shared data (../shared)")
    return p


@pytest.fixture(scope="session")
def alaala():
    """Exact data of the 1AKZ Ala-Ala fragment in a 10 A cube at 1.5 A."""
    from pattersolve import synthetic

    els, xyz = synthetic.ala_ala()
    return synthetic.simulate_fragment(els, xyz, 1.5)


@pytest.fixture()
def alaala_mtz(tmp_path, alaala):
    """(data.mtz with FP/SIGFP/FreeR_flag, truth.mtz with FC/PHIC)."""
    from pattersolve import synthetic

    rng = np.random.default_rng(1)
    data = tmp_path / "data.mtz"
    truth = tmp_path / "truth.mtz"
    cell = alaala.placement.cell
    synthetic.write_data_mtz(data, cell, alaala.hkl, synthetic.measured_columns(alaala.f, rng))
    synthetic.write_data_mtz(truth, cell, alaala.hkl, synthetic.phase_columns(alaala.f))
    return data, truth
