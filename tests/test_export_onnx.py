"""`birddet export` to ONNX: the exported model gives the checkpoint's detections on onnxruntime, in every command.

A tiny random detector at 128 px and a tiny 32 px classifier keep the exports to seconds. Parity is checked on the
`photos` fixture (16:9, 3:1, 4:3 and portrait photos, half EXIF-rotated): boxes within 1 px and scores within 1e-3
of PyTorch's, through `predict`, tiling, two-stage predict and `birddet eval`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_species import write_tiny_classifier

from birddet import __version__
from birddet.cli import main
from birddet.config import config_from_dict, config_to_dict
from birddet.engine.checkpoint import load_detector, save_checkpoint
from birddet.engine.export import DYNAMIC_AXES, RESIZE_RULE, classifier_path, export_checkpoint
from birddet.errors import InputError
from birddet.models.detector import build_detector
from birddet.models.onnx_runtime import read_onnx_metadata
from birddet.pipeline.species import SpeciesClassifier

pytest.importorskip("onnxruntime")

CATEGORIES = {1: "songbird", 2: "wader", 3: "raptor"}
TINY = {
    "model": {
        "backbone": {"preset": "vit_reg4_tiny16_rms_avg"},
        "image_size": 128,
        "pyramid": {"out_channels": 32},
        "rpn": {"pre_nms_top_n_test": 100, "post_nms_top_n_test": 50},
        "roi_heads": {"representation_size": 64, "detections_per_img": 20},
    },
    "train": {"eval_batch_size": 2},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint, its ONNX export with a classifier, and the classifier's birder file."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "det.pt", build_detector(config_from_dict(TINY), CATEGORIES))
    cls = write_tiny_classifier(root / "species.pt")
    code = main(["export", str(ckpt), "--format", "onnx", "--out", str(root / "det.onnx"), "--classifier", str(cls)])
    assert code == 0
    return {"ckpt": ckpt, "onnx": root / "det.onnx", "cls": cls, "cls_onnx": classifier_path(root / "det.onnx")}


def _shapes(photos: dict[str, Path]) -> dict[str, Path]:
    """One landscape 16:9, one portrait and one EXIF-rotated photo of the fixture."""
    found: dict[str, Path] = {}
    for path in sorted(photos["images"].iterdir()):
        img = Image.open(path)
        w, h = img.size  # as stored
        if img.getexif().get(0x0112, 1) != 1:
            found.setdefault("exif", path)
        elif abs(w / h - 16 / 9) < 0.05:
            found.setdefault("16:9", path)
        elif h > w:
            found.setdefault("portrait", path)
    assert set(found) == {"exif", "16:9", "portrait"}, found
    return found


def _assert_same(a, b) -> None:
    """Two Predictions: same boxes (1 px), scores (1e-3) and categories, in the same order."""
    assert a.image_size == b.image_size
    assert len(a.scores) == len(b.scores) > 0
    assert (a.boxes - b.boxes).abs().max().item() <= 1.0
    assert (a.scores - b.scores).abs().max().item() <= 1e-3
    assert a.category_ids == b.category_ids


def test_onnx_boxes_and_scores_match_pytorch_on_16_9_portrait_and_exif_rotated_photos(exported, photos) -> None:
    torch_det, onnx_det = load_detector(exported["ckpt"]), load_detector(exported["onnx"])
    assert type(onnx_det) is type(torch_det)  # the same predict interface, every command accepts it
    for name, path in _shapes(photos).items():
        full = torch_det.predict(path, conf=0.05)[0]
        _assert_same(full, onnx_det.predict(path, conf=0.05)[0])
        # A stricter threshold and cap than the graph's are applied after it, exactly as PyTorch applies them.
        middle = float(full.scores[len(full.scores) // 2])
        for kwargs in ({"conf": middle}, {"conf": 0.05, "max_dets": 5}):
            a, b = torch_det.predict(path, **kwargs)[0], onnx_det.predict(path, **kwargs)[0]
            _assert_same(a, b)
            assert len(a.scores) < len(full.scores)
            assert b.image_size == Image.open(path).size or name == "exif"  # EXIF: the displayed frame


def test_tiled_predict_on_onnx_matches_pytorch(exported, photos) -> None:
    torch_det, onnx_det = load_detector(exported["ckpt"]), load_detector(exported["onnx"])
    path = _shapes(photos)["16:9"]
    _assert_same(torch_det.predict(path, tile=96)[0], onnx_det.predict(path, tile=96)[0])


def test_metadata_carries_categories_input_size_stats_resize_rule_and_version(exported) -> None:
    meta = read_onnx_metadata(exported["onnx"], "detector")
    torch_det = load_detector(exported["ckpt"])
    assert json.loads(meta["birddet.categories"]) == {str(k): v for k, v in CATEGORIES.items()}
    assert meta["birddet.input_size"] == "128" and meta["birddet.version"] == __version__
    assert json.loads(meta["birddet.mean"]) == torch_det.config.model.rgb_stats["mean"]
    assert json.loads(meta["birddet.std"]) == torch_det.config.model.rgb_stats["std"]
    assert meta["birddet.resize"] == RESIZE_RULE and meta["birddet.dynamic_axes"] == DYNAMIC_AXES
    assert meta["birddet.precision"] == "fp32"
    onnx_det = load_detector(exported["onnx"])
    assert onnx_det.categories == CATEGORIES
    assert config_to_dict(onnx_det.config) == config_to_dict(torch_det.config)
    cls_meta = json.loads(read_onnx_metadata(exported["cls_onnx"], "classifier")["birddet.classifier"])
    assert cls_meta["size"] == [32, 32] and cls_meta["rgb_stats"]["mean"] == [0.4, 0.45, 0.5]


def test_height_and_width_are_dynamic_batch_and_channels_fixed(exported) -> None:
    import onnx

    (image,) = onnx.load(str(exported["onnx"])).graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == [3, "height", "width"]


def test_exported_classifier_names_the_same_species_as_the_birder_file(exported, photos) -> None:
    image = torch.from_numpy(__import__("numpy").asarray(Image.open(_shapes(photos)["16:9"]).convert("RGB")))
    image = image.permute(2, 0, 1).contiguous()
    boxes = torch.tensor([[10.0, 10.0, 60.0, 50.0], [0.0, 0.0, 30.0, 90.0]])
    a = SpeciesClassifier.load(exported["cls"], top_k=3).probabilities
    b = SpeciesClassifier.load(exported["cls_onnx"], top_k=3)
    crops = b.crops(image, boxes)
    assert (a(crops) - b.probabilities(crops)).abs().max().item() <= 1e-4


def _predict(model: Path, classifier: Path, photos: dict[str, Path], out: Path) -> dict:
    argv = ["predict", str(model), str(photos["images"]), "--out", str(out), "--classifier", str(classifier)]
    assert main([*argv, "--workers", "0", "--device", "cpu", "--tile", "160", "--format", "coco"]) == 0
    return json.loads((out / "coco.json").read_text())


def test_two_stage_tiled_predict_cli_on_onnx_equals_checkpoint(exported, photos, tmp_path) -> None:
    a = _predict(exported["ckpt"], exported["cls"], photos, tmp_path / "pt")
    b = _predict(exported["onnx"], exported["cls_onnx"], photos, tmp_path / "onnx")
    assert [i["file_name"] for i in a["images"]] == [i["file_name"] for i in b["images"]]
    ann_a, ann_b = a["annotations"], b["annotations"]
    assert len(ann_a) == len(ann_b) > 0
    for x, y in zip(ann_a, ann_b, strict=True):
        assert x["category_id"] == y["category_id"] and x["image_id"] == y["image_id"]
        assert max(abs(p - q) for p, q in zip(x["bbox"], y["bbox"])) <= 1.0
        assert abs(x["score"] - y["score"]) <= 1e-3


def _eval(model: Path, photos: dict[str, Path], out: Path) -> tuple[dict, list]:
    argv = ["eval", str(model), "--ann", str(photos["val"]), "--images", str(photos["images"]), "--out", str(out)]
    assert main([*argv, "--workers", "0", "--no-plots", "--device", "cpu"]) == 0
    return json.loads((out / "metrics.json").read_text())["stats"], json.loads((out / "results.json").read_text())


def test_eval_of_onnx_model_equals_the_checkpoints_ap50(exported, photos, tmp_path) -> None:
    (stats_a, res_a), (stats_b, res_b) = (
        _eval(exported["ckpt"], photos, tmp_path / "a"),
        _eval(exported["onnx"], photos, tmp_path / "b"),
    )
    assert abs(stats_a["AP50"] - stats_b["AP50"]) <= 0.002
    assert abs(stats_a["AR100"] - stats_b["AR100"]) <= 0.002
    # Random weights score little, so the results themselves are compared too: same boxes, same scores.
    assert len(res_a) == len(res_b) > 0
    for x, y in zip(res_a, res_b, strict=True):
        assert x["image_id"] == y["image_id"] and x["category_id"] == y["category_id"]
        assert max(abs(p - q) for p, q in zip(x["bbox"], y["bbox"])) <= 1.0 and abs(x["score"] - y["score"]) <= 1e-3


def test_a_request_the_graph_cannot_answer_names_the_export_option(exported, photos) -> None:
    onnx_det = load_detector(exported["onnx"])
    path = _shapes(photos)["16:9"]
    with pytest.raises(InputError, match="--max-dets 50"):
        onnx_det.predict(path, max_dets=50)
    with pytest.raises(InputError, match="--min-conf"):
        onnx_det.predict(path, conf=0.01)


def test_bad_or_foreign_onnx_files_are_clear_input_errors(exported, photos, tmp_path, capsys) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    with pytest.raises(InputError, match="not a readable ONNX file"):
        load_detector(text)
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(foreign), dynamo=False)
    with pytest.raises(InputError, match="not written by `birddet export`"):
        load_detector(foreign)
    with pytest.raises(InputError, match="is a birddet classifier, not a birddet detector"):
        load_detector(exported["cls_onnx"])
    with pytest.raises(InputError, match="does not exist"):
        load_detector(tmp_path / "missing.onnx")
    code = main(["predict", str(foreign), str(photos["images"]), "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "foreign.onnx" in err


def test_export_refuses_what_it_cannot_write(exported, tmp_path) -> None:
    with pytest.raises(InputError, match="--int8 needs --calibrate"):
        export_checkpoint(exported["ckpt"], tmp_path / "m.onnx", int8=True)
    with pytest.raises(InputError, match=r"MODEL\.onnx"):
        export_checkpoint(exported["ckpt"], tmp_path / "m.pt")
    with pytest.raises(InputError, match="already exported"):
        export_checkpoint(exported["onnx"], tmp_path / "m.onnx")
    torch.manual_seed(0)
    free = {"model": {**TINY["model"], "min_size": 96, "max_size": 128}}
    ckpt = save_checkpoint(tmp_path / "free.pt", build_detector(config_from_dict(free), CATEGORIES))
    with pytest.raises(InputError, match="fixed square"):
        export_checkpoint(ckpt, tmp_path / "free.onnx")
    assert not (tmp_path / "free.onnx").exists()


def test_image_size_option_exports_another_input_square(exported, photos, tmp_path) -> None:
    out = export_checkpoint(exported["ckpt"], tmp_path / "m96.onnx", image_size=96)[0]
    assert read_onnx_metadata(out, "detector")["birddet.input_size"] == "96"
    torch_det = load_detector(exported["ckpt"])
    torch_det.config.model.image_size = 96
    t = torch_det.model.transform
    t.min_size, t.max_size, t.size_divisible = (96,), 96, 96
    path = _shapes(photos)["portrait"]
    _assert_same(torch_det.predict(path)[0], load_detector(out).predict(path)[0])


def test_int8_export_runs_and_finds_boxes(exported, photos, tmp_path) -> None:
    # Four calibration photos: onnxruntime's chunked calibration (CalibMaxIntermediateOutputs 4) dropped every full
    # chunk unused, and with exactly four photos failed with "No data is collected".
    calibrate = tmp_path.parent / f"{tmp_path.name}-calibration"
    calibrate.mkdir()
    for photo in sorted(Path(photos["images"]).glob("*.jpg"))[:4]:
        (calibrate / photo.name).write_bytes(photo.read_bytes())
    out = tmp_path / "int8.onnx"
    code = main(["export", str(exported["ckpt"]), "--out", str(out), "--int8", "--calibrate", str(calibrate)])
    assert code == 0 and [p.name for p in tmp_path.iterdir()] == ["int8.onnx"]  # no fp32 graph left behind
    meta = read_onnx_metadata(out, "detector")
    assert meta["birddet.precision"] == "int8" and meta["birddet.calibration_images"] == "4"
    assert meta["birddet.input_size"] == "128"
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops  # really quantized, not the fp32 graph under another name
    pred = load_detector(out).predict(_shapes(photos)["exif"])[0]
    assert len(pred.scores) > 0 and torch.isfinite(pred.boxes).all()
    w, h = pred.image_size
    assert (pred.boxes[:, 2] <= w + 1e-3).all() and (pred.boxes[:, 3] <= h + 1e-3).all()


def test_an_exported_model_keeps_the_test_size_flip_tta_and_box_refinement_of_its_checkpoint(
    photos, tmp_path, caplog
) -> None:
    """`model.test_size`, `model.tta` and `refine_steps` are inference settings: the graph is traced at the test
    square with the refinement passes in it, and the ONNX detector fuses the image and its mirror as the PyTorch
    one does. The graph has one square: more TTA squares are left out with a warning, and the checkpoint under
    `--tta flip` is what the export gives."""
    from birddet.models.tta import override_tta

    cfg = config_from_dict(TINY)
    cfg.model.test_size, cfg.model.tta, cfg.model.roi_heads.refine_steps = 160, "flip", 2
    cfg.model.tta_sizes = [128, 192]
    torch.manual_seed(0)
    det = build_detector(cfg, CATEGORIES)
    with torch.no_grad():  # a regression that moves boxes by whole pixels, so a graph without the passes differs
        det.model.roi_heads.box_predictor.bbox_pred.bias[4:] = 1.0
    ckpt = save_checkpoint(tmp_path / "det.pt", det)
    with caplog.at_level("WARNING", logger="birddet.engine.export"):
        out = export_checkpoint(ckpt, tmp_path / "det.onnx")[0]
    assert "model.tta_sizes [128, 192]: the graph runs at one square (160 px)" in caplog.text
    assert read_onnx_metadata(out, "detector")["birddet.input_size"] == "160"
    torch_det, onnx_det = load_detector(ckpt), load_detector(out)
    assert (onnx_det.config.model.tta, onnx_det.config.model.tta_sizes) == ("flip", [])
    assert torch_det.config.model.tta_sizes == [128, 192]  # the checkpoint keeps its own
    override_tta(torch_det.config.model, "flip")
    for path in _shapes(photos).values():
        _assert_same(torch_det.predict(path)[0], onnx_det.predict(path)[0])
    torch_det.model.roi_heads.refine_steps = 0
    path = next(iter(_shapes(photos).values()))
    unrefined, refined = torch_det.predict(path)[0], onnx_det.predict(path)[0]
    assert len(unrefined.boxes) != len(refined.boxes) or (unrefined.boxes - refined.boxes).abs().max() > 1.0
