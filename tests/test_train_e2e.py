"""End to end through the CLI: prepare -> fit -> evaluate -> export -> load with ONNX Runtime."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pattersolve_train.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_prepare_fit_evaluate_export(tmp_path: Path, train_synthetic_source: Path,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    shards = tmp_path / "shards"
    assert main(["prepare", "--source", str(train_synthetic_source), "--out", str(shards),
                 "--dialanine", "--max-entries", "20", "--quiet"]) == 0
    manifest = json.loads((shards / "manifest.json").read_text())
    run = tmp_path / "run"
    assert main(["fit", "--config", str(CONFIGS / "tiny.toml"), "--out", str(run),
                 "--shards", str(shards), "--max-steps", "40", "--quiet"]) == 0
    assert main(["fit", "--out", str(run), "--resume", "--max-steps", "60", "--quiet"]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 60
    assert main(["evaluate", "--run", str(run), "--n", "6"]) == 0
    ev = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert ev["n"] == 6 and 0 < ev["median_phase_error_weighted"] < 180
    assert ev["random_floor"]["median_phase_error_weighted"] > 40
    assert ev["median_twin_cc"] >= ev["median_cc"]  # the better of two hands
    under_60 = [json.loads(line) for line in
                (run / "evaluation" / "examples.jsonl").read_text().splitlines()]
    under_60 = [r for r in under_60 if r["phase_error_weighted"] < 60]
    assert ev["fraction_true_hand"] == (
        None if not under_60 else sum(not r["inverted"] for r in under_60) / len(under_60))
    assert 0 < ev["median_true_centrosymmetry"] < 0.9 and 0 < ev["median_centrosymmetry"] <= 1
    assert len(ev["bins"]) >= 3 and (run / "evaluation" / "cc_histogram.png").stat().st_size
    assert (run / "evaluation" / "phase_error_by_resolution.png").is_file()
    # the prediction averaged over the 24 rotations of the 10 A cube, in a folder of its own
    assert main(["evaluate", "--run", str(run), "--n", "6", "--average-rotations",
                 "--no-plots"]) == 0
    ev_rot = json.loads((run / "evaluation-rotations" / "evaluation.json").read_text())
    assert ev_rot["average_rotations"] and not ev["average_rotations"]
    assert ev_rot["median_rotations"] == 24 and ev["median_rotations"] == 1
    assert ev_rot["n"] == 6 and ev_rot["median_cc"] != ev["median_cc"]

    models = tmp_path / "models"
    assert main(["export", "--run", str(run), "--name", "tiny-test",
                 "--models-dir", str(models)]) == 0
    out = models / "tiny-test"
    card = json.loads((out / "card.json").read_text())
    assert card["sha256"] == {"model.safetensors": _sha(out / "model.safetensors"),
                              "model.onnx": _sha(out / "model.onnx")}
    meta = card["metadata"]
    assert meta["format"] == "pattersolve-model-1" and meta["name"] == "tiny-test"
    assert meta["training_data"] == manifest["sha256"]
    assert json.loads(meta["cell"]) == [10.0, 10.0, 10.0] and float(meta["d_min"]) == 2.0
    assert meta["normalisation"] == "minmax-per-map"
    assert json.loads(meta["metrics"])["median_cc"] == pytest.approx(ev["median_cc"])
    assert all(isinstance(v, str) for v in meta.values())

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        assert fh.metadata() == meta
    import onnxruntime as ort
    import torch

    from pattersolve.network import NetworkConfig, PattersonNet

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map == meta
    assert [i.name for i in sess.get_inputs()] == ["patterson"]
    net = PattersonNet(NetworkConfig.from_json(meta["config"]))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v
                         for k, v in load_file(str(out / "model.safetensors")).items()})
    net.eval()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 1, 14, 16, 12)).astype(np.float32)
    got = sess.run(["density"], {"patterson": x})[0]
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert got.shape == x.shape and np.abs(got - want).max() < 1e-4
    # ... and on real Patterson maps: random values can saturate tanh, where any two
    # backends agree (a trained Fourier-layer network did: output -1 everywhere)
    from pattersolve_train.export import validation_batch
    from pattersolve_train.train import config_for_run

    real = validation_batch(config_for_run(run)).numpy()
    got = sess.run(["density"], {"patterson": real})[0]
    with torch.no_grad():
        want = net(torch.from_numpy(real)).numpy()
    assert want.std() > 1e-3 and np.abs(got - want).max() < 1e-4
    assert 0 < card["export"]["onnx_max_diff"] < 1e-4
    assert "Evaluation" in (out / "README.md").read_text()
    assert card["evaluation_rotations"]["median_cc"] == ev_rot["median_cc"]
    assert "Averaged over rotations" in (out / "README.md").read_text()
    # the ONNX file stores its weights in the safetensors file's precision
    import onnx

    inits = onnx.load(str(out / "model.onnx")).graph.initializer
    big = [i for i in inits if np.prod(i.dims) >= 16]
    want_type = {"fp16": onnx.TensorProto.FLOAT16, "fp32": onnx.TensorProto.FLOAT}[
        card["export"]["weights_dtype"]]
    assert big and all(i.data_type == want_type for i in big)

    # evaluating the exported model gives the run's numbers
    assert main(["evaluate", "--model", str(out), "--shards", str(shards), "--n", "6",
                 "--out", str(tmp_path / "ev2")]) == 0
    ev2 = json.loads((tmp_path / "ev2" / "evaluation.json").read_text())
    assert ev2["median_cc"] == pytest.approx(ev["median_cc"], abs=2e-3)
    assert ev2["model_sha256"] == card["sha256"]["model.safetensors"]
    # ... which can refresh the card (same weights, reproduced): head and weights untouched
    readme = (out / "README.md").read_text()
    head = readme[:readme.index("## Evaluation (test split)")]
    weights = (out / "model.safetensors").read_bytes()
    assert main(["card", "--model", str(out), "--evaluation", str(tmp_path / "ev2")]) == 0
    refreshed = json.loads((out / "card.json").read_text())
    assert refreshed["evaluation"]["median_cc"] == ev2["median_cc"]
    assert refreshed["card_refreshed"]["reproduction"]["evaluation"]["reproduced"]
    assert (out / "README.md").read_text().startswith(head)
    assert (out / "model.safetensors").read_bytes() == weights
    # a run's evaluation (not of the exported weights) is refused
    assert main(["card", "--model", str(out), "--evaluation",
                 str(run / "evaluation")]) == 2
    # without --out a model's evaluation goes under ./runs/evaluate, never into its folder
    shipped = sorted(p.name for p in out.iterdir())
    with monkeypatch.context() as m:
        m.chdir(tmp_path)
        assert main(["evaluate", "--model", str(out), "--shards", str(shards), "--n", "2",
                     "--no-plots"]) == 0
    assert sorted(p.name for p in out.iterdir()) == shipped
    assert (tmp_path / "runs" / "evaluate" / out.name / "evaluation.json").is_file()

    # user errors: one line, exit code, no traceback
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--name", "tiny-test",
                 "--models-dir", str(models)]) == 9
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "Traceback" not in err

    # ... and the exported model runs in the command, both backends, network and hybrid
    from pattersolve import synthetic
    from pattersolve.cli import main as pattersolve_main

    els, xyz = synthetic.ala_ala()
    sim = synthetic.simulate_fragment(els, xyz, d_min=2.0)
    data = tmp_path / "data.mtz"
    synthetic.write_data_mtz(data, sim.placement.cell, sim.hkl,
                             synthetic.measured_columns(sim.f, np.random.default_rng(0)))
    for method, backend in (("network", "onnx"), ("hybrid", "torch")):
        stem = tmp_path / f"{method}-{backend}"
        with pytest.raises(SystemExit) as exc:
            pattersolve_main([str(data), "-o", f"{stem}.map", "--model", str(out), "--method",
                              method, "--backend", backend, "--json", f"{stem}.json", "-q"])
        assert exc.value.code == 0
        summary = json.loads(Path(f"{stem}.json").read_text())
        assert summary["stages"]["network"]["model"] == "tiny-test"
        assert Path(f"{stem}.mtz").is_file()


def test_fp16_onnx_initializers_are_exact(tmp_path: Path) -> None:
    """fp16 storage behind Casts computes exactly what the fp16-rounded torch model does."""
    import warnings

    import onnx
    import onnxruntime as ort
    import torch
    from pattersolve_train.export import fp16_initializers

    from pattersolve.network import NetworkConfig, PattersonNet

    torch.manual_seed(0)
    net = PattersonNet(NetworkConfig(8, 8, 2, 3, 3, True, 2, True, True))
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(t + 0.1 * torch.rand_like(t))  # non-trivial BatchNorm statistics
                t.copy_(t.half().float())
    net.eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 8, 8, 8),), str(path), dynamo=False,
                          opset_version=17, input_names=["patterson"],
                          output_names=["density"], do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE)
    proto = onnx.load(str(path))
    n32 = sum(i.data_type == onnx.TensorProto.FLOAT for i in proto.graph.initializer)
    assert fp16_initializers(proto) == n32 - sum(
        np.prod(i.dims) < 16 for i in proto.graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT)
    onnx.checker.check_model(proto)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).uniform(-1, 1, (1, 1, 8, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert np.abs(sess.run(["density"], {"patterson": x})[0] - want).max() < 1e-5
