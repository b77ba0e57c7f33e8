"""Training loop: exact resume, interruption, loss decrease, schedules, config loading."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import checkpoint_tensors, tiny_config
from pattersolve_train import train as T

from pattersolve.errors import PattersolveError

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.mark.slow
def test_exact_resume_is_bit_identical(tmp_path: Path, train_shards: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(train_shards, max_steps=24, eval_every=10, checkpoint_every=7, log_every=5)
    full = T.fit(cfg, tmp_path / "full", progress=False)
    assert full.step == 24 and not full.interrupted

    # N steps, stop, resume, N more
    half = T.fit(cfg, tmp_path / "half", stop_at=12, progress=False)
    assert half.step == 12
    resumed = T.fit(cfg, tmp_path / "half", resume=True, progress=False)
    assert resumed.step == 24

    # interrupted by SIGTERM at step 17, then resumed
    real_lr_at = T.lr_at

    def lr_with_signal(c, step, spe, horizon):
        if step == 17:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_lr_at(c, step, spe, horizon)

    monkeypatch.setattr(T, "lr_at", lr_with_signal)
    killed = T.fit(cfg, tmp_path / "killed", progress=False)
    assert killed.interrupted and killed.step == 18
    monkeypatch.setattr(T, "lr_at", real_lr_at)
    T.fit(cfg, tmp_path / "killed", resume=True, progress=False)

    a = checkpoint_tensors(tmp_path / "full")
    for other in ("half", "killed"):
        b = checkpoint_tensors(tmp_path / other)
        assert a.keys() == b.keys()
        for key in a:
            if key.startswith(("model.", "optim.")):
                assert torch.equal(a[key], b[key]), (other, key)
    lines = (tmp_path / "half" / T.METRICS).read_text().splitlines()
    steps = [json.loads(x)["step"] for x in lines]
    assert steps == sorted(steps) and steps[-1] == 24  # no duplicated records after resume


def test_resume_refuses_mismatch(tmp_path: Path, train_shards: Path) -> None:
    cfg = tiny_config(train_shards, max_steps=2)
    T.fit(cfg, tmp_path / "r", progress=False)
    with pytest.raises(PattersolveError, match="already holds a run"):
        T.fit(cfg, tmp_path / "r", progress=False)
    with pytest.raises(PattersolveError, match="config differs"):
        T.fit(replace(cfg, lr=1.0), tmp_path / "r", resume=True, progress=False)
    (tmp_path / "r" / T.CHECKPOINT).write_bytes(b"garbage")
    with pytest.raises(PattersolveError, match="SHA-256"):
        T.fit(cfg, tmp_path / "r", resume=True, progress=False)


@pytest.mark.slow
def test_loss_decreases_ontiny_config(tmp_path: Path, train_shards: Path) -> None:
    cfg = tiny_config(train_shards, max_steps=100, log_every=10, eval_every=100)
    result = T.fit(cfg, tmp_path / "run", progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / T.METRICS).read_text().splitlines()]
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert losses[-1] < 0.7 * losses[0]
    assert np.isfinite(result.last_metrics["val_loss"])
    assert result.last_metrics["val_cc"] > 0.5
    # how much the predictions hedge between the hands is logged with each evaluation
    assert 0.0 < result.last_metrics["val_centrosymmetry"] <= 1.0 + 1e-9


def test_schedules() -> None:
    base = T.load_config(CONFIGS / "paper_1b.toml")
    spe = 10
    assert T.lr_at(base, 0, spe, 1000) == pytest.approx(1e-3)
    assert T.lr_at(base, 9, spe, 1000) == pytest.approx(1e-3)  # per epoch: constant inside
    assert T.lr_at(base, 10, spe, 1000) == pytest.approx(1e-3 * 0.86)
    assert T.lr_at(base, 150, spe, 1000) == pytest.approx(1e-3 * 0.86**12 * 0.9991**3)
    per_step = replace(base, per_step=True)
    assert T.lr_at(per_step, 5, spe, 1000) == pytest.approx(1e-3 * 0.86**0.5)
    cos = replace(base, schedule="cosine", warmup_steps=10, min_lr=0.0)
    assert T.lr_at(cos, 0, spe, 110) == pytest.approx(1e-4)
    assert T.lr_at(cos, 60, spe, 110) == pytest.approx(0.5e-3)
    assert T.lr_at(cos, 110, spe, 110) == pytest.approx(0.0, abs=1e-12)
    one = replace(base, schedule="onecycle", onecycle_pct=0.3)
    lrs = [T.lr_at(one, s, spe, 100) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-3 / 25) and max(lrs) == pytest.approx(1e-3)
    assert int(np.argmax(lrs)) == 30 and lrs[-1] == pytest.approx(1e-7)


def test_paper_configs_match_the_notes() -> None:
    c1a, c1b, c2 = (T.load_config(CONFIGS / f"paper_{s}.toml") for s in ("1a", "1b", "2"))
    assert (c1a.data.cell, c1a.data.grid_spacing) == ((20.0,) * 3, 0.5)
    assert (c1b.data.cell, c1b.data.grid_spacing) == ((10.0,) * 3, 0.5)
    assert (c2.data.cell, c2.data.grid_spacing) == ((12.0,) * 3, 0.6)
    for c in (c1a, c1b):
        assert (c.data.residues, c.optimizer, c.batch_size, c.grad_accum, c.epochs) == \
            ("dialanine", "adam", 146, 3, 1000)
        assert (c.gamma1, c.phase1_epochs, c.gamma2) == (0.86, 12, 0.9991)
    assert (c2.data.residues, c2.batch_size * c2.grad_accum, c2.epochs) == ("all", 928, 200)
    assert (c2.gamma1, c2.phase1_epochs, c2.gamma2) == (0.91, 18, 0.9989)
    for name in ("cpu_1b", "hard_tri", "tiny"):
        cfg = T.load_config(CONFIGS / f"{name}.toml")
        if name != "tiny":
            assert cfg.network.enc_channels % 16 == 0 and cfg.network.feat_channels % 16 == 0
    configs = {p.stem: T.load_config(p) for p in sorted(CONFIGS.rglob("*.toml"))}  # all load
    robust, shipped = configs["gpu_2_robust"], configs["gpu_2"]
    # the fine-tune is the shipped model's task and network, with degraded inputs only
    assert robust.network == shipped.network and robust.data.augmented
    assert replace(robust.data, amplitude_noise=0.0, missing_fraction=0.0,
                   low_resolution_cut=0.0) == shipped.data
    # the continuation keeps the shipped task, network and plain loss (and so the hand)
    cont = configs["gpu_2_continue"]
    assert (cont.data, cont.network) == (shipped.data, shipped.network)
    assert not cont.loss_twin and cont.seed != shipped.seed and cont.lr < shipped.lr


def test_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("max_steps = 1\nbogus = 2\n")
    with pytest.raises(PattersolveError, match="unknown config keys"):
        T.load_config(bad)
    with pytest.raises(PattersolveError, match="not found"):
        T.load_config(tmp_path / "missing.toml")


def test_init_from_shipped_model_loads_its_weights():
    """--init: continue a shipped model (e.g. on a GPU); a config mismatch is refused."""
    import torch
    from pattersolve_train.train import build_model, initialise_from, load_config
    from safetensors.torch import load_file

    from pattersolve.errors import PattersolveError
    from pattersolve.runtime import resolve_model

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "training" / "configs" / "gpu_1b.toml")  # alaala-10A
    model = build_model(cfg, torch.device("cpu"))
    done = initialise_from(model, cfg, "alaala-10A")
    info = resolve_model("alaala-10A")
    assert done["sha256"] == info.card["sha256"]["model.safetensors"]
    shipped = load_file(str(info.path / "model.safetensors"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, shipped[key].to(value.dtype)), key
    tiny = load_config(repo / "training" / "configs" / "tiny.toml")
    with pytest.raises(PattersolveError):
        initialise_from(build_model(tiny, torch.device("cpu")), tiny, "alaala-10A")


def _packed(shards: Path, **kw) -> T.TrainConfig:
    """tiny.toml in packed cells with random orientations: every example its own cell."""
    cfg = tiny_config(shards, **kw)
    return replace(cfg, data=replace(cfg.data, cell=None, padding=2.5, cell_round=2.0,
                                     rotation=True))


def test_cell_buckets_cover_the_epoch_with_fewer_passes(train_shards: Path) -> None:
    from pattersolve_train.data import FragmentMaps
    from pattersolve_train.shards import load_split

    frags = load_split(str(train_shards), "train")
    plain = _packed(train_shards, max_steps=100, batch_size=8)
    bucketed = replace(plain, bucket_by_cell=True, bucket_chunk=8)
    ds = FragmentMaps(frags, plain.data, plain.seed, "train")
    spe = T.steps_per_epoch(plain, len(ds))
    assert spe >= 8
    passes = {}
    for cfg in (plain, bucketed):
        seen, n_groups = [], 0
        for step in range(spe, 2 * spe):  # epoch 1
            idx, epoch = T.micro_batch_indices(ds, cfg, step, 0, spe)
            assert epoch == 1 and len(idx) == 8
            seen += idx
            n_groups += len(ds.batch(idx, epoch))
        # every example of the epoch's used range exactly once, with or without buckets
        assert sorted(seen) == sorted(int(i) for i in ds.order(1)[: spe * 8])
        passes[cfg.bucket_by_cell] = n_groups
    assert passes[True] < 0.6 * passes[False], passes
    # a pure function of (seed, epoch, step): a fresh dataset gives the same batches
    fresh = FragmentMaps(frags, plain.data, plain.seed, "train")
    for step in (spe + 3, spe + 1, 5):
        assert T.micro_batch_indices(fresh, bucketed, step, 0, spe) == \
            T.micro_batch_indices(ds, bucketed, step, 0, spe)


def test_cell_buckets_resume_exactly(tmp_path: Path, train_shards: Path) -> None:
    cfg = _packed(train_shards, max_steps=8, batch_size=4, bucket_by_cell=True, bucket_chunk=3,
                  eval_every=100, eval_examples=4, checkpoint_every=100, log_every=4)
    T.fit(cfg, tmp_path / "full", progress=False)
    T.fit(cfg, tmp_path / "half", stop_at=5, progress=False)
    T.fit(cfg, tmp_path / "half", resume=True, progress=False)
    a, b = checkpoint_tensors(tmp_path / "full"), checkpoint_tensors(tmp_path / "half")
    for key in a:
        if key.startswith(("model.", "optim.")):
            assert torch.equal(a[key], b[key]), key


def test_recalibrate_batchnorm_changes_only_running_statistics(tmp_path: Path,
                                                               train_shards: Path) -> None:
    from pattersolve_train.cli import main

    cfg = tiny_config(train_shards, max_steps=12, eval_every=12, log_every=6)
    T.fit(cfg, tmp_path / "run", progress=False)
    before = checkpoint_tensors(tmp_path / "run")
    assert main(["recalibrate", "--run", str(tmp_path / "run"), "--examples", "24"]) == 0
    after = checkpoint_tensors(tmp_path / "run")
    stats = [k for k in before if k.startswith("model.") and ("running_" in k
                                                             or "num_batches" in k)]
    assert stats  # the network has BatchNorm layers
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and set(changed) <= set(stats)  # weights, optimiser and RNG state untouched
    meta = json.loads((tmp_path / "run" / T.CHECKPOINT_JSON).read_text())
    rec = meta["bn_recalibrated"]
    assert rec["bn_recalibrated"] == 24 and np.isfinite(rec["val_loss"])
    assert json.loads((tmp_path / "run" / T.METRICS).read_text().splitlines()[-1]) == rec
    # deterministic: the statistics are reset, not accumulated, so a second pass repeats them
    T.recalibrate_run(tmp_path / "run", 24)
    again = checkpoint_tensors(tmp_path / "run")
    assert all(torch.equal(after[k], again[k]) for k in stats)
    # the rewritten checkpoint still loads and resumes (its SHA-256 matches)
    T.fit(replace(cfg, max_steps=12), tmp_path / "run", resume=True, progress=False)


def test_fit_seed_option_trains_a_replicate(tmp_path: Path, train_shards: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`fit --seed K`: the config's recipe with another seed, in runs/<name>-seed<K>."""
    from pattersolve_train.cli import main

    from pattersolve.errors import ExitCode

    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(CONFIGS / "tiny.toml"), "--shards", str(train_shards),
            "--max-steps", "2", "--quiet"]
    assert main([*args, "--out", "seed0"]) == 0
    assert main([*args, "--seed", "3"]) == 0
    run = tmp_path / "runs" / f"{T.load_config(CONFIGS / 'tiny.toml').name}-seed3"
    assert T.config_for_run(run).seed == 3 and T.config_for_run(tmp_path / "seed0").seed == 0
    w0, w3 = checkpoint_tensors(tmp_path / "seed0"), checkpoint_tensors(run)
    assert any(not torch.equal(w0[k], w3[k]) for k in w0)  # another initialisation
    assert main(["fit", "--out", str(run), "--resume", "--seed", "4"]) == ExitCode.USAGE
