"""`pattersolve-train paired`: is a candidate better than a baseline on the same test maps?"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pattersolve_train.paired import paired_comparison

from pattersolve.errors import ExitCode, PattersolveError


def _rows(n: int = 200, seed: int = 0, shift: float = 0.0, noise: float = 0.0) -> list[dict]:
    """Examples whose difficulty varies a lot from map to map (the same maps for every seed)."""
    difficulty = np.random.default_rng(99).uniform(0.2, 0.9, n)
    jitter = np.random.default_rng(seed).normal(0.0, noise, n)
    return [{"source": f"1abc/A/{k}-{k + 1}", "true_centrosymmetry": 0.4 + 0.001 * (k % 50),
             "cc": float(d + shift + j), "twin_cc": float(d + shift + j + 0.02),
             "map_cc": float(d + shift + j),
             "phase_error_weighted": float(90 * (1 - d) - 40 * shift),
             "phase_error_unweighted": float(95 * (1 - d) - 40 * shift)}
            for k, (d, j) in enumerate(zip(difficulty, jitter, strict=True))]


def test_a_small_gain_on_every_map_is_better_beyond_noise() -> None:
    # +0.01 on every map: far below the maps' spread (the unpaired intervals would overlap)
    m = {x.key: x for x in paired_comparison(_rows(), _rows(shift=0.01))}
    assert m["cc"].difference == pytest.approx(0.01)
    assert m["cc"].interval == pytest.approx((0.01, 0.01))
    assert m["cc"].verdict == "better"
    assert m["phase_error_weighted"].difference == pytest.approx(-0.4)
    assert m["phase_error_weighted"].verdict == "better"  # lower is better for errors
    worse = {x.key: x for x in paired_comparison(_rows(shift=0.01), _rows())}
    assert worse["cc"].verdict == "worse" and worse["phase_error_weighted"].verdict == "worse"


def test_map_to_map_jitter_without_a_gain_is_within_noise() -> None:
    m = {x.key: x for x in paired_comparison(_rows(), _rows(seed=1, noise=0.05))}
    lo, hi = m["cc"].interval
    assert lo < 0 < hi and m["cc"].verdict == "within noise"
    same = paired_comparison(_rows(), _rows())
    assert all(x.difference == 0 and x.verdict == "within noise" for x in same)


def test_evaluations_of_other_maps_are_refused() -> None:
    other = _rows()
    other[3]["source"] = "9xyz/A/1-2"
    with pytest.raises(PattersolveError) as e:
        paired_comparison(_rows(), other)
    assert e.value.exit_code == ExitCode.USAGE and "different test fragments" in str(e.value)
    with pytest.raises(PattersolveError):
        paired_comparison(_rows(), _rows()[:-1])
    moved = _rows()
    moved[0]["true_centrosymmetry"] += 0.01  # same fragment, another placement
    with pytest.raises(PattersolveError) as e:
        paired_comparison(_rows(), moved)
    assert "true maps differ" in str(e.value)


def test_paired_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pattersolve_train.cli import main

    for name, rows in (("a", _rows()), ("b", _rows(shift=0.01))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "examples.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "p.json"
    assert main(["paired", str(tmp_path / "a"), str(tmp_path / "b"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "200 test maps (paired bootstrap, 95 %)" in text
    assert "median CC: " in text and ": better" in text
    data = json.loads(out.read_text())
    assert data["n"] == 200 and data["metrics"][0]["verdict"] == "better"
    assert main(["paired", str(tmp_path / "a"), str(tmp_path / "nowhere")]) == int(
        ExitCode.INPUT_MISSING)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "examples.jsonl not found" in err


@pytest.mark.usefixtures("one_torch_thread")
def test_runs_of_other_seeds_are_evaluated_on_the_same_test_maps(
        tmp_path: Path, train_shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import tiny_config
    from pattersolve_train import train as T
    from pattersolve_train.cli import main

    for seed in (0, 1):  # random orientations: the placements draw from a seed
        cfg = tiny_config(train_shards, max_steps=4, eval_every=4, log_every=4, seed=seed)
        cfg = replace(cfg, data=replace(cfg.data, rotation=True))
        T.fit(cfg, tmp_path / f"run{seed}", progress=False)
        assert main(["evaluate", "--run", str(tmp_path / f"run{seed}"), "--n", "4",
                     "--no-plots"]) == 0
    rows = [[json.loads(line) for line in
             (tmp_path / f"run{seed}" / "evaluation" / "examples.jsonl").read_text().splitlines()]
            for seed in (0, 1)]
    # the networks differ (another initialisation and example order), the true maps do not
    assert [r["true_centrosymmetry"] for r in rows[0]] == [r["true_centrosymmetry"]
                                                           for r in rows[1]]
    assert [r["cc"] for r in rows[0]] != [r["cc"] for r in rows[1]]
    capsys.readouterr()
    assert main(["paired", str(tmp_path / "run0" / "evaluation"),
                 str(tmp_path / "run1" / "evaluation")]) == 0
    assert "4 test maps (paired bootstrap" in capsys.readouterr().out
