"""Split one COCO file into train / val (/ test): disjoint, complete, class-stratified, optionally grouped.

- **Grouped.** With `group_by` (a regular expression searched in each `file_name`), all images whose match is the
  same (the first capture group when the pattern has one, else the whole match) go to one split: the frames of one
  camera, site or burst never straddle train and val, where near-duplicates would inflate val AP. Images the pattern
  does not match are their own group and are counted in the result.
- **Stratified.** Groups are assigned greedily, rarest class first (the idea of iterative stratification, Sechidis
  et al., ECML 2011): each group goes to the split that most lacks the group's rarest class relative to its target
  share, ties broken by the split that most lacks images. A split that already holds its share of images takes
  no more while another has room, so the image counts stay on target too. Classes are counted in images that contain them (not boxes),
  so one frame with a flock does not pull the image counts off target. Images without boxes are a class of their own ("negative"),
  so negatives are spread too.
- **Deterministic.** The order of equally rare groups comes from `random.Random(seed)`: the same file and seed give
  the same split on any machine.

Every split file keeps all categories (the label map must not depend on which classes a split happens to contain)
and the input's `info`, with `image_root` if the input recorded one.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from birddet.data.coco_validation import load_coco_dataset
from birddet.errors import InputError
from birddet.fileio import atomic_write_json

__all__ = ["SplitResult", "split_coco", "split_dataset"]

NEGATIVE = "(no boxes)"


@dataclass
class SplitResult:
    files: dict[str, Path]
    images: dict[str, int]
    boxes_per_class: dict[str, dict[str, int]]
    num_groups: int
    unmatched: int = 0
    image_root: str | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{len(self.images)} splits from {self.num_groups} groups:"]
        for split, path in self.files.items():
            per = ", ".join(f"{c}: {n}" for c, n in self.boxes_per_class[split].items())
            lines.append(f"  {split}: {self.images[split]} images -> {path} ({per})")
        if self.unmatched:
            lines.append(f"  {self.unmatched} image(s) did not match --group-by and were grouped alone")
        if self.image_root:
            lines.append(f"image root: {self.image_root}")
        return "\n".join(lines + self.notes)


def split_dataset(
    data: dict[str, Any], fractions: dict[str, float], seed: int, group_by: str | None = None
) -> tuple[dict[str, list[int]], int, int]:
    """Assign image ids to splits; returns `({split: [image ids]}, number of groups, unmatched images)`.

    `fractions` holds each split's share (they must sum to 1); `group_by` is described in the module docstring.
    """
    pattern = _compile(group_by)
    names = {c["id"]: c["name"] for c in data["categories"]}
    labels: dict[int, Counter[str]] = {img["id"]: Counter() for img in data["images"]}
    for a in data["annotations"]:
        if not a.get("iscrowd"):
            labels[a["image_id"]][names[a["category_id"]]] += 1
    groups: dict[str, list[int]] = {}
    unmatched = 0
    for img in sorted(data["images"], key=lambda i: i["id"]):
        key = f"\0image {img['id']}"
        if pattern is not None:
            m = pattern.search(img["file_name"])
            if m is not None:
                key = m.group(1) if pattern.groups else m.group(0)
            else:
                unmatched += 1
        groups.setdefault(key, []).append(img["id"])

    group_labels = {}
    for key, ids in groups.items():
        counts: Counter[str] = Counter()
        for i in ids:  # images per class, not boxes: a flock in one frame is still one example of its class
            counts.update(set(labels[i]) or {NEGATIVE})
        group_labels[key] = counts
    total = Counter()
    for counts in group_labels.values():
        total.update(counts)
    num_images = len(data["images"])

    rng = random.Random(seed)
    keys = sorted(groups)
    rng.shuffle(keys)
    # rarest class first; within the same rarity the shuffled order (stable sort) decides
    keys.sort(key=lambda k: min(total[c] for c in group_labels[k]))
    assigned: dict[str, list[int]] = {s: [] for s in fractions}
    have = {s: Counter() for s in fractions}
    have_images = dict.fromkeys(fractions, 0)
    for key in keys:
        rarest = min(group_labels[key], key=lambda c: (total[c], c))

        def need(s: str, rarest: str = rarest) -> tuple[float, float]:
            return (
                fractions[s] * total[rarest] - have[s][rarest],
                fractions[s] * num_images - have_images[s],
            )

        # splits that still have room for the whole group; when none has, any split (a big group must go somewhere)
        open_ = [s for s in fractions if fractions[s] > 0]
        room = [s for s in open_ if have_images[s] + len(groups[key]) <= math.ceil(fractions[s] * num_images)]
        best = max(room or open_, key=need)
        assigned[best] += groups[key]
        have[best].update(group_labels[key])
        have_images[best] += len(groups[key])
    _ensure_nonempty(assigned, fractions, groups)
    return {s: sorted(ids) for s, ids in assigned.items()}, len(groups), unmatched


def _ensure_nonempty(assigned: dict[str, list[int]], fractions: dict[str, float], groups: dict[str, list[int]]) -> None:
    """A requested split must not end up empty (tiny sets): move the smallest group from the largest split."""
    for s in fractions:
        if fractions[s] > 0 and not assigned[s]:
            donor = max(assigned, key=lambda d: len(assigned[d]))
            candidates = [ids for ids in groups.values() if set(ids) <= set(assigned[donor])]
            if len(candidates) < 2:
                raise InputError(
                    f"not enough groups to fill every split ({len(groups)} groups); use fewer splits or a looser "
                    "--group-by"
                )
            smallest = min(candidates, key=len)
            assigned[donor] = [i for i in assigned[donor] if i not in set(smallest)]
            assigned[s] = list(smallest)


def _compile(group_by: str | None) -> re.Pattern[str] | None:
    if not group_by:
        return None
    try:
        return re.compile(group_by)
    except re.error as e:
        raise InputError(f"--group-by {group_by!r} is not a valid regular expression: {e}") from e


def split_coco(
    coco: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    val: float,
    test: float = 0.0,
    seed: int = 0,
    group_by: str | None = None,
) -> SplitResult:
    """Read and validate `coco`, split it, write `out_dir/{train,val[,test]}.json` atomically."""
    for name, f in (("--val", val), ("--test", test)):
        if not 0.0 <= f < 1.0:
            raise InputError(f"{name} must be a fraction in [0, 1), got {f}")
    if val <= 0:
        raise InputError(f"--val must be above 0 (a run needs a validation split), got {val}")
    if val + test >= 1.0:
        raise InputError(f"--val {val} + --test {test} leaves nothing to train on; keep their sum below 1")
    data, _ = load_coco_dataset(coco, ".", check_files=False)
    fractions = {"train": 1.0 - val - test, "val": val, **({"test": test} if test > 0 else {})}
    if len(data["images"]) < len(fractions):
        raise InputError(f"{coco}: {len(data['images'])} image(s) cannot fill {len(fractions)} splits")
    assignment, num_groups, unmatched = split_dataset(data, fractions, seed, group_by)
    names = {c["id"]: c["name"] for c in data["categories"]}
    files, counts, per_class = {}, {}, {}
    for split, ids in assignment.items():
        keep = set(ids)
        part = {
            **{k: v for k, v in data.items() if k not in ("images", "annotations")},
            "images": [img for img in data["images"] if img["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        }
        info = data.get("info") if isinstance(data.get("info"), dict) else {}
        part["info"] = {**info, "split": split, "split_seed": seed, "split_of": str(coco)}
        files[split] = atomic_write_json(Path(out_dir) / f"{split}.json", part, indent=1)
        counts[split] = len(part["images"])
        c = Counter(names[a["category_id"]] for a in part["annotations"] if not a.get("iscrowd"))
        per_class[split] = dict(sorted(c.items()))
    return SplitResult(
        files=files,
        images=counts,
        boxes_per_class=per_class,
        num_groups=num_groups,
        unmatched=unmatched,
        image_root=(data.get("info") or {}).get("image_root") if isinstance(data.get("info"), dict) else None,
    )
