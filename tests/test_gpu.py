"""CUDA paths: maps, inference, refinement, training and the command on a GPU.

Every test here skips on a machine without CUDA (CI and most users). On a CUDA machine run
them before training there (``python -m pytest -q tests/test_gpu.py``, training/README.md); each
compares a CUDA result with the CPU path it replaces.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the GPU paths are checked on a GPU machine only",
                allow_module_level=True)

from pattersolve import fourier  # noqa: E402
from pattersolve import simulate as sim  # noqa: E402
from pattersolve.phasematch import match_phases  # noqa: E402
from pattersolve.refine import refine_phases  # noqa: E402
from pattersolve.runtime import Predictor, resolve_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "share" / "examples" / "alaala_1akz.mtz"


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_torch_map_maker_cuda_matches_cpu(alaala):
    cell = alaala.placement.cell
    shape = fourier.grid_shape_for_spacing(cell, 0.5)
    frac = torch.as_tensor(alaala.placement.frac[None], dtype=torch.float64)
    el = torch.as_tensor([[sim.ELEMENTS.index(e) for e in alaala.elements]])
    b = torch.full(frac.shape[:2], 15.0, dtype=torch.float64)
    occ = torch.ones_like(b)
    out = {}
    for dev in ("cpu", "cuda"):
        maker = sim.TorchMapMaker(cell, 1.5, shape, device=dev)
        out[dev] = [t.cpu().numpy() for t in maker.maps(frac.to(dev), el.to(dev), b.to(dev),
                                                        occ.to(dev))]
    for cpu, gpu in zip(out["cpu"], out["cuda"], strict=True):
        assert np.isfinite(gpu).all()
        # the maker computes in float32 (its default, the training path) on both devices:
        # measured 2.6e-7 on an H100 (2026-11-24)
        assert _rel(gpu, cpu) < 1e-5


def test_torch_predictor_cuda_matches_cpu():
    info = resolve_model("alaala-10A")
    x = np.random.default_rng(0).uniform(-1, 1, (3, 20, 20, 20)).astype(np.float32)
    cpu = Predictor(info, backend="torch", device="cpu").predict(x)
    gpu_pred = Predictor(info, backend="torch", device="cuda")
    assert gpu_pred.device == "cuda"
    gpu = gpu_pred.predict(x)
    assert gpu.shape == cpu.shape and np.isfinite(gpu).all()
    assert _rel(gpu, cpu) < 5e-3  # TF32 convolutions on the GPU


def test_onnx_runtime_cuda_matches_cpu():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this ONNX Runtime ({ort.__version__}) has no CUDA provider "
                    f"({ort.get_available_providers()}): install onnxruntime-gpu")
    info = resolve_model("alaala-10A")
    x = np.random.default_rng(1).uniform(-1, 1, (2, 20, 20, 20)).astype(np.float32)
    cpu = Predictor(info, backend="onnx", device="cpu").predict(x)
    gpu_pred = Predictor(info, backend="onnx", device="cuda")
    assert gpu_pred.device == "cuda"
    assert _rel(gpu_pred.predict(x), cpu) < 5e-3


def test_refinement_on_cuda_solves_like_cpu(alaala):
    cell = alaala.placement.cell
    shape = fourier.grid_shape_for_spacing(cell, 0.6)
    res = {dev: refine_phases(alaala.hkl, np.abs(alaala.f), cell, shape, n_starts=4, rng=1,
                              device=dev) for dev in ("torch", "cuda")}
    for r in res.values():
        m = match_phases(alaala.hkl, alaala.f, r.f, cell)
        assert m.weighted_error < 10.0 and m.map_cc > 0.98
    assert res["cuda"].residual_final == pytest.approx(res["torch"].residual_final, abs=0.02)


def test_training_steps_on_cuda_bf16_and_resume(tmp_path: Path, train_shards: Path):
    from pattersolve_train import train as T

    cfg = replace(T.load_config(REPO / "training" / "configs" / "tiny.toml"),
                  shards=str(train_shards), max_steps=20, eval_every=10, checkpoint_every=5,
                  log_every=5, device="cuda")
    first = T.fit(cfg, tmp_path / "run", stop_at=10, progress=False)
    assert first.step == 10
    meta = json.loads((tmp_path / "run" / T.CHECKPOINT_JSON).read_text())
    assert torch.cuda.get_device_name(0) in meta["hardware"]
    done = T.fit(cfg, tmp_path / "run", resume=True, progress=False)
    assert done.step == 20
    rows = [json.loads(s) for s in (tmp_path / "run" / T.METRICS).read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) for r in rows if "train_loss" in r)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    tensors, meta = T.read_checkpoint(tmp_path / "run")
    assert meta["step"] == 20 and any(k.startswith("rng.cuda.") for k in tensors)
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())


@pytest.mark.parametrize("flag", ["--single-prediction", "--average-rotations"])
def test_command_on_cuda_solves_the_example(tmp_path: Path, flag: str):
    out = tmp_path / "out.map"
    proc = subprocess.run([sys.executable, "-m", "pattersolve.cli", str(EXAMPLE), "-o", str(out),
                           "--backend", "torch", "--device", "cuda", flag, "--json",
                           str(tmp_path / "s.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    stages = json.loads((tmp_path / "s.json").read_text())["stages"]
    assert stages["network"]["backend"].endswith("(cuda)")
    assert stages["network"]["rotations_averaged"] == (24 if flag == "--average-rotations" else 1)
    assert stages["refinement"]["device"] == "cuda"
    check = subprocess.run([sys.executable, "-m", "pattersolve.cli_phasematch",
                            str(EXAMPLE.with_name("alaala_1akz_truth.mtz")),
                            str(out.with_suffix(".mtz")), "--json", str(tmp_path / "m.json")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert json.loads((tmp_path / "m.json").read_text())["result"]["weighted_error"] < 10.0
