"""bench/bench_real.py: the real-crystal benchmark runs, tabulates and scores sanely."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, shared_path


def _bench():
    spec = importlib.util.spec_from_file_location("bench_real", REPO / "bench" / "bench_real.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_real"] = module
    spec.loader.exec_module(module)
    return module


def test_res_reader_matches_the_data():
    """A SHELX .res model (free variables, riding H, special positions in R-3c) read by the
    bench gives amplitudes that fit the measured ones (R1 < 0.06; a wrong occupancy or U
    convention gave 0.2)."""
    shared_path("data", "real_small", "shx_2240189", "model.res")
    from pattersolve.reflections import read_reflections

    bench = _bench()
    ds = next(d for d in bench.discover_sets() if d.name == "shx_2240189")
    model = bench.load_model(ds)
    assert model.spacegroup.xhm() == "R -3 c:H"
    refl = read_reflections(ds.data, d_min=1.0, **bench.symmetry_options(ds, model, True))
    fo, fc = refl.amplitude, np.abs(model.f(refl.hkl))
    r1 = np.abs(fo - fo.sum() / fc.sum() * fc).sum() / fo.sum()
    assert r1 < 0.06


def test_fv_codes():
    """SHELX 10 m + p codes: fixed, tied to a free variable, and its complement."""
    bench = _bench()
    fvar = [1.3, 0.75]
    assert bench._fv(11.0, fvar) == pytest.approx(1.0)
    assert bench._fv(10.16667, fvar) == pytest.approx(0.16667)
    assert bench._fv(21.0, fvar) == pytest.approx(0.75)
    assert bench._fv(-20.5, fvar) == pytest.approx(0.125)
    assert bench._fv(0.25, fvar) == 0.25


@pytest.mark.slow
def test_quick_run_produces_tables(tmp_path: Path):
    """--quick on one small set: a per-cut table with both programs' rows, errors in [0, 90]."""
    shared_path("data", "real_small", "tonto_glyala_100K", "data.hkl")
    bench = _bench()
    out = tmp_path / "real.json"
    text = bench.main(["--quick", "--sets", "tonto_glyala_100K", "--json", str(out),
                       "--txt", str(tmp_path / "real.txt")])
    assert "### Cut: the data's own resolution" in text
    assert "| pattersolve: confident |" in text
    assert "| tonto_glyala_100K | 0.80 |" in text
    rows = json.loads(out.read_text())["rows"]
    ps = [r for r in rows if r["program"] == "pattersolve"]
    assert len(ps) == 1 and ps[0]["rc"] == 0 and ps[0]["cpu_s"] > 0
    for r in rows:
        if r["rc"] == 0:
            assert 0.0 <= r["error_w"] <= 90.0
    assert 60.0 < ps[0]["floor"] <= 90.0
    assert (tmp_path / "real.txt").read_text() == text
