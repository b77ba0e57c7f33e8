"""The network: Pan et al., IUCrJ 2023, as a config dataclass and a torch module.

Patterson map in, density out, both on the same grid, both scaled to ``[-1, 1]``:

* encoding: two conv(k) + BN + ReLU, MaxPool 2;
* learning features: ``n_blocks`` residual blocks, each conv(k)+BN+ReLU, conv(k)+BN,
  optional squeeze-excitation, add skip, ReLU; then nearest x2 upsampling;
* decoding: conv(k_dec)+BN+ReLU, conv(k_dec) -> 1 channel, tanh.

Circular padding in the encoder and residual blocks (the Patterson is periodic), kaiming
normal initialisation. ``unet_skip`` concatenates the full-resolution encoder features into
the decoder (an improvement over the paper, off for the paper's configs). Fully
convolutional: any even grid size works.

This module imports torch at import time; import it only on the torch path.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of the Patterson-to-density network.

    The paper's small network is ``NetworkConfig(enc_channels=23, feat_channels=25,
    n_blocks=7)``; its larger one ``(25, 30, 8, squeeze_excitation=True)``. oneDNN rounds
    channel counts up to multiples of 16 on CPU, so our own configs use those.
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


class ResidualBlock(nn.Module):
    """conv + BN + ReLU, conv + BN, [SE], add skip, ReLU."""

    def __init__(self, channels: int, cfg: NetworkConfig) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, cfg.kernel, cfg.circular)
        self.bn1 = nn.BatchNorm3d(channels)
        self.conv2 = _conv(channels, channels, cfg.kernel, cfg.circular)
        self.bn2 = nn.BatchNorm3d(channels)
        self.se = (SqueezeExcitation(channels, cfg.se_reduction)
                   if cfg.squeeze_excitation else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
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
