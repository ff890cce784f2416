"""Crowd and VOC-difficult boxes are never sampled as background; positives come from the other boxes only.

The end-to-end test goes the way training goes: a COCO file with a crowd box on a 16:9 photo, `CocoDetection`,
the detector's own resize (unequal axis factors) and torchvision's samplers, recorded as they run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import box_iou

from birddet.config import config_from_dict
from birddet.data.coco import CROWD_LABEL, CocoDetection
from birddet.data.transforms import build_train_transforms
from birddet.models.detector import BirdDetector, build_detector
from birddet.models.ignore_regions import CROWD_IOA_THRESHOLD, crowd_coverage

CATEGORIES = {5: "songbird", 17: "wader"}
#: A 250x141 photo: a wader in the open, a crowd box over a flock, and a songbird in front of the flock.
SIZE = (250, 141)
BIRD = [20.0, 20.0, 90.0, 80.0]
CROWD = [120.0, 30.0, 235.0, 135.0]
BIRD_ON_CROWD = [150.0, 60.0, 200.0, 110.0]


def _detector() -> BirdDetector:
    """The tiny detector, with samplers that take every positive and negative (so the record is complete)."""
    torch.manual_seed(0)
    cfg = config_from_dict(
        {
            "model": {
                "backbone": {"preset": "vit_reg4_tiny16_rms_avg"},
                "image_size": 128,
                "pyramid": {"out_channels": 32},
                "rpn": {"pre_nms_top_n_train": 300, "post_nms_top_n_train": 300, "batch_size_per_image": 100_000},
                "roi_heads": {"representation_size": 64, "batch_size_per_image": 100_000},
            }
        }
    )
    return build_detector(cfg, CATEGORIES).train()


def _xywh(box: list[float]) -> list[float]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def _dataset(tmp_path: Path, transforms: Any = None) -> CocoDetection:
    anns = [
        {"id": 1, "image_id": 1, "category_id": 17, "bbox": _xywh(BIRD), "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": _xywh(CROWD), "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 5, "bbox": _xywh(BIRD_ON_CROWD), "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 5, "bbox": [10.0, 30.0, 50.0, 60.0], "iscrowd": 1},  # crowd only
    ]
    images = [
        {"id": 1, "file_name": "a.png", "width": SIZE[0], "height": SIZE[1]},
        {"id": 2, "file_name": "portrait.png", "width": 72, "height": 128},
    ]
    (tmp_path / "img").mkdir()
    for img in images:
        Image.new("RGB", (img["width"], img["height"]), (90, 110, 90)).save(tmp_path / "img" / img["file_name"])
    coco = {"images": images, "annotations": anns, "categories": [{"id": k, "name": v} for k, v in CATEGORIES.items()]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return CocoDetection(tmp_path / "ann.json", tmp_path / "img", transforms)


class _Recorder:
    """Wraps a torchvision sampler: keeps the labels it was given and the positive/negative masks it chose."""

    def __init__(self, sampler: Any) -> None:
        self.sampler, self.calls = sampler, []

    def __call__(self, labels: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        pos, neg = self.sampler(labels)
        self.calls.append((labels[0].clone(), pos[0].bool(), neg[0].bool()))  # of the first image
        return pos, neg


def test_no_anchor_or_proposal_on_a_crowd_box_is_sampled_as_background(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    image, target = ds[0]
    det = _detector()
    model = det.model
    seen: dict[str, Any] = {}
    model.transform.register_forward_hook(lambda m, i, out: seen.update(images=out[0], targets=out[1]))
    model.rpn.anchor_generator.register_forward_hook(lambda m, i, out: seen.update(anchors=out))
    model.rpn.fg_bg_sampler = rpn_rec = _Recorder(model.rpn.fg_bg_sampler)
    model.roi_heads.fg_bg_sampler = roi_rec = _Recorder(model.roi_heads.fg_bg_sampler)
    # An untrained RPN proposes few boxes on the flock: a grid of 24 and 40 px boxes over the image joins them.
    grid = torch.tensor(
        [[x, y, x + s, y + s] for s in (24, 40) for x in range(0, 128 - s, 8) for y in range(0, 72 - s, 8)]
    )
    add_gt = model.roi_heads.add_gt_proposals

    def add_gt_proposals(proposals: list[torch.Tensor], gt_boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        out = add_gt([torch.cat([proposals[0], grid.float()])], gt_boxes)
        seen["proposals"] = list(out)  # a copy: torchvision replaces the list's items by the sampled ones
        return out

    model.roi_heads.add_gt_proposals = add_gt_proposals  # type: ignore[method-assign]

    losses = det([image], [target])
    assert all(torch.isfinite(v) for v in losses.values())

    # Where the boxes are in the detector's input: the resize scales x and y by slightly different factors.
    h, w = seen["images"].image_sizes[0]
    factors = torch.tensor([w / SIZE[0], h / SIZE[1]] * 2)
    assert factors[0] != factors[1]
    crowd = torch.tensor([CROWD]) * factors
    birds = torch.tensor([BIRD, BIRD_ON_CROWD]) * factors
    anchors, proposals = seen["anchors"][0], seen["proposals"][0]

    # RPN: nothing covering the crowd box by half its area is a negative; positives are torchvision's for the birds.
    labels, pos, neg = rpn_rec.calls[0]
    on_crowd = crowd_coverage(crowd, anchors) >= CROWD_IOA_THRESHOLD
    assert on_crowd.sum() > 20  # the rule has something to act on
    assert not (neg & on_crowd).any(), f"{int((neg & on_crowd).sum())} anchors on the crowd box sampled as background"
    (reference,), _ = RegionProposalNetwork.assign_targets_to_anchors(model.rpn, [anchors], [{"boxes": birds}])
    assert torch.equal(pos, reference == 1)  # the bird in front of the flock keeps its positives
    assert torch.equal(neg, (reference == 0) & ~on_crowd)

    # RoI heads: the same for proposals (the ground-truth boxes torchvision appends included).
    labels, pos, neg = roi_rec.calls[0]
    on_crowd = crowd_coverage(crowd, proposals) >= CROWD_IOA_THRESHOLD
    assert on_crowd.sum() > 20
    assert not (neg & on_crowd).any(), f"{int((neg & on_crowd).sum())} proposals on the crowd box sampled as background"
    best_iou, best = box_iou(birds, proposals).max(dim=0)
    assert torch.equal(pos, best_iou >= 0.5)
    assert labels[pos].tolist() == [[2, 1][i] for i in best[pos].tolist()]  # wader -> 2, songbird -> 1
    assert torch.equal(neg, (best_iou < 0.5) & ~on_crowd)


def test_roi_matches_point_into_the_full_box_list() -> None:
    """`select_training_samples` looks regression targets up in the image's full list (crowd boxes included)."""
    heads = _detector().model.roi_heads
    gt = torch.tensor([[0.0, 0.0, 60.0, 60.0], [70.0, 10.0, 110.0, 50.0], [5.0, 70.0, 40.0, 100.0]])
    gt_labels = torch.tensor([CROWD_LABEL, 2, 1])
    proposals = torch.tensor(
        [
            [71.0, 11.0, 110.0, 50.0],  # the wader: positive, matched to box 1
            [6.0, 70.0, 40.0, 99.0],  # the songbird: positive, matched to box 2
            [10.0, 10.0, 30.0, 30.0],  # inside the crowd box, IoU 0.11 with it: ignored, not background
            [40.0, 40.0, 90.0, 90.0],  # 16 % on the crowd box: background
            [0.0, 0.0, 60.0, 60.0],  # the crowd box itself: ignored, never a positive
        ]
    )
    (idx,), (labels,) = heads.assign_targets_to_proposals([proposals], [gt], [gt_labels])
    assert labels.tolist() == [2, 1, -1, 0, -1]
    assert idx[:2].tolist() == [1, 2]
    (plain_idx,), (plain,) = RoIHeads.assign_targets_to_proposals(heads, [proposals], [gt], [gt_labels])
    assert plain[2] == 0  # torchvision alone: background


def test_crowd_boxes_travel_through_training_transforms_with_their_label(tmp_path: Path) -> None:
    """Crop, scale jitter and flip move the crowd box with the pixels; a crowd-only image has no target."""
    np.random.seed(0)
    ds = _dataset(tmp_path, build_train_transforms(128, scale_range=(1.0, 1.0), hflip=1.0, color_jitter=0.0))
    _, target = ds[1]  # the portrait, crowd box only, longest side 128 already: padded to 128 x 128 and mirrored
    assert target["labels"].tolist() == [CROWD_LABEL]
    torch.testing.assert_close(target["boxes"], torch.tensor([[128.0 - 60.0, 30.0, 128.0 - 10.0, 90.0]]))
    _, target = ds[0]
    assert sorted(target["labels"].tolist()) == [CROWD_LABEL, 1, 2]
    assert ds.report.num_negative_images == 1  # still a negative image: no bird to find there


@pytest.mark.parametrize(("cover", "label"), [(0.49, 0), (0.5, -1)])
def test_coverage_threshold_is_the_evaluators(cover: float, label: int) -> None:
    """Ignored from half of its own area on a crowd box, as pycocotools matches a detection to a crowd region at
    IoU (there: intersection over the detection's area) 0.5; an image with crowd boxes only has no positives."""
    heads = _detector().model.roi_heads
    crowd = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    left = 100.0 - 40.0 * cover
    proposal = torch.tensor([[left, 10.0, left + 40.0, 50.0]])
    assert crowd_coverage(crowd, proposal).item() == pytest.approx(cover)
    (idx,), (labels,) = heads.assign_targets_to_proposals([proposal], [crowd], [torch.tensor([CROWD_LABEL])])
    assert labels.tolist() == [label] and idx.tolist() == [0]


def test_voc_difficult_birds_are_scored_as_ignored_but_trained_as_positives(tmp_path: Path) -> None:
    """`convert voc` keeps a difficult bird ignored by evaluation (`iscrowd: 1`) and marks it `difficult: 1`, which
    training learns as an ordinary bird (measured best, docs/data-formats.md); a plain crowd box stays an ignore
    region. Box order: training boxes first, in file order, then the ignore regions."""
    from birddet.data.coco import is_ignore_region
    from birddet.data.formats.voc import convert_voc

    (tmp_path / "img").mkdir()
    Image.new("RGB", SIZE, (90, 110, 90)).save(tmp_path / "img" / "a.png")
    (tmp_path / "xml").mkdir()
    (tmp_path / "xml" / "a.xml").write_text(
        f"<annotation><filename>a.png</filename><size><width>{SIZE[0]}</width><height>{SIZE[1]}</height></size>"
        "<object><name>wader</name><difficult>1</difficult><bndbox><xmin>21</xmin><ymin>21</ymin><xmax>90</xmax>"
        "<ymax>80</ymax></bndbox></object>"
        "<object><name>songbird</name><difficult>0</difficult><bndbox><xmin>151</xmin><ymin>61</ymin><xmax>200</xmax>"
        "<ymax>110</ymax></bndbox></object></annotation>"
    )
    convert_voc(tmp_path / "xml", tmp_path / "voc.json", tmp_path / "img")
    coco = json.loads((tmp_path / "voc.json").read_text())
    difficult, plain = sorted(coco["annotations"], key=lambda a: a["bbox"][0])
    assert (difficult["iscrowd"], difficult.get("difficult")) == (1, 1)
    assert (plain["iscrowd"], plain.get("difficult", 0)) == (0, 0)
    assert not is_ignore_region(difficult) and not is_ignore_region(plain)
    assert is_ignore_region({"iscrowd": 1}) and not is_ignore_region({"iscrowd": 0, "difficult": 1})

    # a flock's crowd box joins the file: it alone is an ignore region in the training targets
    names = {c["name"]: c["id"] for c in coco["categories"]}
    coco["annotations"].append(
        {"id": 9, "image_id": 1, "category_id": names["songbird"], "bbox": [120.0, 30.0, 115.0, 105.0], "iscrowd": 1}
    )
    (tmp_path / "voc.json").write_text(json.dumps(coco))
    ds = CocoDetection(tmp_path / "voc.json", tmp_path / "img")
    _, target = ds[0]
    wader, songbird = ds.category_map.to_label(names["wader"]), ds.category_map.to_label(names["songbird"])
    assert target["labels"].tolist() == [wader, songbird, CROWD_LABEL]
    torch.testing.assert_close(
        target["boxes"],
        torch.tensor([[20.0, 20.0, 90.0, 80.0], [150.0, 60.0, 200.0, 110.0], [120.0, 30.0, 235.0, 135.0]]),
    )
