"""Shared fixtures: random ViT weights written in birder's real file format, and photo-shaped synthetic data.

Pretrained files cannot be downloaded in tests, so every backbone test builds its weights here: a preset's
architecture with all parameters drawn from N(0, 0.05) (the zero-initialised classifier and register tokens would
otherwise make logits trivially equal), saved with `save_birder_file` exactly as birder lays its files out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from birddet.backbone.presets import PRESETS
from birddet.backbone.vit import ViT
from birddet.backbone.weights import save_birder_file
from birddet.data.synthetic import make_synthetic_coco

TINY_PRESET = "vit_reg4_tiny16_rms_avg"


def require_tool(available: bool, what: str, install: str) -> None:
    """Skip a test whose outside tool is missing on a developer's machine, but fail it in CI.

    `.ci/run` installs every tool (MegaDetector's validator, Chromium and chromedriver) and sets
    BIRDDET_TEST_REQUIRE_ALL=1, so a test that checks against one can never pass by being skipped there.
    """
    if available:
        return
    message = f"{what} is not installed ({install})"
    if os.environ.get("BIRDDET_TEST_REQUIRE_ALL") == "1":
        pytest.fail(message + "; CI requires it")
    pytest.skip(message)


def megadetector_validate(path: Path) -> dict:
    """Run MegaDetector's own `validate_batch_results` on a file; returns its result dict, or fails the test."""
    from PIL import ImageFile

    # Importing MegaDetector sets Pillow's global LOAD_TRUNCATED_IMAGES, which would make truncated photos load
    # in every later test of the session; put it back.
    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        from megadetector.postprocessing.validate_batch_results import (
            ValidateBatchResultsOptions,
            validate_batch_results,
        )
    except ImportError:
        require_tool(False, "MegaDetector's validator", "pip install --no-deps megadetector==10.0.28")
        raise
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated
    options = ValidateBatchResultsOptions()
    options.raise_errors = True
    options.check_image_existence = False
    options.return_data = False
    return validate_batch_results(str(path), options)


def _random_vit(
    preset: str = TINY_PRESET, *, num_classes: int = 5, image_size: tuple[int, int] = (384, 384), seed: int = 0
) -> ViT:
    torch.manual_seed(seed)
    net = ViT(PRESETS[preset], num_classes=num_classes, image_size=image_size)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.05)
    return net.eval()


MakeBirderFile = Callable[..., Path]


@pytest.fixture
def make_random_vit() -> Callable[..., ViT]:
    """Factory: `make_random_vit(preset=..., num_classes=5, image_size=(384, 384), seed=0)` -> a preset's ViT in eval
    mode with every parameter drawn from N(0, 0.05), deterministic in `seed`."""
    return _random_vit


@pytest.fixture
def make_birder_file(tmp_path: Path) -> MakeBirderFile:
    """Factory: `make_birder_file(name="tiny.pt", preset=..., num_classes=5, image_size=(384, 384), seed=0)` writes
    random weights in birder's format (`.pt` or `.safetensors` by suffix) under `tmp_path` and returns the path."""

    def make(
        name: str = "tiny.pt",
        *,
        preset: str = TINY_PRESET,
        num_classes: int = 5,
        image_size: tuple[int, int] = (384, 384),
        seed: int = 0,
        rgb_stats: dict[str, list[float]] | None = None,
    ) -> Path:
        net = _random_vit(preset, num_classes=num_classes, image_size=image_size, seed=seed)
        class_to_idx = {f"class_{i}": i for i in range(num_classes)}
        return save_birder_file(net, tmp_path / name, class_to_idx=class_to_idx, rgb_stats=rgb_stats)

    return make


@pytest.fixture
def tiny_birder_file(make_birder_file: MakeBirderFile) -> Path:
    """Random tiny-preset weights (5 classes, trained size 384x384) as a birder `.pt` file."""
    return make_birder_file()


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Photos as they arrive, for every test of real shapes: 16:9, 3:1 panorama, 4:3 and 9:16 portrait images with
    a long side of 192-320 px, half of them EXIF-rotated."""
    return make_synthetic_coco(
        tmp_path_factory.mktemp("photos"),
        num_train=12,
        num_val=6,
        preset="realistic",
        image_size=(192, 320),
        aspect_ratios=(16 / 9, 3.0, 4 / 3, 9 / 16),
        bird_frac=(0.15, 0.4),
        birds_per_image=(1, 3),
        exif_fraction=0.5,
        seed=3,
    )
