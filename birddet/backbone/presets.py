"""Named backbone architectures.

`vit_reg4_m16_rms_avg` is birder's published ViT-M/16 (the architecture of every registered weights file). The
smaller presets use the same code with less width and depth: `tiny` keeps tests fast on two CPU cores and
`small` makes the CPU quickstart train in minutes. They are architectures only; their weights start random.

`RESNET_PRESETS` adds birder's ResNet v1 family (`birddet.backbone.resnet`) for species classifiers trained
from random init, where a CNN learns from a few hundred crops in a minute and a ViT does not; detection is ViT-only.
"""

from __future__ import annotations

from torch import nn

from birddet.backbone.resnet import ResNet, ResNetConfig
from birddet.backbone.vit import ViT, ViTConfig
from birddet.errors import InputError

PRESETS: dict[str, ViTConfig] = {
    "vit_reg4_m16_rms_avg": ViTConfig(num_layers=12, num_heads=8, hidden_dim=512, mlp_dim=2048),
    "vit_reg4_small16_rms_avg": ViTConfig(num_layers=4, num_heads=3, hidden_dim=192, mlp_dim=768),
    "vit_reg4_tiny16_rms_avg": ViTConfig(num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128),
}

#: ResNet v1 species classifiers: birder's registered resnet_v1_18/34, and `resnet_v1_10` (one basic block per
#: stage), the recipe of configs/species_from_scratch.yaml: 5M parameters, measured fastest to learn on a CPU.
RESNET_PRESETS: dict[str, ResNetConfig] = {
    "resnet_v1_10": ResNetConfig(units=(1, 1, 1, 1)),
    "resnet_v1_18": ResNetConfig(units=(2, 2, 2, 2)),
    "resnet_v1_34": ResNetConfig(units=(3, 4, 6, 3)),
}

DEFAULT_PRESET = "vit_reg4_m16_rms_avg"


def get_preset(name: str) -> ViTConfig:
    """The ViT architecture registered under `name`; an unknown name lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        hint = " (a species-classifier CNN: the detector's backbone is a ViT)" if name in RESNET_PRESETS else ""
        raise InputError(
            f"unknown backbone preset {name!r}{hint}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None


def get_classifier_preset(name: str) -> ViTConfig | ResNetConfig:
    """The architecture of a species classifier registered under `name` (a ViT or a ResNet preset)."""
    if name in RESNET_PRESETS:
        return RESNET_PRESETS[name]
    if name in PRESETS:
        return PRESETS[name]
    known = ", ".join(sorted([*PRESETS, *RESNET_PRESETS]))
    raise InputError(f"unknown classifier preset {name!r}; known presets: {known}")


def build_network(cfg: ViTConfig | ResNetConfig, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """A classifier network for an architecture, at `image_size`: `ViT` or `ResNet`."""
    if isinstance(cfg, ResNetConfig):
        return ResNet(cfg, num_classes=num_classes, image_size=image_size)
    return ViT(cfg, num_classes=num_classes, image_size=image_size)


def find_resnet_preset(cfg: ResNetConfig) -> str | None:
    """The ResNet preset with exactly these widths, depths and block type."""
    return next((name for name, preset in RESNET_PRESETS.items() if preset == cfg), None)


def find_preset(*, hidden_dim: int, num_layers: int, mlp_dim: int, patch_size: int, num_reg_tokens: int) -> str | None:
    """The preset whose shapes match a state dict (the head count is not visible in weights, so presets carry it)."""
    for name, cfg in PRESETS.items():
        if (cfg.hidden_dim, cfg.num_layers, cfg.mlp_dim, cfg.patch_size, cfg.num_reg_tokens) == (
            hidden_dim,
            num_layers,
            mlp_dim,
            patch_size,
            num_reg_tokens,
        ):
            return name
    return None
