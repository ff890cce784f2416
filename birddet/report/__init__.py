"""`birddet report DIR --out REPORT/`: an offline HTML review of a `predict` or `eval` output folder.

The report is a static site: `REPORT/index.html`, our own `report.js` and `report.css` (package data in
`birddet/report/static/`, no CDN, nothing fetched), `data.js` (the results, embedded as a script because a page
opened from disk may not fetch files) and `previews/` (each shown image shrunk), so the folder opens from disk and
can be zipped and sent. Boxes are drawn by the browser from `data.js`, so the score threshold is a live slider.

It reads only what the commands wrote, never a model: `inputs.py` reads a predict folder (`megadetector.json`,
`coco.json` or `predictions.csv`, and `progress.jsonl` for where each image lies) or an eval folder
(`results.json`, `metrics.json`, the plots, and the ground truth and image root named in `eval_inputs.json`);
`sample.py` picks the images shown for big runs; `assets.py` shrinks previews and cuts crops; `site.py` writes
the site.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report"]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI imports this package while it parses arguments, before torch may load (birddet/cli/__init__.py),
    # and the site's writers import birddet.fileio, which imports torch.
    if name == "build_report":
        from birddet.report.site import build_report

        return build_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
