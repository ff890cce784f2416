"""ResNet v1 species classifier, weight-compatible with birder's `resnet_v1_*` networks.

Why a CNN next to the ViT: a species classifier trained from random init on a few hundred box crops must learn
from a few hundred optimizer steps. A ViT has no built-in notion of locality and spends those steps finding it (a
small ViT stayed near chance on `birddet synth --species hard` after 5 CPU minutes), while a convolution starts
with it and learns field marks in about a minute (docs/species-classifier.md has the measurements). Detection
stays on the ViT backbone; this network is for `birddet train-classifier` and the second stage of predict.

Parameter names follow birder's `ResNet_v1` exactly (`stem.0.0`, `body.stage{i}.{j}.block1.*`, `block2.*`,
`classifier`), built from torchvision's `Conv2dNormActivation`, so a file written here loads in birder with
`load_model("resnet_v1_18", ...)` and the file's `config` (units, widths), and gives the same logits.

Reference: "Deep Residual Learning for Image Recognition" (He et al., arXiv 1512.03385); the zero-initialised last
norm of each residual branch is from "Bag of Tricks for Image Classification" (He et al., arXiv 1812.01187).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

#: The birder network every ResNet file of birddet is registered under; its `config` overrides the widths/depths.
BIRDER_RESNET = "resnet_v1_18"


@dataclass(frozen=True)
class ResNetConfig:
    """birder's `ResNet_v1` config: `filter_list[0]` is the stem width, then one width and block count per stage."""

    filter_list: tuple[int, ...] = (64, 64, 128, 256, 512)
    units: tuple[int, ...] = (2, 2, 2, 2)
    bottle_neck: bool = False

    def birder_config(self) -> dict[str, object]:
        """The `config` a birder file needs so that `load_model(BIRDER_RESNET, ...)` builds this network."""
        return {"bottle_neck": self.bottle_neck, "filter_list": list(self.filter_list), "units": list(self.units)}


class ResidualBlock(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block; `block2` is the shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bottle_neck: bool) -> None:
        super().__init__()
        if bottle_neck:
            mid = out_channels // 4
            self.block1 = nn.Sequential(
                Conv2dNormActivation(in_channels, mid, kernel_size=1, stride=1, padding=0, bias=False),
                Conv2dNormActivation(mid, mid, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.Conv2d(mid, out_channels, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.block1 = nn.Sequential(
                Conv2dNormActivation(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        if in_channels == out_channels and stride == 1:
            self.block2: nn.Module = nn.Identity()
        else:
            self.block2 = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, padding=0, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)
        self.se = nn.Identity()  # birder's squeeze-excitation slot (off in resnet_v1); parameter-free

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.se(self.block1(x)) + self.block2(x))


class ResNet(nn.Module):
    """ResNet v1 classifier: 7x7 stem and max pool (stride 4), stages at strides 4-32, global average pool.

    - `forward(x)` -> logits `[B, num_classes]` (the embedding when `num_classes == 0`);
    - `embedding(x)` -> the pooled features `[B, filter_list[-1]]`.

    Any input size works (the pool is global); `image_size` is the size the network is trained and run at, which
    a birder file records in its signature.
    """

    def __init__(self, cfg: ResNetConfig, num_classes: int, image_size: tuple[int, int] = (224, 224)) -> None:
        super().__init__()
        if len(cfg.units) + 1 != len(cfg.filter_list):
            raise ValueError(f"a ResNet needs one more width than stages, got {cfg.filter_list} and {cfg.units}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.image_size = tuple(image_size)
        self.patch_size = 1  # no grid to align to: any crop side works
        widths = cfg.filter_list
        self.stem = nn.Sequential(
            Conv2dNormActivation(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, count in enumerate(cfg.units):
            stride = 1 if i == 0 else 2
            blocks = [ResidualBlock(widths[i], widths[i + 1], stride, cfg.bottle_neck)]
            blocks += [ResidualBlock(widths[i + 1], widths[i + 1], 1, cfg.bottle_neck) for _ in range(1, count)]
            stages[f"stage{i + 1}"] = nn.Sequential(*blocks)
        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.classifier: nn.Module = nn.Linear(widths[-1], num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Each residual branch starts as the identity (its last norm's scale at zero): a deep net then trains like
        # a shallow one in its first steps, which is most of a short CPU run.
        for m in self.modules():
            if isinstance(m, ResidualBlock):
                nn.init.zeros_(m.block1[-1].weight)
        if isinstance(self.classifier, nn.Linear):
            nn.init.zeros_(self.classifier.weight)
            nn.init.zeros_(self.classifier.bias)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.body(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embedding(x))

    # -- training helpers (the ViT's interface) ----------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Residual blocks; the optimizer's layer-wise LR decay reads it (and applies no decay to a ResNet)."""
        return sum(self.cfg.units)

    def freeze(self, num_blocks: int) -> None:
        """Freeze the stem and the first `num_blocks` residual blocks; negative leaves everything trainable.

        Frozen blocks keep their batch-norm statistics too (eval mode is forced in `train`)."""
        if num_blocks < 0:
            return
        blocks = [b for stage in self.body for b in stage]
        if num_blocks > len(blocks):
            raise ValueError(f"cannot freeze {num_blocks} blocks: the network has {len(blocks)}")
        self._frozen = [self.stem, *blocks[:num_blocks]]
        for module in self._frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        for module in getattr(self, "_frozen", ()):
            module.eval()  # a frozen part's batch-norm statistics must not drift
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Not offered for the CNN: its activations are small at crop sizes; only `False` is accepted."""
        if enable:
            raise ValueError("grad checkpointing is implemented for the ViT only; set grad_checkpointing: false")
