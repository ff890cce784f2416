"""Geometry of ViTDet's non-overlapping window attention, as pure functions on token grids.

ViTDet (Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection", arXiv 2203.16527, sec. 3)
keeps a plain ViT's weights and changes only which tokens attend to which: most blocks attend inside
`window x window` patches of the token grid, a few evenly spaced blocks attend globally and carry information
across windows. The grid is padded to a multiple of the window first and cropped back after, as in detectron2's
`window_partition` / `window_unpartition`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a token grid `[B, H, W, C]` into windows `[B * nH * nW, window * window, C]`.

    The grid is zero-padded at the bottom and right to `(Hp, Wp)`, multiples of `window`, which are returned so
    that `window_unpartition` can undo the split. Windows are ordered image by image, then row-major.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    B, H, W, C = x.shape
    pad_h, pad_w = -H % window, -W % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window, window, Wp // window, window, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`: `[B * nH * nW, window * window, C]` -> `[B, H, W, C]`, padding removed."""
    Hp, Wp = padded_hw
    H, W = hw
    n_h, n_w = Hp // window, Wp // window
    B = windows.shape[0] // (n_h * n_w)
    x = windows.view(B, n_h, n_w, window, window, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :]
    return x


def default_global_blocks(depth: int) -> list[int]:
    """ViTDet's evenly spaced global blocks, scaled to `depth`: 2, 5, 8, 11 of 12 (ViT-B); 5, 11, 17, 23 of 24.

    ViTDet uses four global blocks, the last of each quarter of the network, so the neck always comes from a
    global block. Shallow networks get one global block per three blocks (at least one, the last).
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    n = min(4, max(1, depth // 3))
    return [(i + 1) * depth // n - 1 for i in range(n)]


def check_global_blocks(blocks: list[int], depth: int) -> list[int]:
    """Sorted, de-duplicated global block indices; an index outside `0..depth-1` is a `ValueError` naming it."""
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise ValueError(f"global block index(es) {bad} are outside the backbone's blocks 0..{depth - 1}")
    return sorted(set(blocks))
