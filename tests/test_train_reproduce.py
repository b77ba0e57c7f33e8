"""`evaluate --expect` and `compare --require-identical`: the reproduction check as an exit code;
and the sampling noise of a card's medians (bootstrap intervals)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from pattersolve_train import train as T
from pattersolve_train.evaluate import median_intervals
from pattersolve_train.reproduce import (
    CC_TOLERANCE,
    DEGREE_TOLERANCE,
    check_reproduction,
)

from pattersolve.errors import ExitCode, PattersolveError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _evaluation(**changes: object) -> dict:
    ev = {"n": 200, "training_data": "37e5c259" + "0" * 56, "average_rotations": False,
          "median_cc": 0.570, "median_twin_cc": 0.655, "median_map_cc": 0.685,
          "median_centrosymmetry": 0.778, "median_phase_error_weighted": 53.35,
          "median_phase_error_unweighted": 66.59, "fraction_of_examples_under_60": 0.79,
          "fraction_true_hand": 0.58}
    ev.update(changes)
    return ev


def test_differences_within_the_stated_tolerance_reproduce() -> None:
    # the 2026-12-02 re-run of hard-tri stage 3 on another CPU (BENCHMARKS.md)
    rerun = _evaluation(median_cc=0.5720, median_twin_cc=0.6537, median_map_cc=0.6856,
                        median_phase_error_weighted=53.48, fraction_of_examples_under_60=0.775)
    check = check_reproduction(rerun, _evaluation(), "hard-tri")
    assert check.reproduced
    row = {m.name: m for m in check.metrics}
    assert row["median_cc"].difference == pytest.approx(0.002)
    assert row["median_cc"].tolerance == CC_TOLERANCE
    assert row["median_phase_error_weighted"].tolerance == DEGREE_TOLERANCE
    # fractions move in steps of 1/n: reported, not checked
    assert row["fraction_of_examples_under_60"].within is None
    text = "\n".join(check.lines())
    assert "reproduced: 6 metrics within the stated tolerance" in text
    assert "(reported, not checked)" in text


@pytest.mark.parametrize(("key", "delta"), [("median_cc", 0.011), ("median_twin_cc", -0.02),
                                            ("median_phase_error_weighted", 1.2),
                                            ("median_phase_error_unweighted", -1.5)])
def test_a_metric_outside_the_tolerance_is_named(key: str, delta: float) -> None:
    ref = _evaluation()
    check = check_reproduction(_evaluation(**{key: ref[key] + delta}), ref, "hard-tri")
    assert not check.reproduced
    assert check.lines()[-1] == f"NOT reproduced: {key} outside the stated tolerance"
    # the same difference is accepted under a tolerance that covers it
    wide = check_reproduction(_evaluation(**{key: ref[key] + delta}), ref, "hard-tri",
                              cc_tolerance=0.05, degree_tolerance=2.0)
    assert wide.reproduced
    assert wide.as_json()["cc_tolerance"] == 0.05 and wide.as_json()["degree_tolerance"] == 2.0


def test_a_metric_an_older_card_lacks_is_not_checked() -> None:
    card = _evaluation()
    del card["median_twin_cc"]
    check = check_reproduction(_evaluation(median_twin_cc=0.1), card, "all-12A")
    assert check.reproduced
    assert "  median_twin_cc: not in the card" in check.lines()


def test_skipped_examples_make_n_differ_and_the_fix_names_the_card_s_request() -> None:
    # fragments that do not fit the cell are skipped: --n 489 gave 478 where --n 500 gave 489
    old_card = _evaluation(n=489)
    with pytest.raises(PattersolveError) as e:
        check_reproduction(_evaluation(n=478, n_requested=489), old_card, "all-12A")
    assert e.value.exit_code == ExitCode.USAGE
    assert "the --n the card was made with" in e.value.one_line()
    assert "asked for 489" in e.value.one_line()
    new_card = _evaluation(n=489, n_requested=500)
    with pytest.raises(PattersolveError) as e:
        check_reproduction(_evaluation(n=478, n_requested=489), new_card, "all-12A")
    assert "evaluate with --n 500" in e.value.one_line()
    assert check_reproduction(_evaluation(n=489, n_requested=500), new_card,
                              "all-12A").reproduced


@pytest.mark.parametrize(("change", "code", "words"), [
    ({"n": 100}, ExitCode.USAGE, "on n=200 test examples, this evaluation on n=100"),
    ({"training_data": "ffffffff" + "0" * 56}, ExitCode.DATA, "this evaluation on ffffffff"),
    ({"average_rotations": True}, ExitCode.USAGE, "averaged over rotations")])
def test_evaluations_of_other_examples_are_not_compared(change: dict, code: ExitCode,
                                                        words: str) -> None:
    with pytest.raises(PattersolveError) as e:
        check_reproduction(_evaluation(**change), _evaluation(), "hard-tri")
    assert e.value.exit_code == code and words in e.value.one_line()


def test_median_intervals_are_seeded_bootstrap_percentiles() -> None:
    rng = np.random.default_rng(3)
    rows = [{"cc": float(c), "err": float(e)}
            for c, e in zip(rng.normal(0.6, 0.1, 200), rng.normal(50, 10, 200), strict=True)]
    keys = {"cc": "median_cc", "err": "median_err"}
    ci = median_intervals(rows, keys, resamples=500)
    assert ci == median_intervals(rows, keys, resamples=500)  # deterministic
    med = float(np.median([r["cc"] for r in rows]))
    lo, hi = ci["median_cc"]
    assert lo < med < hi
    # the standard error of a median of n normal values is ~1.2533 sigma / sqrt(n)
    assert (hi - lo) / (2 * 1.96) == pytest.approx(1.2533 * 0.1 / np.sqrt(200), rel=0.3)
    assert ci["median_err"][1] - ci["median_err"][0] == pytest.approx(100 * (hi - lo), rel=0.4)
    # four times the maps, half the width
    rows4 = rows * 4
    lo4, hi4 = median_intervals(rows4, keys, resamples=500)["median_cc"]
    assert (hi4 - lo4) == pytest.approx((hi - lo) / 2, rel=0.35)
    same = median_intervals([{"cc": 0.5, "err": 1.0}] * 10, keys, resamples=50)
    assert same["median_cc"] == [0.5, 0.5] and median_intervals([], keys) == {}


def test_evaluate_expect_and_compare_require_identical_end_to_end(
        tmp_path: Path, train_shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pattersolve_train.cli import main

    cfg = tiny_config(train_shards, max_steps=8, eval_every=8, log_every=4)
    run = tmp_path / "run"
    T.fit(cfg, run, progress=False)
    assert main(["evaluate", "--run", str(run), "--n", "3", "--no-plots"]) == 0
    assert main(["export", "--run", str(run), "--name", "tiny",
                 "--models-dir", str(tmp_path / "models")]) == 0
    model = tmp_path / "models" / "tiny"
    capsys.readouterr()
    ev = json.loads((run / "evaluation" / "evaluation.json").read_text())
    lo, hi = ev["intervals_95"]["median_cc"]
    assert lo <= ev["median_cc"] <= hi and ev["n_requested"] == 3
    readme = (model / "README.md").read_text()
    assert f"| median CC (density) | {ev['median_cc']:.3f} ({lo:.3f}-{hi:.3f}) |" in readme
    assert "95 % bootstrap intervals" in readme

    # the run against the card exported from it: the same numbers
    out = tmp_path / "ev"
    assert main(["evaluate", "--run", str(run), "--n", "3", "--no-plots", "--out", str(out),
                 "--expect", str(model)]) == 0
    text = capsys.readouterr().out
    assert "against tiny (n=3)" in text and "reproduced: 6 metrics" in text
    rec = json.loads((out / "evaluation.json").read_text())["reproduction"]
    assert rec["reproduced"] is True and rec["model"] == "tiny"
    assert rec["cc_tolerance"] == CC_TOLERANCE

    # a card whose number the run does not reach: exit code 11, recorded in evaluation.json
    other = tmp_path / "other" / "tiny"
    shutil.copytree(model, other)
    card = json.loads((other / "card.json").read_text())
    card["evaluation"]["median_cc"] += 0.05
    (other / "card.json").write_text(json.dumps(card))
    assert main(["evaluate", "--run", str(run), "--n", "3", "--no-plots", "--out", str(out),
                 "--expect", str(other)]) == int(ExitCode.NOT_REPRODUCED)
    cap = capsys.readouterr()
    assert "median_cc: card" in cap.out and "OUTSIDE (tolerance 0.01)" in cap.out
    assert cap.err.count("\n") == 1 and "tiny not reproduced" in cap.err
    rec = json.loads((out / "evaluation.json").read_text())["reproduction"]
    assert rec["reproduced"] is False

    # the card's n is needed, and that is said before any work
    (out / "evaluation.json").unlink()
    assert main(["evaluate", "--run", str(run), "--n", "4", "--no-plots", "--out", str(out),
                 "--expect", str(model)]) == int(ExitCode.USAGE)
    assert "(--n 3), not --n 4; fix: evaluate with --n 3" in capsys.readouterr().err
    assert not (out / "evaluation.json").exists()

    # compare: exit 0 on a difference by default, 11 with --require-identical
    assert main(["compare", str(run), str(model), "--require-identical"]) == 0
    assert main(["recalibrate", "--run", str(run), "--examples", "16"]) == 0
    assert main(["compare", str(run), str(model)]) == 0
    capsys.readouterr()
    assert main(["compare", str(run), str(model), "--require-identical"]) == int(
        ExitCode.NOT_REPRODUCED)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differ (--require-identical)" in err
