"""Training-data degradation: amplitude noise and missing reflections in the Patterson input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pattersolve_train import train as T
from pattersolve_train.data import DataConfig, FragmentMaps
from pattersolve_train.shards import load_split

from pattersolve.fourier import d_spacings, patterson_map
from pattersolve.simulate import scale_to_unit_range

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(**kw) -> DataConfig:
    return replace(T.load_config(CONFIGS / "tiny.toml").data, **kw)


def _intensities(group, j: int) -> np.ndarray:
    """``|F|^2`` (up to one positive scale) read back from a scaled Patterson."""
    grid = np.fft.ifftn(group.patterson[j, 0].double().numpy())
    idx = tuple((group.hkl % np.asarray(grid.shape)).T)
    return grid[idx].real


def test_config_validates_ranges():
    with pytest.raises(ValueError, match="amplitude_noise"):
        _data(amplitude_noise=-0.1)
    with pytest.raises(ValueError, match="missing_fraction"):
        _data(missing_fraction=1.0)
    with pytest.raises(ValueError, match="low_resolution_cut"):
        _data(low_resolution_cut=1.0)  # below d_min = 2.0
    assert not _data().augmented and _data(missing_fraction=0.2).augmented


def test_degraded_pattersons_train_split_only(train_shards: Path):
    frags = load_split(train_shards, "train", 12)
    clean_cfg = _data()
    cfg = _data(amplitude_noise=0.2, missing_fraction=0.3, low_resolution_cut=4.0)
    idx = list(range(12))
    clean = FragmentMaps(frags, clean_cfg, 0, "train").batch(idx, epoch=3)[0]
    aug = FragmentMaps(frags, cfg, 0, "train").batch(idx, epoch=3)[0]
    again = FragmentMaps(frags, cfg, 0, "train").batch(idx, epoch=3)[0]
    other_epoch = FragmentMaps(frags, cfg, 0, "train").batch(idx, epoch=4)[0]
    # the target and the placements are untouched; only the input changes, deterministically
    assert torch.equal(aug.density, clean.density) and torch.equal(aug.f, clean.f)
    assert not torch.equal(aug.patterson, clean.patterson)
    assert torch.equal(aug.patterson, again.patterson)
    assert not torch.equal(aug.patterson, other_epoch.patterson)
    # validation and test maps stay exact
    for split in ("val", "test"):
        sf = load_split(train_shards, split, 4)
        a = FragmentMaps(sf, cfg, 0, split).batch([0, 1, 2, 3], 0)[0]
        b = FragmentMaps(sf, clean_cfg, 0, split).batch([0, 1, 2, 3], 0)[0]
        assert torch.equal(a.patterson, b.patterson)

    d = d_spacings(aug.cell, aug.hkl)
    exact = np.abs(clean.f.detach().numpy()) ** 2
    fractions, noise, cuts = [], [], 0
    for j in range(len(idx)):
        inten = _intensities(aug, j)
        left_out = np.abs(inten) < 1e-6 * np.abs(inten).max()
        kept = ~left_out
        scale = np.median(inten[kept] / exact[j][kept])
        ratio = np.sqrt(inten[kept] / scale / exact[j][kept])  # |1 + s e| per reflection
        noise.append(np.std(ratio))
        cuts += int(left_out[d > 8.0].all())  # a cut (drawn in 4-8 A) leaves these out
        fractions.append(left_out[d < 4.0].mean())  # never cut: random omissions only
    assert 0.0 <= min(fractions) and max(fractions) < 0.3 + 0.1
    assert np.mean(fractions) == pytest.approx(0.15, abs=0.08)
    assert max(noise) < 0.2 * 1.2 and np.mean(noise) == pytest.approx(0.1, abs=0.06)
    assert 2 <= cuts <= 10  # about half the examples


def test_missing_reflections_match_numpy_patterson(train_shards: Path):
    """With only missing reflections, the degraded Patterson is the one implementation's
    Patterson of the kept intensities (pattersolve.fourier.patterson_map), up to scaling."""
    frags = load_split(train_shards, "train", 4)
    ds = FragmentMaps(frags, _data(missing_fraction=0.5), 0, "train")
    g = ds.batch([0, 1, 2, 3], epoch=1)[0]
    maker = ds.maker(tuple(float(x) for x in (g.cell.a, g.cell.b, g.cell.c)))
    for j, pos in enumerate(g.positions):
        factor = ds._intensity_factor(maker, pos, 1)
        assert 0.0 < (factor == 0).mean() < 0.5
        inten = np.abs(g.f[j].detach().numpy().astype(np.complex128)) ** 2 * factor
        ref = scale_to_unit_range(patterson_map(g.hkl, inten, g.patterson.shape[2:],
                                                g.cell.volume))
        assert np.allclose(g.patterson[j, 0].numpy(), ref, atol=2e-5)


@pytest.mark.slow
def test_training_with_degraded_inputs_runs_and_resumes(tmp_path: Path, train_shards: Path):
    base = T.load_config(CONFIGS / "tiny.toml")
    cfg = replace(base, shards=str(train_shards), max_steps=12, eval_every=6,
                  checkpoint_every=4, log_every=4,
                  data=replace(base.data, amplitude_noise=0.1, missing_fraction=0.2))
    full = T.fit(cfg, tmp_path / "full", progress=False)
    half = T.fit(cfg, tmp_path / "half", stop_at=6, progress=False)
    resumed = T.fit(cfg, tmp_path / "half", resume=True, progress=False)
    assert full.step == resumed.step == 12 and half.step == 6
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "full" / T.CHECKPOINT)), \
        load_file(str(tmp_path / "half" / T.CHECKPOINT))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved = T.config_for_run(tmp_path / "full")
    assert saved.data.amplitude_noise == 0.1 and saved.data.missing_fraction == 0.2
