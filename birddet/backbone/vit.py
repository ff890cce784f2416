"""ViT with register tokens and RMSNorm, weight-compatible with birder's `vit_reg4_m16_rms_avg`.

The network only computes: reading birder files, hashes and downloads live in `weights.py`, named sizes in
`presets.py`. Parameter names follow birder's state dict exactly (`reg_tokens`, `pos_embedding`, `conv_proj.*`,
`encoder.block.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.0,mlp.3}`, `norm`, `classifier`), so a published file
loads with `strict=True` and gives birder's numbers.

References: "An Image is Worth 16x16 Words" (arXiv 2010.11929); "Vision Transformers Need Registers"
(arXiv 2309.16588); ViTDet's use of a plain ViT's last feature map and its window attention (arXiv 2203.16527).

Window attention (`ViT.set_window_attention`) changes which tokens attend to which, never the parameters: the
same state dict runs global (birder's network, the default) or windowed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from birddet.backbone.windows import check_global_blocks, default_global_blocks, window_partition, window_unpartition


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a ViT backbone. The defaults are birder's `vit_reg4_m16_rms_avg` (ViT-M/16)."""

    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 8
    hidden_dim: int = 512
    mlp_dim: int = 2048
    num_reg_tokens: int = 4
    norm_eps: float = 1e-6
    # birder resizes the position embedding in the forward pass with bicubic interpolation and no antialias.
    pos_embed_interpolation: str = "bicubic"
    pos_embed_antialias: bool = False

    def __post_init__(self) -> None:
        if self.hidden_dim % self.num_heads != 0:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")


class Attention(nn.Module):
    """Multi-head self-attention on [B, N, C] tokens using PyTorch's fused scaled-dot-product kernel."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    # birder's MLP is torchvision's ops.MLP: Linear, GELU, Dropout, Linear, Dropout. Dropout is 0 for these models;
    # the Identity placeholder keeps the second Linear at index 3 so state-dict keys stay `mlp.0` and `mlp.3`.
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    With `window_size > 0` (set by `Encoder.set_window_attention`) the block is one of ViTDet's windowed blocks:
    `forward_windowed` attends inside non-overlapping windows of the patch grid.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.hidden_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.hidden_dim, cfg.num_heads)
        self.norm2 = nn.RMSNorm(cfg.hidden_dim, eps=cfg.norm_eps)
        self.mlp = _mlp(cfg.hidden_dim, cfg.mlp_dim)
        self.window_size = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward_windowed(self, x: torch.Tensor, grid: tuple[int, int], num_prefix: int) -> torch.Tensor:
        """`[B, prefix + h*w, C]` -> same shape; patch tokens attend within `window_size` windows of the grid.

        Register tokens pass through unchanged. They are the network's global scratch space (Darcet et al.,
        arXiv 2309.16588): inside a window there is no global context for them to gather, and letting every window
        update its own copy would need a merge rule the pretrained network never saw. They rejoin attention in
        the next global block, holding what the previous global block wrote.

        Padding follows detectron2's ViTDet: the normalised grid is zero-padded to a multiple of the window before
        attention (pad tokens act as keys with only the qkv bias, never masked) and cropped after.
        """
        prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
        B, N, C = patches.shape
        h = self.norm1(patches).reshape(B, grid[0], grid[1], C)
        windows, padded = window_partition(h, self.window_size)
        h = window_unpartition(self.attn(windows), self.window_size, padded, grid).reshape(B, N, C)
        patches = patches + h
        patches = patches + self.mlp(self.norm2(patches))
        return torch.cat([prefix, patches], dim=1)


class Encoder(nn.Module):
    """The stack of blocks (`encoder.block.{i}` in birder's keys), with optional gradient checkpointing and
    ViTDet window attention (off by default: every block global, exactly birder's network)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.block = nn.Sequential(*[EncoderBlock(cfg) for _ in range(cfg.num_layers)])
        self.grad_checkpointing = False

    def set_window_attention(self, window_size: int, global_blocks: list[int] | None = None) -> list[int]:
        """Windowed attention of `window_size` patches in every block except `global_blocks` (default: ViTDet's
        evenly spaced four); `window_size=0` makes every block global again. Returns the global block indices."""
        if window_size < 0:
            raise ValueError(f"window_size must be 0 (global) or a positive number of patches, got {window_size}")
        depth = len(self.block)
        if window_size == 0:
            glob = list(range(depth))
        else:
            glob = check_global_blocks(default_global_blocks(depth) if global_blocks is None else global_blocks, depth)
        for i, blk in enumerate(self.block):
            blk.window_size = 0 if i in glob else window_size
        return glob

    @property
    def windowed(self) -> bool:
        return any(blk.window_size for blk in self.block)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None, num_prefix: int = 0) -> torch.Tensor:
        """`[B, prefix + h*w, C]` tokens through every block; windowed blocks need the patch `grid` (h, w)."""
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        if not self.windowed:
            if ckpt:
                for blk in self.block:
                    x = checkpoint(blk, x, use_reentrant=False)
                return x
            return self.block(x)
        if grid is None:
            raise ValueError("windowed blocks need the patch grid (h, w) of the tokens")
        for blk in self.block:
            if blk.window_size:
                args: tuple = (x, grid, num_prefix)
                fn = blk.forward_windowed
            else:
                args, fn = (x,), blk
            x = checkpoint(fn, *args, use_reentrant=False) if ckpt else fn(*args)
        return x


def resize_pos_embedding(
    pos_embedding: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int,
    *,
    mode: str = "bicubic",
    antialias: bool = False,
) -> torch.Tensor:
    """Interpolate a [1, prefix + h*w, C] position embedding over the patch grid; prefix tokens are kept as they are.

    Interpolation runs in float32 (as birder and timm do) and the result is cast back.
    """
    prefix = pos_embedding[:, :num_prefix_tokens]
    grid = pos_embedding[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode=mode, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embedding.dtype)
    return torch.cat([prefix, grid], dim=1)


class ViT(nn.Module):
    """ViT with register tokens, RMSNorm and average pooling (birder's `vit_reg4_*_rms_avg` family).

    Inputs are normalised images `[B, 3, H, W]` with H and W multiples of the patch size; any such size works (the
    position embedding is interpolated from the trained grid and cached per size for inference).

    - `forward(x)` -> logits `[B, num_classes]` (the embedding when `num_classes == 0`).
    - `embedding(x)` -> `[B, hidden_dim]`: mean of the normalised patch tokens (register tokens excluded).
    - `detection_features(x)` -> `{"neck": [B, hidden_dim, H/p, W/p]}`: the last block's patch tokens, before the
      final norm, exactly as birder's `detection_features` (which calls the map `stage1`).
    """

    feature_name = "neck"

    def __init__(self, cfg: ViTConfig, num_classes: int, image_size: tuple[int, int] = (384, 384)) -> None:
        super().__init__()
        p = cfg.patch_size
        if image_size[0] % p or image_size[1] % p:
            raise ValueError(f"image_size {image_size} must be a multiple of the patch size {p}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.image_size = tuple(image_size)
        self.patch_size = p
        self.hidden_dim = cfg.hidden_dim
        self.num_prefix_tokens = cfg.num_reg_tokens
        self.grid_size = (image_size[0] // p, image_size[1] // p)

        self.conv_proj = nn.Conv2d(3, cfg.hidden_dim, kernel_size=p, stride=p)
        self.reg_tokens = nn.Parameter(torch.zeros(1, cfg.num_reg_tokens, cfg.hidden_dim))
        seq_len = cfg.num_reg_tokens + self.grid_size[0] * self.grid_size[1]
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_len, cfg.hidden_dim).normal_(std=0.02))
        self.encoder = Encoder(cfg)
        self.norm = nn.RMSNorm(cfg.hidden_dim, eps=cfg.norm_eps)
        self.classifier: nn.Module = nn.Linear(cfg.hidden_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        fan_in = 3 * self.patch_size * self.patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=fan_in**-0.5)
        nn.init.zeros_(self.conv_proj.bias)
        for name, m in self.encoder.named_modules():
            if isinstance(m, nn.Linear) and ".attn." in f".{name}.":
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if isinstance(self.classifier, nn.Linear):
            nn.init.zeros_(self.classifier.weight)
            nn.init.zeros_(self.classifier.bias)

    # -- position embedding ------------------------------------------------------------------------------------
    def pos_embedding_for(self, height: int, width: int) -> torch.Tensor:
        """Position embedding for an input of `height` x `width` pixels (resized from the trained grid if needed).

        Resized copies are cached per (size, dtype, device, parameter version) when no gradient flows into them, so
        inference at a fixed size pays for the bicubic interpolation once; during training the resize stays in the
        autograd graph.
        """
        grid = (height // self.patch_size, width // self.patch_size)
        pos = self.pos_embedding
        if grid == self.grid_size:
            return pos
        needs_grad = torch.is_grad_enabled() and pos.requires_grad
        key = (grid, pos.dtype, pos.device, pos._version)
        if not needs_grad and key in self._pos_cache:
            return self._pos_cache[key]
        resized = resize_pos_embedding(
            pos,
            self.grid_size,
            grid,
            self.num_prefix_tokens,
            mode=self.cfg.pos_embed_interpolation,
            antialias=self.cfg.pos_embed_antialias,
        )
        if not needs_grad:
            if len(self._pos_cache) > 16:  # a few sizes in a run; don't grow without bound on odd inputs
                self._pos_cache.clear()
            self._pos_cache[key] = resized.detach()
        return resized

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to()/.half() replace parameters; cached resized embeddings would be stale.
        self._pos_cache = {}
        return super()._apply(fn, recurse)

    # -- forward passes ----------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {list(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"input height {h} and width {w} must both be multiples of the patch size {self.patch_size}; "
                "resize or pad the image (the detector pads its batches automatically)"
            )

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Run the encoder: [B, 3, H, W] -> [B, reg + H/p * W/p, C] (before the final norm)."""
        self._check_input(x)
        H, W = x.shape[-2:]
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.reg_tokens.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embedding_for(H, W)
        return self.encoder(x, (H // self.patch_size, W // self.patch_size), self.num_prefix_tokens)

    def detection_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        H, W = x.shape[-2:]
        t = self.tokens(x)[:, self.num_prefix_tokens :]
        B, _, C = t.shape
        return {self.feature_name: t.transpose(1, 2).reshape(B, C, H // self.patch_size, W // self.patch_size)}

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm(self.tokens(x))
        return t[:, self.num_prefix_tokens :].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embedding(x))

    # -- training helpers --------------------------------------------------------------------------------------
    def freeze(self, num_blocks: int) -> None:
        """Freeze the patch embedding (projection, register tokens, position embedding) and the first `num_blocks`
        blocks. `num_blocks=0` freezes the patch embedding only; negative leaves everything trainable."""
        if num_blocks < 0:
            return
        if num_blocks > len(self.encoder.block):
            raise ValueError(f"cannot freeze {num_blocks} blocks: the backbone has {len(self.encoder.block)}")
        frozen: list[nn.Parameter] = [*self.conv_proj.parameters(), self.reg_tokens, self.pos_embedding]
        for blk in self.encoder.block[:num_blocks]:
            frozen.extend(blk.parameters())
        for p in frozen:
            p.requires_grad_(False)

    def set_window_attention(self, window_size: int, global_blocks: list[int] | None = None) -> list[int]:
        """ViTDet window attention: `window_size` patches per side in all blocks but `global_blocks` (default:
        four evenly spaced, e.g. 2, 5, 8, 11 of 12). 0 = global attention everywhere (birder's network). The
        parameters are untouched, so the same weights load and run either way. Returns the global blocks."""
        return self.encoder.set_window_attention(window_size, global_blocks)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass: activation memory of one block instead of all of them."""
        self.encoder.grad_checkpointing = enable

    @property
    def num_layers(self) -> int:
        return len(self.encoder.block)
