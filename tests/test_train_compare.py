"""`pattersolve-train compare`: where two networks' weights differ (the reproduction check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from pattersolve_train import train as T
from pattersolve_train.compare import compare_state_dicts, compare_weights

from pattersolve.errors import ExitCode, PattersolveError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(4, 2, 3, generator=g),
            "bn.weight": torch.rand(4, generator=g) + 0.5,
            "bn.running_mean": torch.randn(4, generator=g),
            "bn.running_var": torch.rand(4, generator=g) + 0.5,
            "bn.num_batches_tracked": torch.tensor(7)}


def test_parameters_and_batchnorm_statistics_are_counted_apart() -> None:
    a = _state()
    same = compare_state_dicts(a, {k: v.clone() for k, v in a.items()}, fp16=False)
    assert same.identical and same.counts("parameter") == (2, 2)
    assert same.counts("batchnorm statistic") == (3, 3)

    b = {k: v.clone() for k, v in a.items()}
    b["bn.running_mean"][1] += 0.25
    r = compare_state_dicts(a, b, fp16=False)
    assert not r.identical
    assert r.counts("parameter") == (2, 2) and r.counts("batchnorm statistic") == (2, 3)
    row = next(t for t in r.tensors if t.name == "bn.running_mean")
    assert row.max_abs == pytest.approx(0.25)
    assert row.rel_rms == pytest.approx(0.25 / float(a["bn.running_mean"].double().norm()))
    stats = ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")
    whole = 0.25 / sum(float(a[k].double().norm()) ** 2 for k in stats) ** 0.5
    assert r.relative_difference("batchnorm statistic") == pytest.approx(whole)
    assert r.relative_difference("parameter") == 0.0
    assert (f"BatchNorm statistics 2 of 3 identical (largest difference 0.25, relative "
            f"difference {whole:.3g})") in r.one_line()
    d = json.loads(json.dumps(r.to_dict()))
    assert d["batchnorm_statistics"] == {"identical": 2, "total": 3,
                                         "relative_difference": pytest.approx(whole)}
    assert d["tensors"][1]["name"] == "bn.running_mean" and d["tensors"][1]["rel_rms"] > 0


def test_fp16_comparison_ignores_what_the_fp16_cast_removes() -> None:
    a = _state()
    b = {k: v.clone() for k, v in a.items()}
    b["conv.weight"] = b["conv.weight"] * (1 + 1e-6)  # far below fp16's resolution
    assert not compare_state_dicts(a, b, fp16=False).identical
    assert compare_state_dicts(a, b, fp16=True).identical
    b["conv.weight"][0, 0, 0] += 0.1
    assert compare_state_dicts(a, b, fp16=True).counts("parameter") == (1, 2)


def test_different_networks_are_refused() -> None:
    a = _state()
    b = {k: v for k, v in a.items() if k != "bn.running_var"}
    with pytest.raises(PattersolveError, match="different networks") as exc:
        compare_state_dicts(a, b, fp16=False)
    assert exc.value.exit_code == ExitCode.MODEL
    b = {**a, "conv.weight": torch.zeros(4, 2, 5)}
    with pytest.raises(PattersolveError, match=r"conv.weight: \(4, 2, 3\) vs \(4, 2, 5\)"):
        compare_state_dicts(a, b, fp16=False)


def test_run_equals_its_export_and_recalibration_moves_only_the_statistics(
        tmp_path: Path, train_shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pattersolve_train.cli import main

    cfg = tiny_config(train_shards, max_steps=8, eval_every=8, log_every=4)
    run = tmp_path / "run"
    T.fit(cfg, run, progress=False)
    assert main(["export", "--run", str(run), "--name", "tiny",
                 "--models-dir", str(tmp_path / "models")]) == 0
    model = tmp_path / "models" / "tiny"
    capsys.readouterr()

    # the run (fp32) against its export (fp16): equal at the stored precision
    assert main(["compare", str(run), str(model), "--json", str(tmp_path / "d.json")]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    n_par = sum(1 for k in T.model_weights(T.read_checkpoint(run)[0])
                if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert f"(fp16): parameters {n_par} of {n_par} identical" in line
    assert json.loads((tmp_path / "d.json").read_text())["identical"] is True

    # recalibrate rewrites the BatchNorm statistics only, and compare says so
    assert main(["recalibrate", "--run", str(run), "--examples", "16"]) == 0
    r = compare_weights(run, model)
    assert r.counts("parameter") == (n_par, n_par)
    same, total = r.counts("batchnorm statistic")
    assert total > 0 and same < total

    # an unwritable JSON path is refused before anything is loaded
    assert main(["compare", str(run), str(model), "--json",
                 str(tmp_path / "nowhere" / "d.json")]) == int(ExitCode.OUTPUT)
    assert "no folder" in capsys.readouterr().err

    # a corrupt checkpoint is refused, not compared
    ckpt = run / T.CHECKPOINT
    data = bytearray(ckpt.read_bytes())
    data[-9] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    assert main(["compare", str(run), str(model)]) == int(ExitCode.MODEL)
    assert "SHA-256 differs" in capsys.readouterr().err


def test_a_cpu_run_records_what_its_bit_reproducibility_depends_on() -> None:
    # thread count and the instruction set torch's kernels were chosen for (the stage-3
    # hard-tri re-run on another machine was not bit-identical; BENCHMARKS.md)
    line = T.hardware_description(torch.device("cpu"))
    assert f"(torch kernels {torch.backends.cpu.get_cpu_capability()})" in line
    assert f"{torch.get_num_threads()} threads" in line and torch.__version__ in line
    assert T.cpu_model() and T.cpu_model() in line


def test_a_run_resumed_on_other_hardware_says_where_each_part_ran(
        tmp_path: Path, train_shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pattersolve_train.export import _hardware_text

    cfg = tiny_config(train_shards, max_steps=8, eval_every=8, log_every=4)
    run = tmp_path / "run"
    T.fit(cfg, run, stop_at=4, progress=False)
    here = T.hardware_description(torch.device("cpu"))
    T.fit(cfg, run, stop_at=6, resume=True, progress=False)  # same machine: one segment
    meta = json.loads((run / T.CHECKPOINT_JSON).read_text())
    assert meta["hardware_segments"] == [{"from_step": 0, "hardware": here}]
    assert _hardware_text(meta) == here

    monkeypatch.setattr(T, "hardware_description", lambda device: "another machine")
    T.fit(cfg, run, resume=True, progress=False)
    meta = json.loads((run / T.CHECKPOINT_JSON).read_text())
    assert meta["hardware"] == "another machine"
    assert meta["hardware_segments"] == [{"from_step": 0, "hardware": here},
                                         {"from_step": 6, "hardware": "another machine"}]
    assert _hardware_text(meta) == f"steps 0-6 on {here}; then steps 6-8 on another machine"
