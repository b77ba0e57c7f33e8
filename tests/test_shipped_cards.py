"""A shipped model's card is what the evaluate command gives on the test split.

The hard-regime model's shards are rebuilt from the shared PDB tarball with the command its
config names, must hash to the card's training data, and `pattersolve-train evaluate --expect`
must reproduce the card's test metrics within the stated tolerance. The other two shipped
models are checked the same way by ``python bench/bench_cards.py`` (1.5 A cubes, minutes on
two cores; BENCHMARKS.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, shared_path

pytestmark = [pytest.mark.shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def tri_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pattersolve-train prepare --length 3 --max-per-entry 64`` on the shared tarball."""
    from pattersolve_train.prepare import PrepareOptions, prepare

    tarball = shared_path("data", "pdb", "pdownb_PDB.tar.xz")
    out = tmp_path_factory.mktemp("tri")
    report = prepare(tarball, out, PrepareOptions(length=3, max_per_entry=64), workers=2,
                     progress=False)
    assert report.manifest_written and not report.errors
    return out


def test_hard_tri_card_is_reproduced_by_evaluate(tri_shards: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from pattersolve_train.cli import main

    model = REPO / "models" / "hard-tri"
    card = json.loads((model / "card.json").read_text())
    manifest = json.loads((tri_shards / "manifest.json").read_text())
    assert manifest["sha256"] == card["evaluation"]["training_data"]  # the data, bit for bit

    out = tmp_path / "ev"
    code = main(["evaluate", "--model", str(model), "--shards", str(tri_shards), "--n",
                 str(card["evaluation"]["n"]), "--no-plots", "--out", str(out),
                 "--expect", str(model)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "reproduced: 6 metrics within the stated tolerance" in text
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["reproduction"]["reproduced"] is True
    assert ev["n"] == card["evaluation"]["n"] == 200
