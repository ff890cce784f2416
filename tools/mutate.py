"""Plant one-line bugs in critical code, one at a time, and check that the related tests catch each of them.

Why: issue 18 planted 8 one-line scoring bugs and 5 survived the test suite (one factor for both axes, a doubled crop
margin, val categories mapped by position, a CPU budget clock reading wall time, `xywh` boxes cropped as `xyxy`, a
crop taken from the wrong image of a batch). A test that passes with such a bug in place guards nothing. This script
keeps those bugs (and more of the same kind) as a list, so a change that weakens a test shows up as a survivor.

How: the repository is copied once to a temporary folder (the working tree is never edited); for each mutation its
snippet is replaced in the copy, only its related test files run there (`python -m pytest -x -q`, PYTHONPATH set to
the copy, so the copy's `birddet` is the one imported), and the file is restored. A mutation is

  - KILLED    when the tests fail (or time out),
  - SURVIVED  when they pass: a test is missing or too weak,
  - NOT FOUND when its snippet is not in the file exactly once (the code changed: update the mutation).

Usage (from the repository root, with the project's environment active):

    python tools/mutate.py                      # every mutation, then a summary; exit code 0
    python tools/mutate.py --list               # the mutations and whether each snippet is found
    python tools/mutate.py --only crop-margin-doubled predict-crop-from-wrong-image
    python tools/mutate.py --baseline           # first check the related tests pass on the unmutated copy
    python tools/mutate.py --json results.json  # also write the results as JSON

No dependency beyond the standard library and the project's own test requirements (pytest).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Not copied: version control, environments, caches and run outputs (large, and nothing a test reads).
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info", "runs", "shared", "*.pyc"
)
GUARDS = "tests/test_mutation_guards.py"


@dataclass(frozen=True)
class Mutation:
    """One planted bug: `original` (exact text, found exactly once in `file`) becomes `replacement`."""

    name: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]  # pytest arguments: test files (or file::test ids) that must catch it
    named: bool = False  # one of the bugs issue 18 names
    why: str = ""


MUTATIONS: tuple[Mutation, ...] = (
    # -- the bugs issue 18 names ---------------------------------------------------------------------------------------
    Mutation(
        "coco-rescale-one-factor",
        "birddet/data/coco.py",
        "sx, sy = to_wh[0] / from_wh[0], to_wh[1] / from_wh[1]",
        "sx = sy = to_wh[0] / from_wh[0]",
        ("tests/test_coco_data.py", GUARDS),
        named=True,
        why="boxes of a file stored at another size than its JSON says get the x factor on both axes",
    ),
    Mutation(
        "detector-rescale-one-factor",
        "birddet/models/detector.py",
        "out[:, 1::2] = (out[:, 1::2] * (oh / h)).clamp(0, oh)",
        "out[:, 1::2] = (out[:, 1::2] * (ow / w)).clamp(0, oh)",
        ("tests/test_eval_command.py", "tests/test_detector.py", GUARDS),
        named=True,
        why="detections mapped back to the original image with the x factor on both axes",
    ),
    Mutation(
        "crop-margin-doubled",
        "birddet/models/classifier.py",
        "side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)",
        "side = max(x1 - x0, y1 - y0) * (1.0 + 4.0 * margin)",
        ("tests/test_classifier_preprocess.py", "tests/test_species.py", GUARDS),
        named=True,
        why="the species crop takes twice the documented context around a box",
    ),
    Mutation(
        "classifier-val-categories-by-position",
        "birddet/data/crops.py",
        'return alignment.to_model  # a class index is the classifier\'s "category id"',
        "return {cid: i for i, cid in enumerate(sorted(names))}",
        ("tests/test_classifier_training.py", GUARDS),
        named=True,
        why="a val split numbering its categories differently is scored against the wrong classes",
    ),
    Mutation(
        "budget-cpu-clock-reads-wall-time",
        "birddet/engine/budget.py",
        'self._read = time.perf_counter if kind == "wall" else time.process_time',
        "self._read = time.perf_counter",
        ("tests/test_budget.py", GUARDS),
        named=True,
        why="train.budget_clock=cpu silently counts wall time",
    ),
    Mutation(
        "two-stage-eval-crops-xywh-as-xyxy",
        "birddet/engine/two_stage.py",
        "boxes[:, 2:] += boxes[:, :2]\n            # Results are in the image's frame",
        "pass\n            # Results are in the image's frame",
        ("tests/test_two_stage.py", GUARDS),
        named=True,
        why="eval --classifier crops COCO [x, y, w, h] boxes as if they were [x0, y0, x1, y1]",
    ),
    Mutation(
        "predict-crop-from-wrong-image",
        "birddet/pipeline/predict.py",
        "per_image = run.classifier.classify_images([img for _, img in loaded], boxes)",
        "per_image = run.classifier.classify_images([loaded[0][1] for _ in loaded], boxes)",
        ("tests/test_predict.py", GUARDS),
        named=True,
        why="every box of a batch is cropped from the batch's first image",
    ),
    Mutation(
        "species-crop-from-wrong-image",
        "birddet/pipeline/species.py",
        "crops = [self.crops(img, b) for img, b in zip(images, boxes, strict=True) if b.shape[0] > 0]",
        "crops = [self.crops(images[0], b) for img, b in zip(images, boxes, strict=True) if b.shape[0] > 0]",
        ("tests/test_species.py", GUARDS),
        named=True,
        why="SpeciesClassifier.classify_images crops every image's boxes from the first image",
    ),
    # -- critical one-liners of the same kind --------------------------------------------------------------------------
    Mutation(
        "crop-margin-constant",
        "birddet/models/classifier.py",
        "CROP_MARGIN = 0.15",
        "CROP_MARGIN = 0.3",
        ("tests/test_classifier_preprocess.py", "tests/test_species.py", GUARDS),
        why="the documented 15 % margin changes (predict and classifier training both use it)",
    ),
    Mutation(
        "crop-square-clipped-with-width",
        "birddet/models/classifier.py",
        "top = min(max(top, 0.0), max(height - side, 0.0))",
        "top = min(max(top, 0.0), max(width - side, 0.0))",
        ("tests/test_classifier_preprocess.py", "tests/test_species.py", GUARDS),
        why="a crop near the bottom of a landscape image is not shifted back inside",
    ),
    Mutation(
        "coco-results-left-in-xyxy",
        "birddet/models/detector.py",
        "xywh[:, 2:] -= xywh[:, :2]",
        "pass",
        ("tests/test_eval_command.py", "tests/test_detector.py", GUARDS),
        why="COCO results written as [x0, y0, x1, y1] instead of [x, y, w, h]",
    ),
    Mutation(
        "merge-labels-nms-on-xywh",
        "birddet/engine/two_stage.py",
        "boxes[:, 2:] += boxes[:, :2]\n    scores = ",
        "pass\n    scores = ",
        ("tests/test_two_stage.py", GUARDS),
        why="class-agnostic NMS of eval --classifier runs on [x, y, w, h] boxes",
    ),
    Mutation(
        "two-stage-nms-iou-ignored",
        "birddet/engine/two_stage.py",
        "nms_iou = cfg.model.roi_heads.nms_thresh",
        "nms_iou = 1.0",
        ("tests/test_two_stage.py", GUARDS),
        why="one bird boxed under two labels is scored twice by eval --classifier",
    ),
    Mutation(
        "two-stage-score-without-species-probability",
        "birddet/engine/two_stage.py",
        "\"score\": round(float(det['score']) * pi, 6),".replace("'", '"'),
        "\"score\": round(float(det['score']), 6),".replace("'", '"'),
        ("tests/test_two_stage.py", GUARDS),
        why="species-level ranking ignores how sure the classifier is",
    ),
    Mutation(
        "two-stage-match-iou",
        "birddet/engine/two_stage.py",
        "MATCH_IOU = 0.5",
        "MATCH_IOU = 0.1",
        ("tests/test_two_stage.py", GUARDS),
        why="the classifier's top-1 counts detections that barely touch a bird",
    ),
    Mutation(
        "category-of-label-reversed",
        "birddet/data/categories.py",
        "return self.coco_ids[int(label) - 1]",
        "return self.coco_ids[-int(label)]",
        ("tests/test_coco_data.py", "tests/test_evaluator.py", GUARDS),
        why="detector labels turned into the wrong COCO category ids",
    ),
    Mutation(
        "coco-stat-names-order",
        "birddet/engine/evaluator.py",
        'STAT_NAMES = ("AP", "AP50", "AP75",',
        'STAT_NAMES = ("AP", "AP75", "AP50",',
        ("tests/test_evaluator.py", GUARDS),
        why="AP50 and AP75 reported under each other's names",
    ),
    Mutation(
        "classify-conf-exclusive",
        "birddet/pipeline/predict.py",
        "keep = [p.scores >= opts.classify_conf for p in predictions]",
        "keep = [p.scores > opts.classify_conf for p in predictions]",
        ("tests/test_predict.py", GUARDS),
        why="a box scoring exactly --classify-conf is not classified (documented: at least)",
    ),
    Mutation(
        "tile-offset-axes-swapped",
        "birddet/pipeline/tiling.py",
        "return boxes + boxes.new_tensor([x0, y0, x0, y0])",
        "return boxes + boxes.new_tensor([y0, x0, y0, x0])",
        ("tests/test_tiling.py", GUARDS),
        why="a window's boxes are moved by its offset with the axes swapped",
    ),
    Mutation(
        "resume-restarts-the-epoch",
        "birddet/engine/run_state.py",
        'int(training["step"]), int(training["batches_done"])',
        'int(training["step"]), 0',
        ("tests/test_classifier_training.py::test_resume_after_stop_gives_the_same_losses", GUARDS),
        why="a run stopped mid-epoch replays the batches it had already trained on",
    ),
    Mutation(
        "resume-forgets-the-rng",
        "birddet/engine/run_state.py",
        "set_rng_states(per_rank[self.ctx.rank])",
        "pass",
        ("tests/test_trainer.py::test_resume_after_stop_gives_the_same_next_step_losses",),
        why="a resumed detector run samples RoIs from a fresh RNG stream",
    ),
    Mutation(
        "augmentation-seed-ignores-epoch",
        "birddet/engine/task.py",
        "np.random.SeedSequence([seed, epoch, index])",
        "np.random.SeedSequence([seed, index])",
        (GUARDS,),
        why="every epoch sees the same augmentation of each image",
    ),
    Mutation(
        "pause-evaluation-competes-for-best",
        "birddet/engine/loop.py",
        "final = s.epoch >= self.epochs or budget_stop",
        "final = stopped or s.epoch >= self.epochs or budget_stop",
        ("tests/test_resume_best.py",),
        why="a max_steps stop adds a mid-epoch evaluation, so a resumed run's best.pt can differ",
    ),
    # -- the fixes of issues 18 and 21: each must stay fixed ----------------------------------------------------------
    Mutation(
        "results-in-the-decoded-files-frame",
        "birddet/data/coco.py",
        '"orig_size": (frame_h, frame_w),',
        '"orig_size": tuple(pixels.shape[:2]),',
        ("tests/test_scoring_frame.py",),
        why="a file stored at another size than its JSON says gets its results in the file's pixels, scored AP 0",
    ),
    Mutation(
        "max-dets-stays-at-100",
        "birddet/engine/runner.py",
        "return (1, 10, cap) if cap > 100 else (1, 10, 100)",
        "return (1, 10, 100)",
        ("tests/test_scoring_frame.py", "tests/test_eval_command.py"),
        why="a model allowed 1,000 boxes per image is scored on its best 100: a perfect flock gets AP 0.34",
    ),
    Mutation(
        "difficult-birds-ignored-not-trained",
        "birddet/data/coco.py",
        'return bool(ann.get("iscrowd", 0)) and not ann.get("difficult", 0)',
        'return bool(ann.get("iscrowd", 0))',
        ("tests/test_crowd_boxes.py",),
        why="VOC difficult birds become ignore regions instead of positives (measured: AP50 0.41 instead of 0.76)",
    ),
    Mutation(
        "paste-judged-by-iou-of-the-box",
        "birddet/data/transforms.py",
        "covered_fraction(patch_box, np.stack(all_boxes)).max() <= PASTE_MAX_COVER",
        "covered_fraction(new, np.stack(all_boxes)).max() <= 1.0",
        ("tests/test_transforms.py",),
        why="copy-paste buries a small bird under a large paste",
    ),
    Mutation(
        "smoothing-weighted-by-every-class",
        "birddet/engine/classification.py",
        "w = weight[targets]\n    return (per_crop * w).sum() / w.sum()",
        "return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)",
        ("tests/test_species_training_fixes.py",),
        why="label smoothing with class weights leans every soft target toward the rare classes",
    ),
    Mutation(
        "ema-without-warm-up",
        "birddet/engine/optim.py",
        "d = decay * (1.0 - math.exp(-float(num_averaged) / tau))",
        "d = decay",
        ("tests/test_species_training_fixes.py",),
        why="a short run's EMA (best.pt) keeps step 1's weights",
    ),
)


# -- running ---------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    mutation: Mutation
    status: str  # killed | survived | not found | timeout
    seconds: float = 0.0
    detail: str = ""


def locate(root: Path, m: Mutation) -> tuple[str | None, str]:
    """The file's text when `m.original` occurs exactly once in it, else None and why not."""
    path = root / m.file
    if not path.is_file():
        return None, f"{m.file} does not exist"
    text = path.read_text(encoding="utf-8")
    count = text.count(m.original)
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times (must be unique)"
        return None, f"snippet {m.original.splitlines()[0]!r} {where} in {m.file}"
    return text, ""


def copy_repository(dest: Path) -> Path:
    """Copy the working tree (without .git, environments and caches) into `dest`/repo."""
    repo = dest / "repo"
    shutil.copytree(ROOT, repo, ignore=IGNORE, symlinks=True)
    return repo


def pytest_env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo)  # the copy's birddet, not the working tree's (nor an editable install's)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_import_location(repo: Path) -> None:
    """Refuse to run if the copy's `birddet` is not the one imported: every mutation would then survive."""
    out = subprocess.run(
        [sys.executable, "-c", "import birddet, sys; sys.stdout.write(birddet.__file__)"],
        cwd=repo,
        env=pytest_env(repo),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if not Path(out).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"the copy imports birddet from {out}, not from {repo}; the mutations would not be tested")


def run_tests(repo: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool | None, str, float]:
    """(passed, last lines of output, seconds); passed is None on a timeout."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=repo, env=pytest_env(repo), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s", time.perf_counter() - start
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return proc.returncode == 0, "\n".join(lines[-3:]), time.perf_counter() - start


def run_mutation(repo: Path, m: Mutation, timeout: float) -> Outcome:
    text, why = locate(repo, m)
    if text is None:
        return Outcome(m, "not found", detail=why)
    # A test file that does not exist (yet, or any more) is left out: the others still say what they catch.
    tests = tuple(t for t in m.tests if (repo / t.split("::")[0]).is_file())
    if not tests:
        return Outcome(m, "not found", detail=f"none of its test files exist: {', '.join(m.tests)}")
    path = repo / m.file
    path.write_text(text.replace(m.original, m.replacement), encoding="utf-8")
    try:
        passed, tail, seconds = run_tests(repo, tests, timeout)
    finally:
        path.write_text(text, encoding="utf-8")
    if passed is None:
        return Outcome(m, "timeout", seconds, tail)
    return Outcome(
        m, "survived" if passed else "killed", seconds, tail.splitlines()[-1] if passed else _first_failure(tail)
    )


def _first_failure(tail: str) -> str:
    failed = [line for line in tail.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return (failed or tail.splitlines()[-1:] or [""])[0][:160]


def summarize(outcomes: list[Outcome]) -> str:
    lines = []
    for group, named in (("named in issue 18", True), ("others", False)):
        rows = [o for o in outcomes if o.mutation.named == named]
        if not rows:
            continue
        killed = sum(o.status in ("killed", "timeout") for o in rows)
        survived = [o.mutation.name for o in rows if o.status == "survived"]
        missing = [o.mutation.name for o in rows if o.status == "not found"]
        line = f"{group}: {killed}/{len(rows)} killed"
        if survived:
            line += f"; survived: {', '.join(survived)}"
        if missing:
            line += f"; not found: {', '.join(missing)}"
        lines.append(line)
    total_killed = sum(o.status in ("killed", "timeout") for o in outcomes)
    lines.append(f"total: {total_killed}/{len(outcomes)} killed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--list", action="store_true", help="list the mutations and whether each snippet is found")
    parser.add_argument("--baseline", action="store_true", help="first run the related tests on the unmutated copy")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per test run (default 300)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    mutations = list(MUTATIONS)
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in mutations})
        if unknown:
            parser.error(f"unknown mutation(s) {', '.join(unknown)}; see --list")
        mutations = [m for m in mutations if m.name in args.only]
    if args.list:
        for m in mutations:
            _, why = locate(ROOT, m)
            flag = "named " if m.named else "      "
            print(f"{flag}{m.name:45s} {m.file:32s} {why or 'ok'}")
        return 0

    with tempfile.TemporaryDirectory(prefix="birddet-mutate-") as tmp:
        repo = copy_repository(Path(tmp))
        check_import_location(repo)
        if args.baseline:
            tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
            passed, tail, seconds = run_tests(repo, tests, args.timeout * 2)
            print(f"baseline ({seconds:.0f} s): {'pass' if passed else 'FAIL'}", flush=True)
            if not passed:
                print(tail)
                print("the related tests fail without any mutation: fix them first; nothing to measure")
                return 0
        outcomes = []
        for m in mutations:
            o = run_mutation(repo, m, args.timeout)
            outcomes.append(o)
            print(f"{o.status.upper():9s} {m.name:45s} {o.seconds:6.1f} s  {o.detail}", flush=True)
    print(summarize(outcomes))
    if args.json:
        rows = [
            {
                "name": o.mutation.name,
                "file": o.mutation.file,
                "named": o.mutation.named,
                "status": o.status,
                "seconds": round(o.seconds, 1),
                "tests": list(o.mutation.tests),
                "detail": o.detail,
            }
            for o in outcomes
        ]
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
