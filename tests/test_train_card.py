"""Model cards: the README's evaluation is rendered from card.json, and `pattersolve-train card`
refreshes it from a new evaluation of the same weights only when that reproduces the card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import REPO
from pattersolve_train.card import EVALUATION_HEADING, PLOTS, card_body, refresh_card
from pattersolve_train.cli import main

from pattersolve.errors import ExitCode, PattersolveError

SHIPPED = sorted(p.parent for p in (REPO / "models").glob("*/card.json"))
HEAD = ("# toy-10A\n\nPatterson map -> density.\n\n## Training\n\n"
        "- 10 steps on a GPU shared with three other runs (a line written by hand)\n\n")


def _evaluation(**changes: object) -> dict:
    ev = {"n": 200, "n_requested": 200, "training_data": "ab" * 32, "average_rotations": False,
          "median_cc": 0.765, "median_twin_cc": 0.774, "median_map_cc": 0.785,
          "median_centrosymmetry": 0.894, "median_true_centrosymmetry": 0.44,
          "median_phase_error_weighted": 48.3, "median_phase_error_unweighted": 65.9,
          "fraction_true_hand": 0.78, "intervals_95": {"median_cc": [0.754, 0.773]},
          "random_floor": {"median_map_cc": 0.25, "median_phase_error_weighted": 80.1,
                           "median_phase_error_unweighted": 85.1},
          "paper": {"median_cc": 0.87, "median_phase_error": 64}, "median_rotations": 1.0}
    ev.update(changes)
    return ev


def _old_card_evaluation() -> dict:
    """A card from before the better-hand, centrosymmetry and interval metrics."""
    ev = _evaluation()
    for key in ("median_twin_cc", "median_centrosymmetry", "median_true_centrosymmetry",
                "fraction_true_hand", "intervals_95", "n_requested"):
        del ev[key]
    return ev


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    """A model folder as an older `export` wrote it (the weights are a stand-in file)."""
    d = tmp_path / "models" / "toy-10A"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    card = {"name": "toy-10A", "sha256": {"model.safetensors": sha, "model.onnx": "0" * 64},
            "evaluation": _old_card_evaluation(),
            "evaluation_rotations": _old_card_evaluation() | {"average_rotations": True}}
    (d / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (d / "README.md").write_text(HEAD + EVALUATION_HEADING + "\n\nold table\n")
    for p in PLOTS:
        (d / p).write_bytes(b"old png")
    return d


def _evaluation_dir(root: Path, name: str, model: Path, plots: bool = True,
                    **changes: object) -> Path:
    d = root / name
    d.mkdir()
    sha = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    ev = _evaluation(**{"model": str(model), "model_sha256": sha, **changes})
    (d / "evaluation.json").write_text(json.dumps(ev))
    if plots:
        for p in PLOTS:
            (d / p).write_bytes(b"new png " + p.encode())
    return d


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_refresh_renders_the_new_metrics_and_keeps_the_head(model: Path, tmp_path: Path) -> None:
    ev_dir = _evaluation_dir(tmp_path, "ev", model, median_cc=0.7652,
                             reproduction={"reproduced": True})
    rot_dir = _evaluation_dir(tmp_path, "rot", model, plots=False, average_rotations=True,
                              median_rotations=24.0)
    record = refresh_card(model, ev_dir, rot_dir)
    assert set(record["reproduction"]) == {"evaluation", "evaluation_rotations"}
    assert record["reproduction"]["evaluation"]["reproduced"] is True

    readme = (model / "README.md").read_text()
    assert readme.startswith(HEAD + EVALUATION_HEADING)  # the hand-written head is kept
    assert "old table" not in readme
    assert ("Evaluated on the weights as shipped (`pattersolve-train evaluate --model "
            "models/toy-10A --n 200`)") in readme
    assert "| median CC (density) | 0.765 (0.754-0.773) | - | 0.87 |" in readme
    assert "| median CC with the better-fitting hand | 0.774 | - | - |" in readme
    assert "median centrosymmetry of the map (true maps: 0.44) | 0.894" in readme
    assert "(median 24 per map here)" in readme and "![cc_histogram](cc_histogram.png)" in readme

    card = json.loads((model / "card.json").read_text())
    assert card["evaluation"]["median_twin_cc"] == 0.774
    assert "reproduction" not in card["evaluation"]  # the evaluation's own --expect record
    assert card["evaluation_rotations"]["median_rotations"] == 24.0
    assert card["card_refreshed"] == record
    assert readme[len(HEAD):] == card_body("toy-10A", card["evaluation"],
                                           card["evaluation_rotations"],
                                           card["evaluation"]["paper"], list(PLOTS))
    assert (model / "cc_histogram.png").read_bytes() == b"new png cc_histogram.png"
    assert not list(model.glob(".*.tmp"))


def test_without_rotations_the_cards_rotation_average_is_kept(model: Path,
                                                               tmp_path: Path) -> None:
    before = json.loads((model / "card.json").read_text())["evaluation_rotations"]
    refresh_card(model, _evaluation_dir(tmp_path, "ev", model))
    card = json.loads((model / "card.json").read_text())
    assert card["evaluation_rotations"] == before
    assert list(card["card_refreshed"]["reproduction"]) == ["evaluation"]


@pytest.mark.parametrize(("changes", "code", "words"), [
    ({"median_cc": 0.80}, ExitCode.NOT_REPRODUCED, "does not reproduce"),
    ({"median_phase_error_weighted": 50.0}, ExitCode.NOT_REPRODUCED, "does not reproduce"),
    ({"model_sha256": "cd" * 32}, ExitCode.USAGE, "not an evaluation of"),
    ({"n": 199}, ExitCode.USAGE, "n=200"),
    ({"training_data": "ef" * 32}, ExitCode.DATA, "shards"),
    ({"average_rotations": True}, ExitCode.USAGE, "averaged over rotations"),
])
def test_a_refresh_that_would_change_the_claims_is_refused(
        model: Path, tmp_path: Path, changes: dict, code: ExitCode, words: str) -> None:
    before = _snapshot(model)
    ev_dir = _evaluation_dir(tmp_path, "ev", model, **changes)
    with pytest.raises(PattersolveError) as exc:
        refresh_card(model, ev_dir)
    assert exc.value.exit_code == code and words in str(exc.value)
    assert _snapshot(model) == before  # nothing written, no temporary files left


def test_missing_figures_or_folders_are_one_line_errors(model: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    before = _snapshot(model)
    no_plots = _evaluation_dir(tmp_path, "ev", model, plots=False)
    assert main(["card", "--model", str(model), "--evaluation", str(no_plots)]) == \
        ExitCode.INPUT_MISSING
    err = capsys.readouterr().err
    assert "evaluate without --no-plots" in err and err.count("\n") == 1
    assert main(["card", "--model", str(tmp_path), "--evaluation", str(no_plots)]) == \
        ExitCode.INPUT_MISSING
    assert main(["card", "--model", str(model), "--evaluation", str(tmp_path / "nope")]) == \
        ExitCode.INPUT_MISSING
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 2
    assert _snapshot(model) == before


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_each_shipped_card_renders_from_its_card_json(folder: Path) -> None:
    """The numbers a shipped README shows are card.json's, in the current template (so each
    card has the better-hand, true-hand and centrosymmetry rows and the intervals)."""
    card = json.loads((folder / "card.json").read_text())
    readme = (folder / "README.md").read_text()
    at = readme.index("\n" + EVALUATION_HEADING + "\n") + 1
    ev = card["evaluation"]
    assert ev["intervals_95"] and ev["median_twin_cc"] and ev["fraction_true_hand"] is not None
    assert readme[at:] == card_body(card["name"], ev, card["evaluation_rotations"],
                                    ev.get("paper"), list(PLOTS))
    assert f"SHA-256 `{card['sha256']['model.safetensors']}`" in readme[:at]
