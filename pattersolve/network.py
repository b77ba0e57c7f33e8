"""The network: Pan et al., IUCrJ 2023, as a config dataclass and a torch module.

Patterson map in, density out, both on the same grid, both scaled to ``[-1, 1]``:

* encoding: two conv(k) + BN + ReLU, MaxPool 2;
* learning features: ``n_blocks`` residual blocks, each conv(k)+BN+ReLU, conv(k)+BN,
  optional squeeze-excitation, add skip, ReLU; then nearest x2 upsampling;
* decoding: conv(k_dec)+BN+ReLU, conv(k_dec) -> 1 channel, tanh.

Circular padding in the encoder and residual blocks (the Patterson is periodic), kaiming
normal initialisation. ``unet_skip`` concatenates the full-resolution encoder features into
the decoder (an improvement over the paper, off for the paper's configs). ``fourier_modes``
adds a global branch to every residual block (:class:`SpectralConv`, a Fourier neural operator
layer on the lowest Miller-index modes): a Patterson has no spatial locality, and a 5^3 kernel
sees ~6 A of a 12 A cell. Fully convolutional: any even grid size works.

This module imports torch at import time; import it only on the torch path.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of the Patterson-to-density network.

    The paper's small network is ``NetworkConfig(enc_channels=23, feat_channels=25,
    n_blocks=7)``; its larger one ``(25, 30, 8, squeeze_excitation=True)``. oneDNN rounds
    channel counts up to multiples of 16 on CPU, so our own configs use those.
    ``fourier_modes = m > 0`` gives every residual block a :class:`SpectralConv` over the
    modes ``[-m, m]^3`` of the pooled grid (0: off, the paper's network).
    """

    enc_channels: int = 16
    feat_channels: int = 16
    n_blocks: int = 4
    kernel: int = 5
    dec_kernel: int = 5
    squeeze_excitation: bool = True
    se_reduction: int = 2
    circular: bool = True
    unet_skip: bool = False
    fourier_modes: int = 0

    def to_json(self) -> str:
        """JSON text (stored in the weights' metadata)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NetworkConfig:
        """Parse :meth:`to_json` output; unknown keys are an error."""
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown network config keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def paper_small(cls) -> NetworkConfig:
        """The paper's ~3 M parameter network (23/25 channels, 7 blocks, 7^3, SE)."""
        return cls(enc_channels=23, feat_channels=25, n_blocks=7, kernel=7, dec_kernel=5,
                   squeeze_excitation=True)

    @classmethod
    def paper_large(cls) -> NetworkConfig:
        """The paper's larger network (25/30 channels, 8 blocks, 7^3, SE)."""
        return cls(enc_channels=25, feat_channels=30, n_blocks=8, kernel=7, dec_kernel=5,
                   squeeze_excitation=True)


def _conv(cin: int, cout: int, k: int, circular: bool) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, k, padding=k // 2,
                     padding_mode="circular" if circular else "zeros")


class SqueezeExcitation(nn.Module):
    """Channel attention: global average pool, bottleneck MLP, sigmoid gate."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv3d(channels, hidden, 1)
        self.fc2 = nn.Conv3d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3, 4), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


def _dft_basis(n: int, modes: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``2 pi h x / n`` for ``h`` in ``[-modes, modes]``, ``x`` in ``[0, n)``.

    Built from the input's grid size on every call (the ONNX trace keeps ``n`` dynamic;
    tests/test_network.py runs an export traced on 8^3 on other grids).
    """
    x = torch.arange(n, dtype=like.dtype, device=like.device)
    h = torch.arange(-modes, modes + 1, dtype=like.dtype, device=like.device)
    angle = (2.0 * math.pi) * h[:, None] * x[None, :] / n
    return torch.cos(angle), torch.sin(angle)


class SpectralConv(nn.Module):
    """A global circular convolution on the lowest Fourier modes (Li et al., ICLR 2021).

    ``y(x) = Re sum_h W(h) X(h) exp(+2 pi i h.x / n)`` with ``X(h) = (1/N) sum_x x(x)
    exp(-2 pi i h.x / n)``, ``h`` in ``[-m, m]^3`` (Miller indices of the map's cell), and
    ``W(h)`` a learned complex ``channels x channels`` matrix per mode. Translation
    equivariant like a circular convolution, but its kernel spans the whole cell. The
    transforms are explicit cos/sin sums built from the input's grid size, so the layer works
    on any grid and exports to ONNX (opset 17) without an FFT operator. On grids with
    ``n <= 2 m`` the highest modes alias onto lower ones (the layer stays well defined).

    Parameters
    ----------
    channels
        Input and output channels.
    modes
        ``m``: the largest ``|h|``, ``|k|``, ``|l|`` kept.
    """

    def __init__(self, channels: int, modes: int) -> None:
        super().__init__()
        if modes < 1:
            raise ValueError("SpectralConv needs modes >= 1")
        self.modes = modes
        k = 2 * modes + 1
        scale = 0.5 / math.sqrt(channels)
        self.weight_re = nn.Parameter(scale * torch.randn(channels, channels, k, k, k))
        self.weight_im = nn.Parameter(scale * torch.randn(channels, channels, k, k, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n1, n2, n3 = x.shape[2], x.shape[3], x.shape[4]
        c1, s1 = _dft_basis(n1, self.modes, x)
        c2, s2 = _dft_basis(n2, self.modes, x)
        c3, s3 = _dft_basis(n3, self.modes, x)
        # forward transform, exp(-i angle) = cos - i sin, one axis at a time
        re = torch.einsum("bcxyz,hx->bchyz", x, c1)
        im = -torch.einsum("bcxyz,hx->bchyz", x, s1)
        re, im = (torch.einsum("bchyz,ky->bchkz", re, c2)
                  + torch.einsum("bchyz,ky->bchkz", im, s2),
                  torch.einsum("bchyz,ky->bchkz", im, c2)
                  - torch.einsum("bchyz,ky->bchkz", re, s2))
        re, im = (torch.einsum("bchkz,lz->bchkl", re, c3)
                  + torch.einsum("bchkz,lz->bchkl", im, s3),
                  torch.einsum("bchkz,lz->bchkl", im, c3)
                  - torch.einsum("bchkz,lz->bchkl", re, s3))
        norm = 1.0 / (n1 * n2 * n3)
        re, im = re * norm, im * norm
        # a complex channel mixing per mode
        yr = (torch.einsum("bihkl,iohkl->bohkl", re, self.weight_re)
              - torch.einsum("bihkl,iohkl->bohkl", im, self.weight_im))
        yi = (torch.einsum("bihkl,iohkl->bohkl", re, self.weight_im)
              + torch.einsum("bihkl,iohkl->bohkl", im, self.weight_re))
        # inverse transform, exp(+i angle) = cos + i sin; the real part at the end
        yr, yi = (torch.einsum("bohkl,lz->bohkz", yr, c3)
                  - torch.einsum("bohkl,lz->bohkz", yi, s3),
                  torch.einsum("bohkl,lz->bohkz", yr, s3)
                  + torch.einsum("bohkl,lz->bohkz", yi, c3))
        yr, yi = (torch.einsum("bohkz,ky->bohyz", yr, c2)
                  - torch.einsum("bohkz,ky->bohyz", yi, s2),
                  torch.einsum("bohkz,ky->bohyz", yr, s2)
                  + torch.einsum("bohkz,ky->bohyz", yi, c2))
        return (torch.einsum("bohyz,hx->boxyz", yr, c1)
                - torch.einsum("bohyz,hx->boxyz", yi, s1))


class ResidualBlock(nn.Module):
    """conv [+ spectral conv] + BN + ReLU, conv + BN, [SE], add skip, ReLU."""

    def __init__(self, channels: int, cfg: NetworkConfig) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, cfg.kernel, cfg.circular)
        self.spectral = (SpectralConv(channels, cfg.fourier_modes)
                         if cfg.fourier_modes > 0 else None)
        self.bn1 = nn.BatchNorm3d(channels)
        self.conv2 = _conv(channels, channels, cfg.kernel, cfg.circular)
        self.bn2 = nn.BatchNorm3d(channels)
        self.se = (SqueezeExcitation(channels, cfg.se_reduction)
                   if cfg.squeeze_excitation else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        if self.spectral is not None:
            y = y + self.spectral(x)
        y = torch.relu(self.bn1(y))
        y = self.se(self.bn2(self.conv2(y)))
        return torch.relu(x + y)


class PattersonNet(nn.Module):
    """Patterson map ``(B, 1, nx, ny, nz)`` -> density ``(B, 1, nx, ny, nz)`` in ``[-1, 1]``.

    Grid sizes must be even (one 2x pooling, one 2x upsampling).
    """

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ce, cf = cfg.enc_channels, cfg.feat_channels
        self.enc = nn.Sequential(
            _conv(1, ce, cfg.kernel, cfg.circular), nn.BatchNorm3d(ce), nn.ReLU(),
            _conv(ce, cf, cfg.kernel, cfg.circular), nn.BatchNorm3d(cf), nn.ReLU(),
        )
        self.pool = nn.MaxPool3d(2)
        self.blocks = nn.Sequential(*[ResidualBlock(cf, cfg) for _ in range(cfg.n_blocks)])
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        cin = cf * 2 if cfg.unet_skip else cf
        pad = cfg.dec_kernel // 2
        self.dec = nn.Sequential(
            nn.Conv3d(cin, cf, cfg.dec_kernel, padding=pad,
                      padding_mode="circular" if cfg.circular else "zeros"),
            nn.BatchNorm3d(cf), nn.ReLU(),
            nn.Conv3d(cf, 1, cfg.dec_kernel, padding=pad,
                      padding_mode="circular" if cfg.circular else "zeros"),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        y = self.up(self.blocks(self.pool(e)))
        if self.cfg.unet_skip:
            y = torch.cat([y, e], dim=1)
        return torch.tanh(self.dec(y))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
