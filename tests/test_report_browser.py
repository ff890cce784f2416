"""`birddet report` in a real browser: headless Chromium driven by Selenium loads REPORT/index.html from disk.

Each test moves the score threshold and checks that the boxes drawn are the detections at or above it in the
embedded data, filters by a species, opens the detail view, finds no console errors and saves a screenshot (under
pytest's tmp_path). The eval view's true positives, false positives, misses and confusion matrix are checked
against the known outcomes of `make_eval_folder` and against birddet's own `confusion_matrix`. The time to the
first screen is read from the page's own performance timeline.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_tool
from test_report import make_eval_folder, make_predict_folder, report_data

from birddet.engine.evaluator import load_ground_truth
from birddet.engine.reports import confusion_matrix
from birddet.report import build_report

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FIRST_SCREEN_MS = 2000.0


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    require_tool(
        CHROMIUM.is_file() and CHROMEDRIVER.is_file(),
        "Chromium and chromedriver",
        "apt-get install chromium chromium-driver",
    )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require_tool(False, "Selenium", "pip install selenium")
        raise
    profile = tempfile.mkdtemp(prefix="birddet-chromium-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    # Without the background-networking flags Chromium waits on services it cannot reach on a closed network.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _load(driver, report: Path) -> float:
    """Open the report from disk; return the ms from navigation start to the first screen (the page's mark)."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get((report / "index.html").as_uri())
    for _ in range(200):
        marks = driver.execute_script(
            "return performance.getEntriesByName('birddet-first-screen').map(function (m) { return m.startTime; })"
        )
        if marks:
            return float(marks[0])
        driver.implicitly_wait(0)
        driver.execute_script("return new Promise(function (r) { setTimeout(r, 50); })")
    raise AssertionError("the page never drew its first screen; console: " + json.dumps(driver.get_log("browser")))


def _set_threshold(driver, value: float) -> None:
    driver.execute_script(
        "var s = document.getElementById('threshold'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input', {bubbles: true}));",
        str(value),
    )


def _select(driver, select_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, select_id)).select_by_visible_text(text)


def _count(driver, css: str) -> int:
    return int(driver.execute_script("return document.querySelectorAll(arguments[0]).length", css))


def _no_console_errors(driver) -> None:
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def _screenshot(driver, path: Path) -> None:
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000


def _shown_files(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#grid .card')).map(function (c) {"
        " return window.BIRDDET_REPORT.images[Number(c.dataset.index)].f; })"
    )


# -- predictions view --------------------------------------------------------------------------------------------------


def test_predictions_view(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    report = tmp_path / "report"
    build_report(make_predict_folder(tmp_path, n=16, events=True), report)
    data = report_data(report)
    images = data["images"]
    assert _load(browser, report) < FIRST_SCREEN_MS

    def drawn_boxes_match(thr: float) -> None:
        want = sum(d[4] >= thr for im in images for d in im["d"])
        assert _count(browser, "#grid .box.det") == want
        assert _count(browser, "#grid .card") == len(images)

    drawn_boxes_match(0.5)  # the default
    for thr in (0.0, 0.37, 0.81, 1.0):
        _set_threshold(browser, thr)
        drawn_boxes_match(thr)
    _set_threshold(browser, 0.5)
    slider = browser.find_element(By.ID, "threshold")
    slider.send_keys(Keys.ARROW_LEFT * 20)  # a user's move: 20 steps of 0.01
    assert browser.find_element(By.ID, "threshold-value").text == "0.30"
    drawn_boxes_match(0.3)

    # The per-species table counts every detection of the run at the threshold.
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#species-table tr')).slice(1).map(function (r) {"
        " return Array.from(r.cells).map(function (c) { return c.textContent; }); })"
    )
    counts: dict[str, int] = {}
    for n, s in zip(data["all"]["n"], data["all"]["s"], strict=True):
        if s >= 0.3:
            counts[data["names"][n]] = counts.get(data["names"][n], 0) + 1
    assert {r[0]: int(r[1]) for r in rows} == counts

    # A species filter keeps the images with a box of that species at the threshold, and draws their boxes.
    species = data["names"].index("Turdus merula")
    having = [im for im in images if any(d[6] == species and d[4] >= 0.3 for d in im["d"])]
    _select(browser, "filter-species", "Turdus merula")
    assert 0 < len(having) < len(images)
    assert sorted(_shown_files(browser)) == sorted(im["f"] for im in having)
    assert _count(browser, "#grid .box.det") == sum(d[4] >= 0.3 for im in having for d in im["d"])
    _select(browser, "filter-species", "all")

    # Deployment filter and time sort (issue 22's fields, present here).
    _select(browser, "filter-deployment", "site1")
    assert sorted(_shown_files(browser)) == sorted(
        im["f"] for im in images if data["deployments"][im["dep"]] == "site1"
    )
    _select(browser, "filter-deployment", "all")
    _select(browser, "filter-event", "ev1")
    assert sorted(_shown_files(browser)) == sorted(im["f"] for im in images if data["events"][im["ev"]] == "ev1")
    _select(browser, "filter-event", "all")
    _select(browser, "sort", "time")
    assert _shown_files(browser) == [im["f"] for im in sorted(images, key=lambda im: (im["t"], im["f"]))]
    _select(browser, "sort", "top score")
    first = _shown_files(browser)[0]
    assert first == max(images, key=lambda im: max([d[4] for d in im["d"]], default=0))["f"]

    # Detail view: the full image, one row per box at the threshold with its top-k, keyboard navigation.
    browser.find_element(By.CSS_SELECTOR, "#grid .card").click()
    assert browser.find_element(By.ID, "detail").is_displayed()
    top = next(im for im in images if im["f"] == first)
    assert _count(browser, "#detail-boxes tr") - 1 == sum(d[4] >= 0.3 for d in top["d"])
    assert _count(browser, "#detail-frame .box.det") == sum(d[4] >= 0.3 for d in top["d"])
    assert (
        "Pica pica" in browser.find_element(By.ID, "detail-boxes").text
        or "Parus major" in browser.find_element(By.ID, "detail-boxes").text
    )
    _screenshot(browser, tmp_path / "predictions-detail.png")
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_RIGHT)
    assert browser.find_element(By.ID, "detail-title").text.startswith("2 / ")
    assert _shown_files(browser)[1] in browser.find_element(By.ID, "detail-title").text
    body.send_keys(Keys.ESCAPE)
    assert not browser.find_element(By.ID, "detail").is_displayed()
    _no_console_errors(browser)
    _screenshot(browser, tmp_path / "predictions.png")


def test_a_sample_says_it_is_one(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    report = tmp_path / "report"
    build_report(make_predict_folder(tmp_path, n=30), report, max_images=8)
    _load(browser, report)
    note = browser.find_element(By.ID, "sample-note")
    assert note.is_displayed() and "sample: 8 of 30 images" in note.text
    _set_threshold(browser, 0.2)
    data = report_data(report)
    assert _count(browser, "#grid .box.det") == sum(d[4] >= 0.2 for im in data["images"] for d in im["d"])
    _no_console_errors(browser)


def test_first_screen_of_a_full_size_report(browser, tmp_path: Path) -> None:
    """2,000 images (the default --max-images): the page draws its first screen in under 2 s."""
    run = make_predict_folder(tmp_path, n=8)
    mega = json.loads((run / "megadetector.json").read_text())
    progress = (run / "progress.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in progress[1:]]
    good = [(im, e) for im, e in zip(mega["images"], entries, strict=True) if "failure" not in im]
    many, lines = [], [progress[0]]
    for k in range(2000):  # many names, the same few photos on disk
        im, e = good[k % len(good)]
        name = f"big/{k:05d}.jpg"
        many.append({**im, "file": name})
        lines.append(json.dumps({**e, "file": name}))
    mega["images"] = many
    (run / "megadetector.json").write_text(json.dumps(mega))
    (run / "progress.jsonl").write_text("\n".join(lines) + "\n")
    (run / "coco.json").unlink()
    report = tmp_path / "report"
    build_report(run, report)
    assert _load(browser, report) < FIRST_SCREEN_MS
    assert _count(browser, "#grid .card") == 120  # one page; "show more" for the rest
    _no_console_errors(browser)


# -- evaluation view ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("thr", "tp", "fp", "miss"),
    [(0.5, 3, 3, 3), (0.25, 4, 3, 2), (0.92, 0, 1, 6)],  # make_eval_folder's known outcomes
)
def test_evaluation_view(browser, tmp_path: Path, thr: float, tp: int, fp: int, miss: int) -> None:
    from selenium.webdriver.common.by import By

    out = make_eval_folder(tmp_path)
    report = tmp_path / "report"
    build_report(out, report)
    data = report_data(report)
    assert _load(browser, report) < FIRST_SCREEN_MS
    _set_threshold(browser, thr)
    assert _count(browser, "#grid .box.det") == sum(d[4] >= thr for im in data["images"] for d in im["d"])
    assert (_count(browser, "#grid .box.tp"), _count(browser, "#grid .box.fp")) == (tp, fp)
    assert _count(browser, "#grid .box.miss") == miss
    totals = browser.find_element(By.ID, "eval-totals").text
    assert f"all classes {tp} {fp} {miss}" in totals

    # The live confusion matrix is birddet's own (engine/reports.py) at the same threshold.
    coco_gt = load_ground_truth(tmp_path / "gt.json")
    results = json.loads((out / "results.json").read_text())
    matrix, _ = confusion_matrix(coco_gt, results, score_threshold=thr)
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('#confusion tr')).slice(1).map(function (r) {"
        " return Array.from(r.cells).slice(1).map(function (c) { return Number(c.textContent); }); })"
    )
    assert shown == matrix.tolist()
    assert _count(browser, "#ap-table tr") == 1 + len(data["metrics"]["per_class"]) + 1
    assert _count(browser, ".plots img") == 2

    # Worst first: most misses plus false positives.
    files = _shown_files(browser)
    if thr == 0.5:
        assert files[0] == "e3.jpg"  # a wrong-class hit: one false positive and one miss
        assert files[-1] == "e0.jpg"  # two hits

    _select(browser, "filter-species", "Pica pica")
    assert sorted(_shown_files(browser)) == sorted(
        im["f"]
        for im in data["images"]
        if any(d[5] == 1 and d[4] >= thr for d in im["d"]) or any(g[4] == 1 for g in im["g"])
    )
    browser.find_element(By.CSS_SELECTOR, "#grid .card").click()
    assert browser.find_element(By.ID, "detail").is_displayed()
    assert _count(browser, "#detail-frame .box") >= 1
    _no_console_errors(browser)
    _screenshot(browser, tmp_path / "evaluation.png")


def test_two_stage_crop_gallery(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    report = tmp_path / "report"
    build_report(make_eval_folder(tmp_path, two_stage=True), report)
    _load(browser, report)
    assert _count(browser, "#gallery .crop") == 7
    # Red where the crop's bird is another species (e3) or no bird at all (e1's and e5's false positives).
    assert _count(browser, "#gallery .crop.wrong") == 3
    assert "p=" in browser.find_element(By.CSS_SELECTOR, "#gallery .crop figcaption").text
    _set_threshold(browser, 0.0)
    _no_console_errors(browser)
    _screenshot(browser, tmp_path / "gallery.png")
