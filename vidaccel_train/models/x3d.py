"""X3D built from PyTorchVideo's mobile-CPU efficient blocks, with stages set by config.

With the zoo's stage settings the module tree (and so the state_dict keys) is exactly that
of ``pytorchvideo.models.accelerator.mobile_cpu.efficient_x3d.EfficientX3d``, so published
checkpoints load unchanged; other settings give custom, smaller or larger, networks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pytorchvideo.layers.accelerator.mobile_cpu.activation_functions import supported_act_functions
from pytorchvideo.layers.accelerator.mobile_cpu.convolutions import (
    Conv3d5x1x1BnAct,
    Conv3dPwBnAct,
    Conv3dTemporalKernel1BnAct,
)
from pytorchvideo.layers.accelerator.mobile_cpu.fully_connected import FullyConnected
from pytorchvideo.layers.accelerator.mobile_cpu.pool import AdaptiveAvgPool3dOutSize1
from pytorchvideo.models.accelerator.mobile_cpu.residual_blocks import X3dBottleneckBlock
from torch import nn


@dataclass(frozen=True)
class StageSpec:
    """``depth`` bottleneck blocks, the first striding by 2 in space."""

    depth: int
    mid_channels: int
    out_channels: int


def x3d_stages(expansion: str) -> list[StageSpec]:
    """The stage layout of PyTorchVideo's efficient X3D (XS, S and M share it; L is deeper)."""
    deep = expansion.upper() == "L"
    return [
        StageSpec(5 if deep else 3, 54, 24),
        StageSpec(10 if deep else 5, 108, 48),
        StageSpec(25 if deep else 11, 216, 96),
        StageSpec(15 if deep else 7, 432, 192),
    ]


class EfficientX3dNet(nn.Module):
    """X3D classifier: stem, residual stages ``s2..``, pointwise head, global pool, projection.

    ``forward`` takes ``(B, 3, T, H, W)`` and returns ``(B, num_classes)`` logits.
    """

    def __init__(
        self,
        num_classes: int,
        stages: Sequence[StageSpec | dict],
        stem_channels: int = 24,
        head_channels: int = 432,
        fc_channels: int = 2048,
        se_ratio: float = 0.0625,
        activations: Sequence[str] = ("relu", "swish", "relu"),
        dropout: float = 0.5,
        init: str = "x3d",
    ):
        super().__init__()
        if init not in ("x3d", "pytorch"):
            raise ValueError(f"init must be 'x3d' or 'pytorch', got '{init}'")
        stages = [s if isinstance(s, StageSpec) else StageSpec(**s) for s in stages]
        unknown = [a for a in activations if a not in supported_act_functions]
        if unknown:
            raise ValueError(f"unsupported activations {unknown}; choose from {sorted(supported_act_functions)}")
        self.s1 = nn.Sequential(
            OrderedDict(
                pathway0_stem_conv_xy=Conv3dTemporalKernel1BnAct(
                    3,
                    stem_channels,
                    bias=False,
                    groups=1,
                    spatial_kernel=3,
                    spatial_stride=2,
                    spatial_padding=1,
                    activation="identity",
                    use_bn=False,
                ),
                pathway0_stem_conv=Conv3d5x1x1BnAct(
                    stem_channels, stem_channels, bias=False, groups=stem_channels, use_bn=True
                ),
            )
        )
        in_channels = stem_channels
        for index, stage in enumerate(stages, start=2):
            blocks = OrderedDict()
            for block in range(stage.depth):
                blocks[f"pathway0_res{block}"] = X3dBottleneckBlock(
                    in_channels=in_channels if block == 0 else stage.out_channels,
                    mid_channels=stage.mid_channels,
                    out_channels=stage.out_channels,
                    use_residual=True,
                    spatial_stride=2 if block == 0 else 1,
                    se_ratio=se_ratio if block % 2 == 0 else 0,
                    act_functions=tuple(activations),
                    use_bn=(True, True, True),
                )
            setattr(self, f"s{index}", nn.Sequential(blocks))
            in_channels = stage.out_channels
        self.num_stages = len(stages)
        self.head = nn.Sequential(
            OrderedDict(
                conv_5=Conv3dPwBnAct(in_channels, head_channels, bias=False, use_bn=True),
                avg_pool=AdaptiveAvgPool3dOutSize1(),
                lin_5=Conv3dPwBnAct(head_channels, fc_channels, bias=False, use_bn=False),
            )
        )
        if dropout > 0:
            self.dropout = nn.Dropout(dropout)
        self.projection = FullyConnected(fc_channels, num_classes, bias=True)
        if init == "x3d":
            init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(1, self.num_stages + 2):
            x = getattr(self, f"s{index}")(x)
        x = self.head(x)  # (B, C, 1, 1, 1)
        x = x.flatten(1)
        if hasattr(self, "dropout"):
            x = self.dropout(x)
        return self.projection(x)


@torch.no_grad()
def init_weights(net: EfficientX3dNet) -> None:
    """The X3D recipe's initialisation: He-normal convolutions, a small classifier, and each
    residual branch's last BatchNorm at zero so every block starts as its shortcut.

    X3D-XS learns faster from scratch with it; the shallow x3d_tiny learns faster with
    PyTorch's defaults and keeps them (``init="pytorch"``; the figures: docs/benchmarks.md).
    Loaded weights replace either.
    """
    for module in net.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)
    for block in net.modules():
        if isinstance(block, X3dBottleneckBlock) and block._use_residual:
            nn.init.zeros_(block.layers.conv_2.kernel.bn.weight)
