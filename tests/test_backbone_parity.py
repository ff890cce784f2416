"""birddet's ViT gives birder's numbers on the same file: logits, embedding and the detection feature map.

birder is the reference implementation (test-only dependency). Weights are random but saved in birder's real file
format, so these tests also prove that files move both ways between the two libraries (.pt and .safetensors).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from birder.common import fs_ops

from birddet.backbone.presets import PRESETS
from birddet.backbone.weights import load_backbone

TINY = "vit_reg4_tiny16_rms_avg"
REAL = "vit_reg4_m16_rms_avg"
SIZES = [(384, 384), (640, 640), (512, 768)]
# Width/depth override that makes birder's registered vit_reg4_m16_rms_avg into birddet's tiny preset.
TINY_BIRDER_CONFIG = {
    k: v
    for k, v in dataclasses.asdict(PRESETS[TINY]).items()
    if k in ("num_layers", "num_heads", "hidden_dim", "mlp_dim")
}


def load_birder(path: Path, *, config: dict[str, Any] | None = TINY_BIRDER_CONFIG, st: bool = False) -> torch.nn.Module:
    net, _ = fs_ops.load_model(torch.device("cpu"), REAL, path=path, config=config, inference=True, st=st)
    net.set_dynamic_size(True)
    return net


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # 1e-4 relative; the absolute floor is relative to the tensor's scale so near-zero entries don't dominate.
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tiny_logits_embedding_and_neck_match_birder(tiny_birder_file: Path, size: tuple[int, int]) -> None:
    bnet = load_birder(tiny_birder_file)
    net, info = load_backbone(tiny_birder_file)
    assert info.network == TINY
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_same(net(x), bnet(x))
        assert_same(net.embedding(x), bnet.embedding(x))
        neck = net.detection_features(x)["neck"]
        assert neck.shape == (2, 64, size[0] // 16, size[1] // 16)
        assert_same(neck, bnet.detection_features(x)["stage1"])


@pytest.mark.slow
def test_real_m16_architecture_matches_birder_at_three_sizes(make_birder_file: Any) -> None:
    """The full-size ViT-M/16 (12 blocks, width 512), one forward pass per size and library.

    Hooks capture the encoder output (the detection map before the final norm) and the classifier's input (the
    embedding) during the logits pass, so one pass checks all three outputs.
    """
    path = make_birder_file("m16.pt", preset=REAL, num_classes=3)
    bnet = load_birder(path, config=None)
    net, info = load_backbone(path)
    assert info.network == REAL

    def capture(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        seen: dict[str, torch.Tensor] = {}
        module.encoder.register_forward_hook(lambda m, i, o: seen.__setitem__("tokens", o))
        module.classifier.register_forward_pre_hook(lambda m, i: seen.__setitem__("embedding", i[0]))
        return seen

    ours, theirs = capture(net), capture(bnet)
    for size in SIZES:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            assert_same(net(x), bnet(x))
        assert_same(ours["embedding"], theirs["embedding"])
        assert_same(ours["tokens"], theirs["tokens"])
        assert ours["tokens"].shape == (1, 4 + size[0] * size[1] // 256, 512)


def test_safetensors_written_by_birddet_load_in_birder_with_same_outputs(make_birder_file: Any) -> None:
    path = make_birder_file("tiny.safetensors", seed=3)
    bnet = load_birder(path, st=True)
    net, info = load_backbone(path)
    assert info.class_to_idx == {f"class_{i}": i for i in range(5)}
    x = torch.randn(1, 3, 512, 768, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert_same(net(x), bnet(x))
        assert_same(net.detection_features(x)["neck"], bnet.detection_features(x)["stage1"])


def test_safetensors_exported_by_birder_load_in_birddet_with_same_outputs(
    tiny_birder_file: Path, tmp_path: Path
) -> None:
    bnet = load_birder(tiny_birder_file)
    _, birder_info = fs_ops.load_model(
        torch.device("cpu"), REAL, path=tiny_birder_file, config=TINY_BIRDER_CONFIG, inference=True
    )
    exported = tmp_path / "exported_by_birder.safetensors"
    fs_ops.save_st(
        bnet,
        str(exported),
        "image_classification",
        birder_info.class_to_idx,
        birder_info.signature,
        {"mean": [0.4, 0.45, 0.5], "std": [0.2, 0.25, 0.3]},
        external_config=TINY_BIRDER_CONFIG,
    )
    net, info = load_backbone(exported)
    assert info.rgb_stats == {"mean": [0.4, 0.45, 0.5], "std": [0.2, 0.25, 0.3]}
    assert info.config == TINY_BIRDER_CONFIG
    assert info.size == (384, 384)
    x = torch.randn(1, 3, 640, 640, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert_same(net(x), bnet(x))
        assert_same(net.detection_features(x)["neck"], bnet.detection_features(x)["stage1"])


def test_birder_pt_and_birddet_pt_of_same_weights_give_identical_state(tiny_birder_file: Path, tmp_path: Path) -> None:
    """A `.pt` written by birder's own layout (`torch.save` of birder's dict, birder's state dict) reads back key for
    key and bit for bit into birddet."""
    bnet = load_birder(tiny_birder_file)
    path = tmp_path / "birder_layout.pt"
    torch.save(
        {
            "state": bnet.state_dict(),
            "birder_version": "0.8.4",
            "task": "image_classification",
            "signature": {"inputs": [{"data_shape": [0, 3, 384, 384]}], "outputs": [{"data_shape": [0, 5]}]},
            "class_to_idx": {f"class_{i}": i for i in range(5)},
            "rgb_stats": {"mean": [0.5] * 3, "std": [0.5] * 3},
            "config": TINY_BIRDER_CONFIG,
        },
        path,
    )
    net, _ = load_backbone(path)
    theirs = bnet.state_dict()
    ours = net.state_dict()
    assert list(ours) == list(theirs)
    for k, v in ours.items():
        assert torch.equal(v, theirs[k]), k
