"""Write the report site: `index.html`, `data.js` (the results as one JS assignment), our `report.js` and
`report.css` (package data), `previews/`, `crops/` and `plots/`; see the package docstring."""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from birddet.errors import InputError
from birddet.fileio import atomic_write_text
from birddet.report.assets import make_all_assets
from birddet.report.inputs import ReportImage, RunData, read_run
from birddet.report.sample import DEFAULT_MAX_IMAGES, stratified_sample

CROPS_PER_SPECIES = 24
STATIC_FILES = ("report.js", "report.css")
MARKER = "birddet-report.json"  # says a folder is a report, so a rerun may replace it and nothing else is touched
DIGITS = 4


def build_report(
    source: str | Path,
    out: str | Path,
    *,
    max_images: int = DEFAULT_MAX_IMAGES,
    images: str | Path | None = None,
    gt: str | Path | None = None,
    workers: int | None = None,
) -> str:
    """Write the report of the predict or eval folder `source` into `out`; return a one-line summary."""
    started = time.perf_counter()
    if max_images < 1:
        raise InputError(f"--max-images {max_images}: must be at least 1")
    source, out = Path(source), Path(out)
    run = read_run(source, images=images, gt=gt)
    _claim(out, source)
    readable = [im for im in run.images if im.failure is None]
    shown = stratified_sample(readable, max_images)
    crops = _gallery_crops(shown, out) if "two_stage" in run.metrics else {}
    made = make_all_assets(shown, out, crops, workers)
    data = _site_data(run, readable, shown, made, crops, out)
    data["created"] = datetime.now().strftime("%Y-%m-%d %H:%M")
    if run.plots:
        (out / "plots").mkdir(exist_ok=True)
        for name, path in run.plots.items():
            shutil.copyfile(path, out / "plots" / name)
    static = resources.files("birddet.report") / "static"
    for name in STATIC_FILES:
        atomic_write_text(out / name, (static / name).read_text(encoding="utf-8"))
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    atomic_write_text(out / "data.js", f"window.BIRDDET_REPORT = {text};\n")
    atomic_write_text(out / "index.html", (static / "index.html").read_text(encoding="utf-8"))
    atomic_write_text(out / MARKER, json.dumps({"source": str(source.resolve()), "kind": run.kind}) + "\n")
    missing = sum(p is None for p, _ in made)
    sampled = f"a sample of {len(shown)} of {len(readable)}" if len(shown) < len(readable) else f"{len(shown)}"
    return (
        f"{run.kind} report of {source} ({run.read_from}): {sampled} images shown"
        + (f", {missing} without a preview" if missing else "")
        + f"; open {out / 'index.html'} ({time.perf_counter() - started:.1f} s)"
    )


def _claim(out: Path, source: Path) -> None:
    """Make `out` ready: new, empty, or an earlier report (its pictures are cleared); refuse anything else."""
    if out.resolve() == source.resolve():
        raise InputError(f"--out {out} is the folder being reported on; choose a new folder")
    if out.exists():
        if not out.is_dir():
            raise InputError(f"--out {out} exists and is not a folder")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise InputError(f"--out {out} is not empty and holds no earlier report; choose a new or empty folder")
        for sub in ("previews", "crops", "plots"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _gallery_crops(shown: list[ReportImage], out: Path) -> dict[int, dict[int, Path]]:
    """The `CROPS_PER_SPECIES` highest-scoring boxes of each species: image index -> box index -> crop path."""
    by_species: dict[str, list[tuple[float, int, int]]] = {}
    for n, image in enumerate(shown):
        for k, box in enumerate(image.boxes):
            by_species.setdefault(box.category, []).append((box.score, n, k))
    crops: dict[int, dict[int, Path]] = {}
    for entries in by_species.values():
        for _, n, k in sorted(entries, reverse=True)[:CROPS_PER_SPECIES]:
            crops.setdefault(n, {})[k] = out / "crops" / f"{n}_{k}.jpg"
    return crops


def _r(value: float) -> float:
    return round(float(value), DIGITS)


def _site_data(
    run: RunData,
    readable: list[ReportImage],
    shown: list[ReportImage],
    made: list[tuple[str | None, str | None]],
    crops: dict[int, dict[int, Path]],
    out: Path,
) -> dict[str, Any]:
    """The JSON the page reads (keys kept short: a 2,000-image report embeds some 50,000 numbers)."""
    names: dict[str, int] = {}  # species, or the category of an unclassified box
    cats: dict[str, int] = {c: i for i, c in enumerate(run.categories)}
    deployments: dict[str, int] = {}
    events: dict[str, int] = {}

    def index(table: dict[str, int], key: str | None) -> int | None:
        return None if key is None else table.setdefault(key, len(table))

    def name_of(box: Any) -> int:
        return index(names, box.species or box.category)  # type: ignore[return-value]

    images = []
    for n, (image, (preview, why)) in enumerate(zip(shown, made, strict=True)):
        entry: dict[str, Any] = {"f": image.file, "p": preview, "w": image.width, "h": image.height}
        if why:
            entry["x"] = why
        for key, table, value in (("dep", deployments, image.deployment), ("ev", events, image.event)):
            if value is not None:
                entry[key] = index(table, value)
        if image.datetime:
            entry["t"] = image.datetime
        drawable = image.normalised
        entry["d"] = [
            [
                *([_r(v) for v in box.xywh] if drawable else [0, 0, 0, 0]),
                _r(box.score),
                index(cats, box.category),
                name_of(box),
                [[index(names, s), _r(p)] for s, p in box.topk],
            ]
            for box in image.boxes
        ]
        if run.kind == "eval":
            entry["g"] = [[*(_r(v) for v in t.xywh), index(cats, t.category), int(t.crowd)] for t in image.truth]
            if n in crops:
                entry["c"] = {str(k): p.relative_to(out).as_posix() for k, p in crops[n].items()}
        images.append(entry)
    data: dict[str, Any] = {
        "kind": run.kind,
        "source": str(run.source),
        "read_from": run.read_from,
        "total": len(readable),
        "failed": len(run.images) - len(readable),
        "images": images,
    }
    if run.kind == "predict":
        # Every detection of the whole run (not only the sample), for the per-species table at any threshold.
        everything = [(n, name_of(b), _r(b.score)) for n, im in enumerate(readable) for b in im.boxes]
        data["all"] = {
            "im": [e[0] for e in everything],
            "n": [e[1] for e in everything],
            "s": [e[2] for e in everything],
        }
    else:
        data["metrics"] = run.metrics
        data["plots"] = {Path(name).stem: f"plots/{name}" for name in run.plots}
        data["iou"] = 0.5
    data.update(
        names=list(names),
        categories=list(cats),
        deployments=list(deployments),
        events=list(events),
    )
    return data
