"""ViTDet window attention: the partition helpers, and the windowed ViT's locality, registers, weights and training."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from birddet.backbone.windows import (
    check_global_blocks,
    default_global_blocks,
    window_partition,
    window_unpartition,
)
from birddet.errors import InputError

SMALL = "vit_reg4_small16_rms_avg"  # 4 blocks: default global block is the last one


# -- pure geometry ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(6, 6), (5, 7), (1, 10), (3, 3)])
def test_partition_then_unpartition_returns_the_grid_exactly(hw: tuple[int, int]) -> None:
    x = torch.randn(2, *hw, 4)
    windows, padded = window_partition(x, 3)
    assert padded == (-(-hw[0] // 3) * 3, -(-hw[1] // 3) * 3)
    assert windows.shape == (2 * (padded[0] // 3) * (padded[1] // 3), 9, 4)
    assert torch.equal(window_unpartition(windows, 3, padded, hw), x)


def test_windows_hold_row_major_tiles_and_zero_padding() -> None:
    x = torch.arange(5 * 7, dtype=torch.float32).view(1, 5, 7, 1) + 1  # +1: real tokens are never 0
    windows, padded = window_partition(x, 4)
    assert padded == (8, 8) and windows.shape == (4, 16, 1)
    # Window 1 is the top-right tile: rows 0-3, columns 4-7, of which column 7 is padding.
    tile = windows[1, :, 0].view(4, 4)
    assert torch.equal(tile[:, :3], x[0, 0:4, 4:7, 0]) and torch.equal(tile[:, 3], torch.zeros(4))
    # Window 2 is bottom-left: only its first row is real.
    assert torch.equal(windows[2, :4, 0], x[0, 4, 0:4, 0]) and windows[2, 4:].abs().sum() == 0


def test_default_global_blocks_follow_vitdet_and_scale_with_depth() -> None:
    assert default_global_blocks(12) == [2, 5, 8, 11]  # ViTDet ViT-B
    assert default_global_blocks(24) == [5, 11, 17, 23]  # ViTDet ViT-L
    assert default_global_blocks(4) == [3]
    assert default_global_blocks(2) == [1]
    assert default_global_blocks(1) == [0]


def test_global_block_out_of_range_is_named() -> None:
    assert check_global_blocks([3, 1, 1], 4) == [1, 3]
    with pytest.raises(ValueError, match=r"\[4, -1\] are outside the backbone's blocks 0..3"):
        check_global_blocks([4, -1, 2], 4)


# -- the windowed network --------------------------------------------------------------------------------------
def test_window_zero_is_the_unchanged_global_network(make_random_vit: Any) -> None:
    net = make_random_vit()
    x = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = net.tokens(x)
        assert net.set_window_attention(2) == [1]
        windowed = net.tokens(x)
        assert net.set_window_attention(0) == [0, 1]
        after = net.tokens(x)
    assert torch.equal(after, before)  # bit-exact: the global path is birder's code path
    assert not torch.allclose(windowed, before)


def test_windowed_blocks_are_local_and_leave_register_tokens_unchanged(make_random_vit: Any) -> None:
    """With every block windowed, a change in one window never reaches another, nor the registers."""
    net = make_random_vit(SMALL)
    net.set_window_attention(3, global_blocks=[])
    x = torch.randn(1, 3, 96, 112, generator=torch.Generator().manual_seed(1))  # 6x7 grid: padded to 6x9
    with torch.no_grad():
        a = net.detection_features(x)["neck"][0]
        x2 = x.clone()
        x2[..., :16, :16] += 1.0  # patch (0, 0): window (0, 0) covers patch rows 0-2, columns 0-2
        b = net.detection_features(x2)["neck"][0]
        tokens = net.tokens(x)
    changed = (a - b).abs().amax(dim=0) > 0
    assert changed[:3, :3].all() and not changed[3:].any() and not changed[:, 3:].any()
    registers = net.reg_tokens + net.pos_embedding_for(96, 112)[:, :4]
    assert torch.equal(tokens[:, :4], registers)


def test_a_single_window_covering_the_grid_equals_global_attention_over_patches(make_random_vit: Any) -> None:
    net = make_random_vit(SMALL)
    blk = net.encoder.block[0]
    regs = torch.randn(2, 4, 192)
    blk.window_size = 5  # a 5x5 grid in one 5x5 window: no padding, so only the registers are left out
    patches = torch.randn(2, 25, 192, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = blk.forward_windowed(torch.cat([regs, patches], 1), (5, 5), 4)
        ref = blk(patches)
    assert torch.equal(out[:, :4], regs)
    torch.testing.assert_close(out[:, 4:], ref, rtol=1e-5, atol=1e-5)


def test_same_state_dict_loads_strictly_either_way(make_random_vit: Any) -> None:
    glob = make_random_vit(SMALL)
    win = make_random_vit(SMALL, seed=5)
    win.set_window_attention(4)
    assert list(win.state_dict()) == list(glob.state_dict())
    win.load_state_dict(glob.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)  # 4x4 grid = one 4x4 window: windowed blocks differ only by the registers
    with torch.no_grad():
        glob.set_window_attention(4)
        assert torch.equal(win.tokens(x), glob.tokens(x))


def test_windowed_grad_checkpointing_gives_same_gradients(make_random_vit: Any) -> None:
    x = torch.randn(2, 3, 80, 112, generator=torch.Generator().manual_seed(3))
    grads = []
    for enable in (False, True):
        net = make_random_vit(SMALL).train()
        net.set_window_attention(2, global_blocks=[1, 3])
        net.set_grad_checkpointing(enable)
        net.detection_features(x)["neck"].square().mean().backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if not n.startswith("classifier.")})
    assert grads[0]["encoder.block.0.attn.qkv.weight"].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_windowed_bf16_autocast_stays_close_to_fp32(make_random_vit: Any) -> None:
    net = make_random_vit(SMALL)
    net.set_window_attention(4)
    x = torch.randn(1, 3, 176, 240, generator=torch.Generator().manual_seed(4))  # 11x15 grid, padded to 12x16
    with torch.no_grad():
        ref = net.detection_features(x)["neck"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net.detection_features(x)["neck"]
    # The residual stream stays fp32 under autocast; the bf16 matmuls show as small differences.
    assert out.shape == ref.shape == (1, 192, 11, 15) and not torch.equal(out, ref)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))


def test_negative_window_is_refused(make_random_vit: Any) -> None:
    with pytest.raises(ValueError, match="window_size must be 0"):
        make_random_vit().set_window_attention(-1)


# -- config -> detector ----------------------------------------------------------------------------------------
def test_detector_config_sets_windows_and_names_a_bad_global_block() -> None:
    from test_trainer import tiny_config

    from birddet.models.detector import build_detector

    cfg = tiny_config(None)
    cfg.model.backbone.window_size = 4
    det = build_detector(cfg, {1: "bird"})
    blocks = det.model.backbone.body.encoder.block
    assert [b.window_size for b in blocks] == [4, 0]  # tiny: 2 blocks, the last global
    assert det.config.model.backbone.window_size == 4  # saved with the checkpoint, so a reload is windowed too
    cfg.model.backbone.global_blocks = [0, 2]
    with pytest.raises(InputError, match=r"global_blocks=\[0, 2\].*\[2\] are outside the backbone's blocks 0..1"):
        build_detector(cfg, {1: "bird"})
