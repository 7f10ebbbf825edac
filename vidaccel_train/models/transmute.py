"""Swap the plain ``nn.Conv3d`` layers of any model for PyTorchVideo's efficient blocks.

Uses PyTorchVideo's own mobile-CPU transmuter (pointwise, depthwise 3x3x3, 5x1x1 temporal and
1xkxk stem patterns), which copies the weights; the model computes the same numbers after.
"""

from __future__ import annotations

import collections

from torch import nn


def transmute(model: nn.Module) -> dict[str, int]:
    """Replace matching Conv3d layers of ``model`` in place; returns its efficient conv blocks, by type."""
    from pytorchvideo.accelerator.deployment.common.model_transmuter import transmute_model
    from pytorchvideo.accelerator.deployment.mobile_cpu import transmuter  # noqa: F401 - registers patterns
    from pytorchvideo.layers.accelerator.mobile_cpu import convolutions

    transmute_model(model, target_device="mobile_cpu")
    blocks = tuple(
        getattr(convolutions, name)
        for name in ("Conv3dPwBnAct", "Conv3d3x3x3DwBnAct", "Conv3d5x1x1BnAct", "Conv3dTemporalKernel1BnAct")
    )
    return dict(collections.Counter(type(m).__name__ for m in model.modules() if isinstance(m, blocks)))
