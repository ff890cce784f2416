"""data.cache_crops: the species classifier's crops from cached pixels are the crops it would cut from the photo.

The cache exists for speed (a crop otherwise costs a full JPEG decode); these tests hold that it changes nothing a
user relies on: validation crops bit for bit, training crops (jitter, margin, border shifts) to within the
resampling of the shrunk patch, bad images skipped and reported as before. Photos are the realistic preset's
16:9 / portrait / EXIF-rotated images.
"""

from __future__ import annotations

import numpy as np
import torch

from birddet.config import CropAugmentConfig
from birddet.data.crops import CocoCrops, CropAugment

STATS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def _pair(photos: dict, split: str, size: int, augment: CropAugmentConfig | None) -> tuple[CocoCrops, CocoCrops]:
    make = lambda: CocoCrops(  # noqa: E731
        photos[split], photos["images"], size=size, rgb_stats=STATS,
        augment=CropAugment(augment) if augment else None,
    )  # fmt: skip
    plain, cached = make(), make()
    cached.cache_crops(threads=1)
    assert len(cached.patch_cache) == len(cached) > 0
    return plain, cached


def test_validation_crops_from_the_cache_are_bit_for_bit_the_photos_crops(photos: dict) -> None:
    plain, cached = _pair(photos, "val", 48, None)
    for i in range(len(plain)):
        assert torch.equal(plain.crop(i), cached.crop(i)), i
        label_plain, label_cached = plain[i][1], cached[i][1]
        assert label_plain == label_cached


def test_jittered_training_crops_match_the_uncached_ones(photos: dict) -> None:
    aug = CropAugmentConfig(box_jitter=0.2, hflip=0.0, color_jitter=0.0)
    plain, cached = _pair(photos, "train", 48, aug)
    diffs = []
    for i in range(len(plain)):
        np.random.seed(i)
        a = plain.crop(i).float()
        np.random.seed(i)
        b = cached.crop(i).float()
        assert a.shape == b.shape == (3, 48, 48)
        diffs.append((a - b).abs().mean().item())
    # The same jitter and the same crop rule: only the two-step resize of large birds differs (a few grey levels).
    assert np.median(diffs) < 2.0 and max(diffs) < 8.0, diffs


def test_training_patches_are_small(photos: dict) -> None:
    aug = CropAugmentConfig(box_jitter=0.1)
    _, cached = _pair(photos, "train", 32, aug)
    for patch in cached.patch_cache.values():
        assert max(patch.pixels.shape[-2:]) <= 2 * 32 + 1


def test_trivial_augment_changes_crops_reproducibly_per_seed() -> None:
    crop = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    aug = CropAugment(CropAugmentConfig(box_jitter=0.0, hflip=0.0, color_jitter=0.0, auto_augment="trivial"))
    outs = []
    for seed in (1, 1, 2, 3, 4, 5):
        torch.manual_seed(seed)
        outs.append(aug(crop))
    assert torch.equal(outs[0], outs[1])  # the trainer seeds torch per sample: resume gives the same crops
    assert sum(not torch.equal(o, crop) for o in outs[2:]) >= 2  # it does augment
    none = CropAugment(CropAugmentConfig(box_jitter=0.0, hflip=0.0, color_jitter=0.0))
    assert torch.equal(none(crop), crop)


def test_species_from_scratch_config_loads_with_the_crop_cache() -> None:
    from birddet.config import ClassifierConfig, load_config

    cfg = load_config("configs/species_from_scratch.yaml", schema=ClassifierConfig)
    assert cfg.data.cache_crops and cfg.train.time_budget and cfg.model.backbone.weights is None
