"""The ResNet v1 species classifier: birder's file layout both ways, training from random init, and its limits.

birder (test-only) is the reference: a file birddet writes loads in birder as `resnet_v1_18` with the file's config
and gives the same logits, and a file birder writes loads in birddet. Batch-norm scales and running statistics are
randomised first, so a layer read into the wrong slot would show.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from birder.common import fs_ops

from birddet.backbone.presets import RESNET_PRESETS, build_network
from birddet.backbone.resnet import BIRDER_RESNET, ResNet, ResNetConfig
from birddet.backbone.weights import load_backbone, save_birder_file
from birddet.config import config_from_dict
from birddet.engine.classification import train_classifier
from birddet.errors import InputError, WeightsError
from birddet.models.classifier import birder_config, birder_network
from birddet.pipeline.species import SpeciesClassifier
from tests.test_classifier_training import data_dir, read_log, tiny_classifier_config  # noqa: F401 (fixture)

PRESET = "resnet_v1_10"
CLASSES = {"finch": 0, "sparrow": 1, "tit": 2}


def random_resnet(preset: str = PRESET, seed: int = 0, size: tuple[int, int] = (64, 64)) -> ResNet:
    torch.manual_seed(seed)
    net = build_network(RESNET_PRESETS[preset], len(CLASSES), size)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        torch.nn.init.normal_(net.classifier.weight, std=0.1)
    return net.eval()


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_resnet_file_written_by_birddet_gives_birders_logits(tmp_path: Path, suffix: str) -> None:
    net = random_resnet()
    path = save_birder_file(net, tmp_path / f"r{suffix}", class_to_idx=CLASSES, config=birder_config(PRESET))
    bnet, binfo = fs_ops.load_model(
        torch.device("cpu"), birder_network(PRESET), path=path, inference=True, st=suffix == ".safetensors"
    )
    ours, info = load_backbone(path)
    assert info.network == PRESET and info.size == (64, 64) and info.class_to_idx == CLASSES
    assert binfo.class_to_idx == CLASSES
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = bnet(x)
        assert expected.abs().max() > 0.1
        assert_same(ours(x), expected)
        assert_same(ours.embedding(x), bnet.embedding(x))
        y = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(2))  # any size: the pool is global
        assert_same(ours(y), bnet(y))


def test_birders_own_resnet_v1_18_file_loads_in_birddet(tmp_path: Path) -> None:
    from birder.model_registry import registry

    torch.manual_seed(3)
    bnet = registry.net_factory(BIRDER_RESNET, len(CLASSES), size=(64, 64))
    with torch.no_grad():
        for m in bnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.2, 0.2)
    bnet.eval()
    path = tmp_path / "resnet_v1_18.pt"
    fs_ops.save_st(
        bnet, str(path.with_suffix(".safetensors")), "image_classification", CLASSES,
        {"inputs": [{"data_shape": [0, 3, 64, 64]}], "outputs": [{"data_shape": [0, 3]}]},
        {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    )  # fmt: skip
    ours, info = load_backbone(path.with_suffix(".safetensors"))
    assert info.network == "resnet_v1_18"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert_same(ours(x), bnet(x))


def test_a_resnet_of_no_preset_is_refused_with_its_shape(tmp_path: Path) -> None:
    net = ResNet(ResNetConfig(filter_list=(16, 16, 32), units=(1, 3)), num_classes=3, image_size=(32, 32))
    path = save_birder_file(net, tmp_path / "odd.pt", class_to_idx=CLASSES)
    with pytest.raises(WeightsError, match=r"widths \[16, 16, 32\], blocks \[1, 3\], basic blocks.*resnet_v1_10"):
        load_backbone(path)


def test_a_detector_refuses_a_resnet_file_as_its_backbone(tmp_path: Path) -> None:
    from birddet.config import Config
    from birddet.models.detector import build_detector

    path = save_birder_file(random_resnet(), tmp_path / "r.pt", class_to_idx=CLASSES, config=birder_config(PRESET))
    cfg = config_from_dict(
        {"model": {"backbone": {"preset": "vit_reg4_tiny16_rms_avg", "weights": str(path)}, "image_size": 64}},
        schema=Config,
    )
    with pytest.raises(WeightsError, match="holds the ResNet resnet_v1_10 .* a detector's backbone is a ViT"):
        build_detector(cfg, {1: "bird"})
    cfg.model.backbone.weights = None
    cfg.model.backbone.preset = PRESET
    with pytest.raises(InputError, match="species-classifier CNN: the detector's backbone is a ViT"):
        build_detector(cfg, {1: "bird"})


def test_freezing_keeps_the_stem_and_first_blocks_and_their_norm_statistics() -> None:
    net = build_network(RESNET_PRESETS[PRESET], 3, (32, 32))
    net.freeze(2)
    net.train()
    frozen = [net.stem, net.body.stage1[0], net.body.stage2[0]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in net.body.stage3.parameters())
    before = [net.stem[0][1].running_mean.clone(), net.body.stage3[0].block1[0][1].running_mean.clone()]
    net(torch.rand(4, 3, 32, 32) * 5)
    assert torch.equal(net.stem[0][1].running_mean, before[0])  # frozen: statistics kept
    assert not torch.equal(net.body.stage3[0].block1[0][1].running_mean, before[1])  # trainable: updated
    with pytest.raises(ValueError, match="cannot freeze 5 blocks: the network has 4"):
        net.freeze(5)
    with pytest.raises(ValueError, match="ViT only"):
        net.set_grad_checkpointing(True)


def test_train_classifier_with_a_resnet_preset_writes_a_birder_resnet_and_resumes_exactly(data_dir, tmp_path):  # noqa: F811
    def cfg(**kw):
        c = tiny_classifier_config(data_dir, ema=True, ema_decay=0.5, **kw)
        c.model.backbone.preset = PRESET
        return c

    run = tmp_path / "run"
    summary = train_classifier(cfg(), run)
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["config"] == {"bottle_neck": False, "filter_list": [64, 64, 128, 256, 512], "units": [1, 1, 1, 1]}
    bnet, _ = fs_ops.load_model(torch.device("cpu"), BIRDER_RESNET, path=run / "best.pt", inference=True)
    species = SpeciesClassifier.load(run / "best.pt")  # what `predict --classifier RUN/best.pt` does
    assert species.info.network == PRESET and species.size == (32, 32)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = bnet(x)
        assert expected.abs().max() > 0  # the trained head is not the zero init
        assert_same(species.net(x), expected)
    metrics = json.loads((run / "metrics.json").read_text())
    assert summary["best_top1"] == pytest.approx(metrics["top1"])

    # An interrupted run resumes to the same losses and the same best.pt, batch-norm statistics included.
    resumed = tmp_path / "resumed"
    train_classifier(cfg(max_steps=summary["steps"] - 1), resumed)
    train_classifier(cfg(), resumed, resume=True)
    assert [r["loss"] for r in read_log(resumed)] == [r["loss"] for r in read_log(run)]
    again = torch.load(resumed / "best.pt", weights_only=True)["state"]
    assert all(torch.equal(best["state"][k], again[k]) for k in best["state"])


def test_an_unknown_classifier_preset_lists_vits_and_resnets(data_dir, tmp_path):  # noqa: F811
    c = tiny_classifier_config(data_dir)
    c.model.backbone.preset = "resnet_v1_12"
    with pytest.raises(InputError, match="unknown classifier preset 'resnet_v1_12'.*resnet_v1_10.*vit_reg4_tiny16"):
        train_classifier(c, tmp_path / "run")


def test_a_resnet_classifier_exports_to_onnx_with_the_same_logits(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from birddet.engine.export import export_classifier
    from birddet.models.onnx_runtime import load_onnx_classifier

    path = save_birder_file(random_resnet(), tmp_path / "r.pt", class_to_idx=CLASSES, config=birder_config(PRESET))
    onnx_path = export_classifier(path, tmp_path / "r.classifier.onnx")
    ort_net, info = load_onnx_classifier(onnx_path, None)
    net, _ = load_backbone(path)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert_same(ort_net(x), net(x))
    assert info.network == PRESET
