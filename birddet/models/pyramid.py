"""ViTDet's simple feature pyramid (Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection",
arXiv 2203.16527): a multi-scale pyramid built from the single stride-16 map of a plain ViT.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.convnext import LayerNorm2d


def _scale_stage(dim: int, scale: float) -> tuple[nn.Module, int]:
    """Resampling for one level and its output width (ViTDet section 3 / detectron2's SimpleFeaturePyramid)."""
    if scale == 4.0:
        return (
            nn.Sequential(
                nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
                LayerNorm2d(dim // 2, eps=1e-6),
                nn.GELU(),
                nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
            ),
            dim // 4,
        )
    if scale == 2.0:
        return nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2), dim // 2
    if scale == 1.0:
        return nn.Identity(), dim
    if scale == 0.5:
        return nn.MaxPool2d(kernel_size=2, stride=2), dim
    raise ValueError(f"unsupported pyramid scale factor {scale}; use 4.0, 2.0, 1.0 or 0.5")


class SimpleFeaturePyramid(nn.Module):
    """Stride-`in_stride` map [B, C, H/s, W/s] -> OrderedDict of 256-channel maps `p2`..`p6` (strides 4..64).

    Each level: resample (deconv-LN-GELU-deconv / deconv / identity / max-pool), then a 1x1 and a 3x3 conv, each
    followed by channel LayerNorm; `p6` is a stride-2 subsampling of the coarsest level, as in ViTDet and FPN.
    Level names and strides are data (`strides`), and `out_channels` is what torchvision's detectors read.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        in_stride: int = 16,
        out_channels: int = 256,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        top_block: bool = True,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.strides: dict[str, int] = {}
        self.stages = nn.ModuleDict()
        for scale in scale_factors:
            resample, width = _scale_stage(in_channels, float(scale))
            stride = int(in_stride / scale)
            name = f"p{int(math.log2(stride))}"
            self.stages[name] = nn.Sequential(
                resample,
                nn.Conv2d(width, out_channels, kernel_size=1, bias=False),
                LayerNorm2d(out_channels, eps=1e-6),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
                LayerNorm2d(out_channels, eps=1e-6),
            )
            self.strides[name] = stride
        self.top_block = top_block
        if top_block:
            last = max(self.strides.values())
            self.strides[f"p{int(math.log2(last)) + 1}"] = last * 2

    @property
    def level_names(self) -> list[str]:
        return list(self.strides)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = OrderedDict((name, stage(x)) for name, stage in self.stages.items())
        if self.top_block:
            coarsest = out[next(reversed(out))]
            out[self.level_names[-1]] = F.max_pool2d(coarsest, kernel_size=1, stride=2)
        return out
