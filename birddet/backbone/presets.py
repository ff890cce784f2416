"""Named backbone architectures.

`vit_reg4_m16_rms_avg` is birder's published ViT-M/16 (the architecture of every registered weights file). The
smaller presets use the same code with less width and depth: `tiny` keeps tests fast on two CPU cores and
`small` makes the CPU quickstart train in minutes. They are architectures only; their weights start random.
"""

from __future__ import annotations

from birddet.backbone.vit import ViTConfig
from birddet.errors import InputError

PRESETS: dict[str, ViTConfig] = {
    "vit_reg4_m16_rms_avg": ViTConfig(num_layers=12, num_heads=8, hidden_dim=512, mlp_dim=2048),
    "vit_reg4_small16_rms_avg": ViTConfig(num_layers=4, num_heads=3, hidden_dim=192, mlp_dim=768),
    "vit_reg4_tiny16_rms_avg": ViTConfig(num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128),
}

DEFAULT_PRESET = "vit_reg4_m16_rms_avg"


def get_preset(name: str) -> ViTConfig:
    """The architecture registered under `name`; an unknown name lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown backbone preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


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
