"""The shipped model through both backends: agreement, checksums, metadata, model choice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pattersolve import settings
from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.runtime import Predictor, list_models, load_model_info, resolve_model


@pytest.fixture(scope="module")
def model():
    return resolve_model(settings.DEFAULT_MODEL)


def _patterson(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    return 2 * (x - x.min()) / (x.max() - x.min()) - 1


def test_default_model_is_listed_with_card(model):
    names = [m.name for m in list_models()]
    assert settings.DEFAULT_MODEL in names
    card = model.card
    assert card["sha256"]["model.onnx"] and card["sha256"]["model.safetensors"]
    assert model.grid_spacing > 0 and model.d_min > 0 and len(model.cell) == 3
    assert (model.path / "README.md").is_file()


@pytest.mark.parametrize("shape", [(20, 20, 20), (20, 24, 18)])
def test_backends_agree(model, shape):
    pytest.importorskip("onnxruntime")
    x = _patterson(shape)
    y_onnx = Predictor(model, backend="onnx", device="cpu", threads=1).predict(x)
    y_torch = Predictor(model, backend="torch", device="cpu", threads=1).predict(x)
    assert y_onnx.shape == shape
    assert np.abs(y_onnx - y_torch).max() < 1e-4
    assert -1 <= y_onnx.min() and y_onnx.max() <= 1


def test_corrupt_weights_detected(model, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(model.path, copy)
    blob = bytearray((copy / "model.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(blob))
    info = load_model_info(copy)
    with pytest.raises(PattersolveError) as err:
        Predictor(info, backend="onnx")
    assert err.value.exit_code == ExitCode.MODEL and "checksum" in err.value.message
    with pytest.raises(PattersolveError):
        info.weight_file("model.onnx")


def test_card_weights_mismatch_detected(model, tmp_path):
    """A card whose config disagrees with the metadata embedded in the weights."""
    copy = tmp_path / "m"
    shutil.copytree(model.path, copy)
    card = json.loads((copy / "card.json").read_text())
    card["metadata"]["grid_spacing"] = "0.7"
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(PattersolveError) as err:
        Predictor(load_model_info(copy), backend="onnx")
    assert err.value.exit_code == ExitCode.MODEL and "grid_spacing" in err.value.message


def test_not_a_model_folder(tmp_path):
    with pytest.raises(PattersolveError) as err:
        resolve_model(str(tmp_path))
    assert err.value.exit_code == ExitCode.MODEL


def test_default_choice_follows_cell(model):
    assert resolve_model(None, tuple(model.cell)).name == model.name


def test_onnx_path_never_imports_torch(tmp_path, alaala_mtz):
    pytest.importorskip("onnxruntime")
    data, _ = alaala_mtz
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pattersolve.cli", str(data), "-o",
         str(tmp_path / "o.map"), "--method", "network", "--backend", "onnx", "-q"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not any(ln.rstrip().endswith(" torch") for ln in out.stderr.splitlines())
    assert (tmp_path / "o.map").is_file()


def test_model_choice_by_cell_and_resolution(tmp_path):
    from pattersolve.runtime import ModelInfo, model_mismatch

    def fake(name, cell, d_min):
        return ModelInfo(path=tmp_path / name, card={"name": name, "metadata": {
            "cell": json.dumps(cell), "d_min": str(d_min), "grid_spacing": "0.5"}})

    ala, all12, packed = fake("a", [10, 10, 10], 1.5), fake("b", [12, 12, 12], 1.5), \
        fake("c", None, 2.5)
    models = [ala, all12, packed]

    def best(edges, d_min):
        return min(models, key=lambda m: model_mismatch(m, edges, d_min)).name

    assert best((10, 10, 10), 1.5) == "a"
    assert best((12.1, 11.9, 12), 1.5) == "b"
    assert best((11, 13, 15.5), 2.5) == "c"  # a packed crystal-like cell at low resolution
    assert model_mismatch(ala, (10, 10, 10), 1.5) == 0
