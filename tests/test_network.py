"""The network's global (Fourier) layer: against an FFT, under translation, through ONNX."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pattersolve.network import NetworkConfig, PattersonNet, SpectralConv  # noqa: E402


def _reference(layer: SpectralConv, x: np.ndarray) -> np.ndarray:
    """The same layer with numpy's FFT: mix the modes [-m, m]^3 of fftn(x) / N, invert."""
    n = x.shape[2:]
    spectrum = np.fft.fftn(x, axes=(2, 3, 4)) / np.prod(n)
    weight = (layer.weight_re.detach().numpy().astype(np.float64)
              + 1j * layer.weight_im.detach().numpy().astype(np.float64))
    out = np.zeros((x.shape[0], weight.shape[1], *n), complex)
    m = layer.modes
    for a, h in enumerate(range(-m, m + 1)):
        for b, k in enumerate(range(-m, m + 1)):
            for c, l in enumerate(range(-m, m + 1)):
                idx = (slice(None), slice(None), h % n[0], k % n[1], l % n[2])
                out[idx] += spectrum[idx] @ weight[:, :, a, b, c]
    return (np.fft.ifftn(out, axes=(2, 3, 4)) * np.prod(n)).real


@pytest.mark.parametrize("shape", [(10, 12, 8), (7, 9, 16)])
def test_spectral_conv_is_a_truncated_fourier_multiplier(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    layer = SpectralConv(3, 3)
    x = torch.randn(2, 3, *shape)
    with torch.no_grad():
        got = layer(x).numpy()
    want = _reference(layer, x.numpy().astype(np.float64))
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
    assert np.abs(want).max() > 0.1  # not trivially zero


def test_spectral_conv_commutes_with_cell_translations() -> None:
    torch.manual_seed(1)
    layer = SpectralConv(2, 2)
    x = torch.randn(1, 2, 8, 10, 6)
    with torch.no_grad():
        shifted = layer(torch.roll(x, (3, -2, 5), (2, 3, 4)))
        want = torch.roll(layer(x), (3, -2, 5), (2, 3, 4))
    assert (shifted - want).abs().max() < 1e-5


def test_spectral_branch_reaches_across_the_cell() -> None:
    """A 5^3 conv network's output at a voxel ignores input far away; with modes it does not."""
    torch.manual_seed(2)
    outputs = {}
    for modes in (0, 2):
        net = PattersonNet(NetworkConfig(8, 8, 1, 3, 3, False, 2, True, False, modes)).eval()
        x = torch.zeros(1, 1, 24, 24, 24)
        with torch.no_grad():
            base = net(x)
            x[0, 0, 12, 12, 12] = 1.0
            outputs[modes] = (net(x) - base)[0, 0, 0, 0, 0].abs().item()
    assert outputs[0] == 0.0  # receptive field ~ 14 voxels: the far corner never sees it
    assert outputs[2] > 1e-6


def test_old_network_configs_load_without_the_new_key() -> None:
    old = json.loads(NetworkConfig().to_json())
    del old["fourier_modes"]
    cfg = NetworkConfig.from_json(json.dumps(old))
    assert cfg.fourier_modes == 0
    assert not any("spectral" in k for k in PattersonNet(cfg).state_dict())


def test_fourier_network_exports_to_onnx_for_any_grid(tmp_path: Path) -> None:
    """Traced on 8^3, run by ONNX Runtime on other grids: the grid size is not baked in."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from pattersolve_train.export import fp16_initializers

    torch.manual_seed(3)
    net = PattersonNet(NetworkConfig(8, 8, 2, 3, 3, True, 2, True, True, 2))
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())  # as shipped: fp16 weights
    net.eval()
    path = tmp_path / "m.onnx"
    dyn = {0: "batch", 2: "nu", 3: "nv", 4: "nw"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 8, 8, 8),), str(path), dynamo=False,
                          opset_version=17, input_names=["patterson"],
                          output_names=["density"], do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE,
                          dynamic_axes={"patterson": dyn, "density": dyn})
    proto = onnx.load(str(path))
    fp16_initializers(proto)
    onnx.checker.check_model(proto)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    for shape in [(1, 1, 8, 8, 8), (2, 1, 12, 16, 20)]:
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        got = sess.run(["density"], {"patterson": x})[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-4
