"""Runs carried off a GPU and back: split snapshots, exact resume, weights-only fallback."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import checkpoint_tensors, tiny_config
from pattersolve_train import snapshot as S
from pattersolve_train import train as T

from pattersolve.errors import ExitCode, PattersolveError

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, train_shards: Path) -> dict[str, Path]:
    """An uninterrupted 16-step tiny run and the same run stopped at step 8."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("snapshot_runs")
    cfg = tiny_config(train_shards, max_steps=16, eval_every=8, checkpoint_every=5, log_every=4)
    T.fit(cfg, base / "full", progress=False)
    T.fit(cfg, base / "tiny", stop_at=8, progress=False)
    return {"full": base / "full", "half": base / "tiny", "cfg": cfg}  # type: ignore[dict-item]


def test_split_snapshot_resumes_bit_identically(tmp_path: Path, runs: dict) -> None:
    size = (runs["half"] / T.CHECKPOINT).stat().st_size
    part = size // 3
    paths = S.pack_run(runs["half"], tmp_path / "out", part_bytes=part)
    assert len(paths) >= 3 and all(p.stat().st_size <= part for p in paths)
    assert [p.name for p in paths] == [f"tiny.tar.part{i + 1}of{len(paths)}"
                                       for i in range(len(paths))]
    # any part names the whole snapshot; the run lands under --into with its own name
    run = S.restore_run(paths[-1], tmp_path / "restored")
    assert run == tmp_path / "restored" / "tiny"
    result = T.fit(runs["cfg"], run, resume=True, progress=False)
    assert result.step == 16
    a, b = checkpoint_tensors(runs["full"]), checkpoint_tensors(run)
    for key in a:
        if key.startswith(("model.", "optim.")):
            assert torch.equal(a[key], b[key]), key
    steps = [json.loads(x)["step"] for x in (run / T.METRICS).read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 16


def test_small_run_is_one_tar(tmp_path: Path, runs: dict) -> None:
    paths = S.pack_run(runs["half"], tmp_path)
    assert [p.name for p in paths] == ["tiny.tar"]
    # packing again replaces the old files instead of leaving stale parts beside them
    S.pack_run(runs["half"], tmp_path, part_bytes=50_000)
    assert not (tmp_path / "tiny.tar").exists()
    S.pack_run(runs["half"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.tar"]


def test_weights_only_snapshot_refuses_resume_but_initialises(tmp_path: Path,
                                                              runs: dict) -> None:
    full_size = S.pack_run(runs["half"], tmp_path / "full")[0].stat().st_size
    (path,) = S.pack_run(runs["half"], tmp_path / "w", weights_only=True)
    assert path.stat().st_size < 0.6 * full_size  # no optimiser moments
    for weights_only, got in ((True, path), (False, tmp_path / "full" / "tiny.tar")):
        est = S.snapshot_size(runs["half"], weights_only=weights_only)
        assert 0 <= est - got.stat().st_size <= 10240  # an upper bound, within a record
    run = S.restore_run(path, tmp_path / "r")
    with pytest.raises(PattersolveError, match="weights-only snapshot") as err:
        T.fit(runs["cfg"], run, resume=True, progress=False)
    assert "--init" in err.value.fix
    # fit --init RUN: a new run from exactly those weights
    model = T.build_model(runs["cfg"], torch.device("cpu"))
    init = T.initialise_from(model, runs["cfg"], str(run))
    assert init["kind"] == "run" and init["step"] == "8"
    want = T.model_weights(checkpoint_tensors(runs["half"]))
    got = model.state_dict()
    for key, value in want.items():
        assert torch.equal(value, got[key]), key
    # another network is refused
    other = replace(runs["cfg"], network=replace(runs["cfg"].network, feat_channels=8))
    with pytest.raises(PattersolveError, match="another network config"):
        T.initialise_from(T.build_model(other, torch.device("cpu")), other, str(run))


def test_restore_refuses_incomplete_corrupt_or_occupied(tmp_path: Path, runs: dict) -> None:
    size = (runs["half"] / T.CHECKPOINT).stat().st_size
    paths = S.pack_run(runs["half"], tmp_path / "out", part_bytes=size // 3)
    # a missing part
    gone = paths[1].read_bytes()
    paths[1].unlink()
    with pytest.raises(PattersolveError, match="lacks") as err:
        S.restore_run(paths[0], tmp_path / "a")
    assert err.value.exit_code == ExitCode.INPUT_MISSING
    paths[1].write_bytes(gone)
    # one byte changed inside the tensors: the checkpoint's SHA-256 no longer matches
    data = bytearray(paths[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    paths[1].write_bytes(bytes(data))
    with pytest.raises(PattersolveError, match="SHA-256"):
        S.restore_run(paths[0], tmp_path / "b")
    assert not (tmp_path / "b" / "tiny").exists()  # nothing half-restored
    paths[1].write_bytes(gone)
    # a truncated last part
    last = paths[-1].read_bytes()
    paths[-1].write_bytes(last[: len(last) // 2])
    with pytest.raises(PattersolveError, match="not a complete snapshot"):
        S.restore_run(paths[0], tmp_path / "c")
    paths[-1].write_bytes(last)
    # restored once; a second restore into the same place is refused, the run kept
    run = S.restore_run(paths[0], tmp_path / "d")
    before = checkpoint_tensors(run)
    with pytest.raises(PattersolveError, match="not empty") as err:
        S.restore_run(paths[0], tmp_path / "d")
    assert err.value.exit_code == ExitCode.OUTPUT
    assert all(torch.equal(v, checkpoint_tensors(run)[k]) for k, v in before.items())


def test_plan_keeps_full_checkpoints_while_they_fit() -> None:
    mib = 2**20
    sizes = {"long": (30 * mib, 10 * mib), "short": (30 * mib, 10 * mib)}
    # 2 + 2 files, 60 MiB: both full
    assert S.plan_snapshots(sizes, max_files=5, max_bytes=64 * mib, part_bytes=15 * mib) == \
        {"long": "full", "short": "full"}
    # one file short: the first named keeps its moments, the second its weights
    assert S.plan_snapshots(sizes, max_files=3, max_bytes=64 * mib, part_bytes=15 * mib) == \
        {"long": "full", "short": "weights"}
    assert S.plan_snapshots(sizes, max_files=8, max_bytes=45 * mib, part_bytes=15 * mib) == \
        {"long": "full", "short": "weights"}
    with pytest.raises(PattersolveError, match="over the 1 files") as err:
        S.plan_snapshots(sizes, max_files=1, max_bytes=64 * mib, part_bytes=15 * mib)
    assert "fewer runs" in err.value.fix


def _session_module():
    spec = importlib.util.spec_from_file_location("gpu_session",
                                                  REPO / "training" / "gpu" / "session.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_session_snapshot_counts_the_calls_other_files(tmp_path: Path, runs: dict,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """session.py's snapshot leaves room for the logs already in $OUT, then restores."""
    session = _session_module()
    monkeypatch.setattr(session, "RUNS", runs["half"].parent)
    monkeypatch.setattr(session, "CONFIGS", ["tiny"])
    monkeypatch.setattr(session, "RESUME", [])
    part = (runs["half"] / T.CHECKPOINT).stat().st_size // 2
    monkeypatch.setattr(S, "PART_BYTES", part)
    monkeypatch.setattr(session, "MAX_FILES", 8)
    out = tmp_path / "OUT"
    out.mkdir()
    for i in range(4):  # plan.json, test logs ...: with the headroom 3 files are left
        (out / f"log{i}.txt").write_text("x")
    session.snapshot(out)
    parts = sorted(out.glob("tiny.tar*"))
    meta = json.loads(subprocess.run(
        ["tar", "-xOf", "-", "tiny/checkpoint.json"], input=b"".join(
            p.read_bytes() for p in S.snapshot_parts(parts[0])), capture_output=True,
        check=True).stdout)
    assert len(parts) == 3 and not meta.get("weights_only")
    monkeypatch.setattr(session, "MAX_FILES", 7)  # 2 left: the weights alone, in one file
    session.snapshot(out)
    parts = sorted(out.glob("tiny.tar*"))
    assert [p.name for p in parts] == ["tiny.tar"]
    # session.py restore (here, after the call)
    res = subprocess.run([sys.executable, str(REPO / "training" / "gpu" / "session.py"),
                          "restore", str(parts[0]), "--into", str(tmp_path / "runs")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "weights only" in res.stdout
    assert (tmp_path / "runs" / "tiny" / T.CHECKPOINT_JSON).is_file()
