"""`birddet report`: reading predict and eval folders, the stratified sample, the site's files and its data.

The folders are written by birddet's own writers (`write_outputs`, `ProgressLog`, `evaluate` + `write_report`) from
photo-shaped images (16:9, portrait, EXIF-rotated), so the report reads exactly what predict and eval write; the
browser side is tested in tests/test_report_browser.py.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from PIL import Image
from test_output_safety import FAST, make_photos, tiny_ckpt  # noqa: F401 - tiny_ckpt is a fixture

from birddet.cli import main
from birddet.engine.evaluator import evaluate, load_ground_truth
from birddet.engine.reports import write_eval_inputs, write_report
from birddet.errors import InputError
from birddet.fileio import atomic_write_json
from birddet.pipeline.progress import ProgressLog
from birddet.pipeline.results import Classification, Detection, ImageResult
from birddet.pipeline.taxonomy import Taxonomy
from birddet.pipeline.writers import write_outputs
from birddet.report import build_report
from birddet.report.inputs import ReportImage, read_run
from birddet.report.sample import stratified_sample, stratum

SPECIES = ["Parus major", "Turdus merula", "Pica pica"]
SHAPES = [(320, 180), (180, 320), (240, 240), (400, 225)]  # 16:9, portrait, square, 16:9


def _photo(path: Path, size: tuple[int, int], seed: int, *, rotated: bool = False) -> None:
    """A small photo; `rotated` stores it sideways with EXIF orientation 6, as phones do."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, (rng.randrange(60, 200), rng.randrange(60, 200), rng.randrange(60, 200)))
    path.parent.mkdir(parents=True, exist_ok=True)
    if rotated:
        exif = Image.Exif()
        exif[0x0112] = 6
        img.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    else:
        img.save(path)


def make_predict_folder(
    root: Path, n: int = 12, *, seed: int = 0, events: bool = False, formats=("megadetector", "coco", "csv")
) -> Path:
    """Photos under root/photos and a predict folder root/run written by predict's writers and progress log.

    Image i has i % 4 detections with scores spread over (0, 1) and three species; image 5 is EXIF-rotated and
    one file failed to decode. `events` adds issue 22's `deployment`, `event_id` and `datetime` to coco.json's
    images and predictions.csv, as that change writes them.
    """
    rng = random.Random(seed)
    photos, out = root / "photos", root / "run"
    taxonomy = Taxonomy({name: i for i, name in enumerate(SPECIES)})
    results = []
    for i in range(n):
        w, h = SHAPES[i % len(SHAPES)]
        file = f"cam{i % 2}/img_{i:03d}.jpg"
        _photo(photos / file, (w, h), seed + i, rotated=(i == 5))
        dets = []
        for _ in range(i % 4):
            x, y = rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.6)
            probs = sorted((rng.random() for _ in SPECIES), reverse=True)
            total = sum(probs)
            order = rng.sample(range(len(SPECIES)), len(SPECIES))
            dets.append(
                Detection(
                    (x, y, x + w * 0.3, y + h * 0.3),
                    round(rng.uniform(0.05, 0.99), 3),
                    1,
                    "bird",
                    [Classification(order[j], probs[j] / total) for j in range(len(SPECIES))],
                )
            )
        results.append(ImageResult(file, str(photos / file), w, h, dets))
    results.append(ImageResult("cam0/broken.jpg", str(photos / "cam0/broken.jpg"), None, None, failure="truncated"))
    log = ProgressLog(out / "progress.jsonl", {"conf": 0.05})
    out.mkdir(parents=True)
    log.start(resume=False)
    log.append(results)
    write_outputs(
        out, results, list(formats), detection_categories={1: "bird"}, taxonomy=taxonomy, detector_name="tiny.pt"
    )
    if events:
        _add_event_fields(out, results)
    return out


def event_of(i: int) -> tuple[str, str, str]:
    return (f"site{i % 3}", f"ev{i // 4}", f"2024-05-{1 + (11 - i) % 28:02d} 06:00:00")


def _add_event_fields(out: Path, results: list[ImageResult]) -> None:
    coco = json.loads((out / "coco.json").read_text())
    index = {r.file: i for i, r in enumerate(results)}
    for im in coco["images"]:
        im["deployment"], im["event_id"], im["datetime"] = event_of(index[im["file_name"]])
    atomic_write_json(out / "coco.json", coco)


def make_eval_folder(root: Path, *, two_stage: bool = False) -> Path:
    """Ground truth for six photos and an eval folder written as `birddet eval` writes it (results.json,
    eval_inputs.json, metrics.json and plots from birddet's own evaluate + write_report).

    The results are built to known outcomes at IoU 0.5: image 0 two exact hits (0.9, 0.8); image 1 a hit (0.7)
    and a false positive (0.6); image 2 a miss; image 3 a hit of the wrong class (0.55); image 4 a hit at 0.3;
    image 5 no birds and a false positive at 0.95.
    """
    photos = root / "images"
    cats = [{"id": 1, "name": "Parus major"}, {"id": 2, "name": "Pica pica"}]
    images, anns, results = [], [], []

    def gt(image_id: int, box: list[float], cat: int) -> None:
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cat,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
        )

    def det(image_id: int, box: list[float], cat: int, score: float) -> None:
        entry = {"image_id": image_id, "category_id": cat, "bbox": box, "score": score}
        if two_stage:
            entry.update(det_score=min(1.0, score + 0.05), species_prob=round(score / min(1.0, score + 0.05), 6))
        results.append(entry)

    for i in range(6):
        w, h = SHAPES[i % len(SHAPES)]
        _photo(photos / f"e{i}.jpg", (w, h), 100 + i)
        images.append({"id": i + 1, "file_name": f"e{i}.jpg", "width": w, "height": h})
    gt(1, [10, 10, 60, 40], 1), gt(1, [100, 80, 50, 50], 2)
    det(1, [10, 10, 60, 40], 1, 0.9), det(1, [100, 80, 50, 50], 2, 0.8)
    gt(2, [20, 20, 60, 60], 1)
    det(2, [20, 20, 60, 60], 1, 0.7), det(2, [100, 200, 40, 40], 1, 0.6)
    gt(3, [30, 30, 50, 50], 2)
    gt(4, [40, 40, 80, 60], 1)
    det(4, [40, 40, 80, 60], 2, 0.55)
    gt(5, [50, 50, 60, 60], 2)
    det(5, [50, 50, 60, 60], 2, 0.3)
    det(6, [5, 5, 40, 40], 1, 0.95)
    ann = root / "gt.json"
    atomic_write_json(ann, {"images": images, "annotations": anns, "categories": cats})
    out = root / "eval"
    out.mkdir()
    atomic_write_json(out / "results.json", results)
    write_eval_inputs(out, ann=ann, images=photos, checkpoint="tiny.pt", classifier="cls.pt" if two_stage else None)
    coco_gt = load_ground_truth(ann)
    result = evaluate(coco_gt, results)
    write_report(result, out, coco_gt=coco_gt, results=results, plots=True)
    if two_stage:
        metrics = json.loads((out / "metrics.json").read_text())
        metrics["two_stage"] = {"score": "detection score x species probability", "classifier_top1": 0.75,
                                "classifier_matched": 4, "match_iou": 0.5}  # fmt: skip
        atomic_write_json(out / "metrics.json", metrics)
    return out


def report_data(report: Path) -> dict:
    """The data embedded in a report's data.js."""
    text = (report / "data.js").read_text(encoding="utf-8")
    prefix = "window.BIRDDET_REPORT = "
    assert text.startswith(prefix)
    return json.loads(text[len(prefix) :].rstrip().rstrip(";"))


# -- predict folders ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["megadetector", "coco", "csv"])
def test_each_predict_format_gives_the_same_boxes(tmp_path: Path, fmt: str) -> None:
    """Whichever file a run wrote, the report draws the same boxes with the same scores and top-1 species."""
    full = read_run(make_predict_folder(tmp_path / "all"))
    only = make_predict_folder(tmp_path / "one", formats=(fmt,))
    build_report(only, tmp_path / "report")
    data = report_data(tmp_path / "report")
    ref = {im.file: im for im in full.images if im.failure is None}
    assert data["total"] == len(ref) == 12
    assert data["failed"] == (0 if fmt == "coco" else 1)  # COCO has no way to list a failed image
    for im in data["images"]:
        want = ref[im["f"]]
        assert [d[4] for d in im["d"]] == pytest.approx([b.score for b in want.boxes], abs=1e-3)
        assert [data["names"][d[6]] for d in im["d"]] == [b.species for b in want.boxes]
        for d, b in zip(im["d"], want.boxes, strict=True):
            assert d[:4] == pytest.approx(list(b.xywh), abs=2e-3)  # normalised, also from the CSV's pixel boxes
    if fmt == "megadetector":  # top-k with probabilities, best first
        topk = [d[7] for im in data["images"] for d in im["d"]]
        assert all(len(t) == 3 and t[0][1] >= t[1][1] >= t[2][1] for t in topk)


def test_report_folder_is_self_contained(tmp_path: Path) -> None:
    """index.html names only files inside the report (no http, no CDN) and every preview it names exists."""
    report = tmp_path / "report"
    assert main(["report", str(make_predict_folder(tmp_path)), "--out", str(report)]) == 0
    html = (report / "index.html").read_text()
    js = (report / "report.js").read_text()
    for text in (html, js, (report / "report.css").read_text()):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert 'src="data.js"' in html and 'src="report.js"' in html
    data = report_data(report)
    for im in data["images"]:
        assert (report / im["p"]).is_file()
        with Image.open(report / im["p"]) as img:
            assert max(img.size) <= 800
    rotated = next(im for im in data["images"] if im["f"] == "cam1/img_005.jpg")
    with Image.open(report / rotated["p"]) as img:
        assert img.size == (180, 320)  # EXIF-rotated photo previewed upright, as predict's boxes are


def test_events_are_read_when_present(tmp_path: Path) -> None:
    build_report(make_predict_folder(tmp_path, events=True), tmp_path / "report")
    data = report_data(tmp_path / "report")
    for im in data["images"]:
        i = int(im["f"][-7:-4])
        dep, ev, when = event_of(i)
        assert (data["deployments"][im["dep"]], data["events"][im["ev"]], im["t"]) == (dep, ev, when)


def test_counts_table_data_covers_every_image(tmp_path: Path) -> None:
    """The per-species table counts the whole run even when only a sample is shown."""
    run = make_predict_folder(tmp_path, n=40)
    build_report(run, tmp_path / "report", max_images=10)
    data = report_data(tmp_path / "report")
    assert len(data["images"]) == 10 and data["total"] == 40
    full = read_run(run)
    assert sorted(data["all"]["s"]) == pytest.approx(sorted(b.score for im in full.images for b in im.boxes), abs=1e-4)


def _image(name: str, scores: list[tuple[str, float]]) -> ReportImage:
    from birddet.report.inputs import Box

    return ReportImage(name, None, boxes=[Box((0, 0, 0.1, 0.1), s, "bird", sp) for sp, s in scores])


def test_sample_takes_turns_over_species_and_confidence() -> None:
    """1,000 confident magpies do not crowd out 5 doubtful tits or the empty images."""
    images = [_image(f"m{i}", [("Pica pica", 0.95)]) for i in range(1000)]
    images += [_image(f"t{i}", [("Parus major", 0.3)]) for i in range(5)]
    images += [_image(f"e{i}", []) for i in range(50)]
    sample = stratified_sample(images, 30)
    strata = [stratum(im) for im in sample]
    assert len(sample) == 30
    assert strata.count(("Parus major", 1)) == 5
    assert strata.count(("", -1)) == 13 and strata.count(("Pica pica", 3)) == 12  # strata take turns in name order
    assert stratified_sample(images, 30) == sample  # the same run gives the same sample
    assert stratified_sample(images[:20], 30) == images[:20]


def test_bad_folders_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither predict outputs"):
        build_report(tmp_path / "empty", tmp_path / "r1")
    run = make_predict_folder(tmp_path / "p")
    (run / "progress.jsonl").unlink()
    with pytest.raises(InputError, match="--images"):
        build_report(run, tmp_path / "r2")
    build_report(run, tmp_path / "r3", images=tmp_path / "p" / "photos")  # --images says where they are
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        build_report(run, busy, images=tmp_path / "p" / "photos")
    build_report(run, tmp_path / "r3", images=tmp_path / "p" / "photos")  # an earlier report is replaced
    (run / "megadetector.json").write_text("{broken")
    with pytest.raises(InputError, match="megadetector.json"):
        build_report(run, tmp_path / "r4", images=tmp_path / "p" / "photos")


def test_a_missing_photo_costs_only_its_preview(tmp_path: Path) -> None:
    run = make_predict_folder(tmp_path)
    (tmp_path / "photos" / "cam0" / "img_002.jpg").unlink()
    summary = build_report(run, tmp_path / "report")
    assert "1 without a preview" in summary
    data = report_data(tmp_path / "report")
    gone = next(im for im in data["images"] if im["f"] == "cam0/img_002.jpg")
    assert gone["p"] is None and "not found" in gone["x"]


# -- eval folders ------------------------------------------------------------------------------------------------------


def test_eval_report_embeds_truth_results_metrics_and_plots(tmp_path: Path) -> None:
    out = make_eval_folder(tmp_path)
    report = tmp_path / "report"
    assert main(["report", str(out), "--out", str(report)]) == 0
    data = report_data(report)
    metrics = json.loads((out / "metrics.json").read_text())
    assert data["kind"] == "eval" and data["iou"] == 0.5
    assert data["metrics"]["per_class"] == metrics["per_class"]
    assert sum(len(im["g"]) for im in data["images"]) == 6
    assert sum(len(im["d"]) for im in data["images"]) == 7
    for name in ("pr_curve", "pr_curves_per_class"):
        assert (report / data["plots"][name]).is_file()


def test_eval_folder_without_inputs_needs_gt_and_images(tmp_path: Path) -> None:
    out = make_eval_folder(tmp_path)
    (out / "eval_inputs.json").unlink()
    with pytest.raises(InputError, match="--gt"):
        build_report(out, tmp_path / "report")
    build_report(out, tmp_path / "report", gt=tmp_path / "gt.json", images=tmp_path / "images")
    assert len(report_data(tmp_path / "report")["images"]) == 6


def test_two_stage_eval_gets_a_crop_gallery(tmp_path: Path) -> None:
    build_report(make_eval_folder(tmp_path, two_stage=True), tmp_path / "report")
    data = report_data(tmp_path / "report")
    crops = [(im, int(k), path) for im in data["images"] for k, path in im.get("c", {}).items()]
    assert len(crops) == 7  # every detection, fewer than 24 per species
    for im, k, path in crops:
        assert (tmp_path / "report" / path).is_file()
        assert im["d"][k][7][0][1] == pytest.approx(im["d"][k][4] / min(1.0, im["d"][k][4] + 0.05), abs=1e-3)


def test_eval_writes_its_inputs(tmp_path: Path) -> None:
    """`eval_inputs.json` names the ground truth and image root by absolute path."""
    write_eval_inputs(tmp_path, ann="gt.json", images="imgs", checkpoint="best.pt", classifier=None)
    data = json.loads((tmp_path / "eval_inputs.json").read_text())
    assert data["ann"] == str(Path("gt.json").resolve()) and data["images"] == str(Path("imgs").resolve())
    assert data["checkpoint"] == "best.pt" and data["classifier"] is None


def test_csv_rows_are_read_by_name(tmp_path: Path) -> None:
    """Columns added later, in any place, do not shift what the report reads."""
    run = make_predict_folder(tmp_path, formats=("csv",))
    with (run / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    fields = ["a_later_column", *rows[0]]
    with (run / "predictions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**r, "a_later_column": "x", "deployment": "site9"} for r in rows)
    build_report(run, tmp_path / "report")
    data = report_data(tmp_path / "report")
    assert data["deployments"] == ["site9"] and data["total"] == 12


def test_previews_decode_jpegs_at_a_reduced_scale(tmp_path: Path) -> None:
    """`load_image(draft=N)` keeps the long side at least N (and the EXIF rotation), decoding less."""
    from birddet.data.images import load_image

    _photo(tmp_path / "wide.jpg", (1920, 1080), 0)
    _photo(tmp_path / "turned.jpg", (1600, 1200), 1, rotated=True)  # stored 1200x1600, shown 1600x1200
    assert load_image(tmp_path / "wide.jpg", draft=800).size == (960, 540)
    assert load_image(tmp_path / "wide.jpg", draft=1000).size == (1920, 1080)  # 1/2 would be under 1000
    assert load_image(tmp_path / "turned.jpg", draft=400).size == (400, 300)


# -- folders written by the real commands ------------------------------------------------------------------------------


def test_report_of_a_real_predict_run(
    tiny_ckpt: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`birddet predict` with a tiny detector, then `birddet report` of its folder: every image, every box."""
    monkeypatch.chdir(tmp_path)
    make_photos(tmp_path / "photos")
    assert main(["predict", str(tiny_ckpt), str(tmp_path / "photos"), "--out", str(tmp_path / "run"), *FAST]) == 0
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
    data = report_data(tmp_path / "report")
    mega = json.loads((tmp_path / "run" / "megadetector.json").read_text())
    assert sorted(im["f"] for im in data["images"]) == sorted(im["file"] for im in mega["images"])
    assert sum(len(im["d"]) for im in data["images"]) == sum(len(im["detections"]) for im in mega["images"])
    assert all((tmp_path / "report" / im["p"]).is_file() for im in data["images"])


def test_report_of_a_real_eval_run(tmp_path: Path) -> None:
    """`birddet eval` with a tiny detector on a synthetic split, then `birddet report`: found without --gt."""
    from test_eval_command import _checkpoint

    from birddet.data.synthetic import make_synthetic_coco

    split = make_synthetic_coco(tmp_path / "data", num_train=0, num_val=3, seed=1)
    ckpt = _checkpoint(tmp_path / "tiny.pt", {1: "songbird", 2: "wader", 3: "raptor"})
    argv = [
        "eval",
        str(ckpt),
        "--ann",
        str(split["val"]),
        "--images",
        str(split["images"]),
        "--out",
        str(tmp_path / "eval"),
    ]
    assert main([*argv, "--workers", "0", "--device", "cpu", "--conf", "0.0"]) == 0
    assert main(["report", str(tmp_path / "eval"), "--out", str(tmp_path / "report")]) == 0
    data = report_data(tmp_path / "report")
    gt = json.loads(Path(split["val"]).read_text())
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert len(data["images"]) == 3 and sum(len(im["g"]) for im in data["images"]) == len(gt["annotations"])
    assert sum(len(im["d"]) for im in data["images"]) == len(results)
    assert (tmp_path / "report" / "plots" / "pr_curve.png").is_file()


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "neither predict outputs" in err
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--max-images", "0"]) == 2
