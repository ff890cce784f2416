"""Category maps: a model's contiguous detector labels, and the one rule that matches two files' categories by name.

torchvision wants contiguous labels 1..K with 0 = background; `CategoryMap` translates to and from the model's
category ids (a COCO id may be 0: it is never confused with the background label). Wherever a model's categories
meet another file's (a val split, a resumed checkpoint's train split, `birddet eval`'s ground truth, a results file
in `birddet score`), `align_categories` matches them by name, never by id: ids follow the name, and detections are
written with the scored file's own ids, which are what every output file uses.

Apart from the dataset (`birddet.data.coco`) because a category map is needed without any annotation file: the
detector, checkpoints, the evaluator and `birddet score` use it, and none of them needs a torch `Dataset` for it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from birddet.data.coco_validation import MAX_IDS_SHOWN
from birddet.errors import InputError

__all__ = ["CategoryAlignment", "CategoryMap", "align_categories", "format_categories"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Category map


@dataclass
class CategoryMap:
    """Dataset category ids <-> contiguous detector labels (1..K; 0 is background, as torchvision requires).

    `coco_ids[i]` and `names[i]` belong to label `i + 1`.
    """

    coco_ids: list[int]
    names: list[str]

    def __post_init__(self) -> None:
        if len(self.coco_ids) != len(self.names):
            raise InputError(f"category map: {len(self.coco_ids)} ids but {len(self.names)} names")
        if len(set(self.coco_ids)) != len(self.coco_ids):
            raise InputError(f"category map: duplicate category ids in {self.coco_ids}")
        self._label_of = {cid: i + 1 for i, cid in enumerate(self.coco_ids)}

    @classmethod
    def from_categories(cls, categories: list[dict[str, Any]] | Mapping[int | str, str]) -> CategoryMap:
        """Build from a COCO `categories` list; sorted by id so the same file always gives the same labels.

        A `{coco_id: name}` mapping (a checkpoint's `categories`) is accepted too and handed to `from_dict`.
        """
        if isinstance(categories, Mapping):
            return cls.from_dict(categories)
        cats = sorted(categories, key=lambda c: int(c["id"]))
        return cls(coco_ids=[int(c["id"]) for c in cats], names=[str(c["name"]) for c in cats])

    @classmethod
    def from_dict(cls, d: Mapping[int | str, str]) -> CategoryMap:
        """Inverse of `as_dict`; keys may be strings after a JSON round trip."""
        try:
            items = sorted((int(k), str(v)) for k, v in d.items())
        except (TypeError, ValueError) as e:
            raise InputError(f"category map: keys must be integer category ids, got {list(d)[:MAX_IDS_SHOWN]}") from e
        return cls(coco_ids=[k for k, _ in items], names=[v for _, v in items])

    @property
    def num_classes(self) -> int:
        """Number of detector classes including background (K + 1), i.e. torchvision's `num_classes`."""
        return len(self.coco_ids) + 1

    def to_label(self, coco_id: int) -> int:
        try:
            return self._label_of[int(coco_id)]
        except KeyError:
            raise InputError(f"category id {coco_id} is not one of the known categories {self.coco_ids}") from None

    def to_coco_id(self, label: int) -> int:
        self._check_label(label)
        return self.coco_ids[int(label) - 1]

    def name(self, label: int) -> str:
        self._check_label(label)
        return self.names[int(label) - 1]

    def as_dict(self) -> dict[int, str]:
        """COCO id -> name, the form stored in checkpoints."""
        return dict(zip(self.coco_ids, self.names))

    def _check_label(self, label: int) -> None:
        if not 1 <= int(label) <= len(self.coco_ids):
            raise ValueError(f"label {label} is outside 1..{len(self.coco_ids)} (0 is background)")


def _name_key(name: str) -> str:
    """Category names are compared case-insensitively ("Robin" in one file is "robin" in another)."""
    return str(name).casefold()


def format_categories(categories: Mapping[int, str], limit: int = 20) -> str:
    """`{1: 'gull', 2: 'robin'}`, cut after `limit` entries, for error messages that list a category map."""
    items = sorted(categories.items())
    shown = ", ".join(f"{cid}: {name!r}" for cid, name in items[:limit])
    return "{" + shown + (f", ... ({len(items)} in all)" if len(items) > limit else "") + "}"


def _ids_by_name(categories: Mapping[int, str], source: str) -> dict[str, int]:
    """Name key -> category id; two categories with one name are an error, since a name must mean one class."""
    out: dict[str, int] = {}
    for cid, name in sorted(categories.items()):
        key = _name_key(name)
        if key in out:
            raise InputError(
                f"{source}: categories {out[key]} ({categories[out[key]]!r}) and {cid} ({name!r}) have the same name "
                "(names are matched case-insensitively); give each class one category"
            )
        out[key] = cid
    return out


@dataclass
class CategoryAlignment:
    """A model's categories matched to a dataset's by name: what `align_categories` returns.

    - `to_dataset`: model category id -> the dataset's id for the same name (what pycocotools scores against);
    - `unscored`: the model's categories the dataset does not have; their detections are left out of scoring;
    - `unknown`: dataset categories its annotations use that the model does not know (only non-empty with
      `strict=False`; a caller that collects problems turns `unknown_message()` into its error).
    """

    model: CategoryMap
    dataset: dict[int, str]
    to_dataset: dict[int, int]
    unscored: dict[int, str]
    unknown: dict[int, str]
    model_source: str
    dataset_source: str
    to_model: dict[int, int] = field(init=False, repr=False)  # dataset id -> model id (the names both have)

    def __post_init__(self) -> None:
        self.to_model = {d: m for m, d in self.to_dataset.items()}

    @property
    def renumbered(self) -> dict[int, int]:
        """Model id -> dataset id for the shared names whose ids differ."""
        return {m: d for m, d in self.to_dataset.items() if m != d}

    def label(self, dataset_id: int) -> int:
        """The detector label (1..K) of a dataset category id: the model's label for the same name."""
        try:
            model_id = self.to_model[int(dataset_id)]
        except KeyError:
            raise InputError(
                f"{self.dataset_source}: category id {dataset_id} "
                f"({self.dataset.get(int(dataset_id), 'not in its categories')!r}) has no category of the same name "
                f"in {self.model_source} {format_categories(self.model.as_dict())}"
            ) from None
        return self.model.to_label(model_id)

    def dataset_results(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """COCO results in the model's category ids -> the dataset's ids; results of `unscored` categories are left
        out. Unchanged (the same list) when the ids already agree."""
        if not self.renumbered and not self.unscored:
            return results
        out = []
        for r in results:
            cid = self.to_dataset.get(int(r["category_id"]))
            if cid is not None:
                out.append({**r, "category_id": cid})
        return out

    def unknown_message(self) -> str:
        """Why `unknown` is fatal, listing both category maps."""
        shown = ", ".join(f"{cid} ({name!r})" for cid, name in sorted(self.unknown.items()))
        return (
            f"{self.dataset_source} has categories {self.model_source} was not trained on: {shown} "
            f"({self.model_source} has {format_categories(self.model.as_dict())}, {self.dataset_source} has "
            f"{format_categories(self.dataset)}); a category is matched by its name (case-insensitively), not by its "
            "id: rename them to the model's names, or use a model trained on them"
        )

    def log(self, logger: logging.Logger | None = None) -> None:
        """Say how the ids were matched: a renumbering as info, model categories left out of scoring as a warning
        (nothing when both sides number the same names the same way)."""
        logger = logger or log
        if self.renumbered:
            names = self.model.as_dict()
            pairs = ", ".join(f"{names[m]!r} {m} -> {d}" for m, d in sorted(self.renumbered.items()))
            logger.info(
                "%s numbers its categories differently from %s; matched by name, detections are written with the "
                "dataset's ids: %s", self.dataset_source, self.model_source, pairs,
            )  # fmt: skip
        if self.unscored:
            shown = ", ".join(f"{cid} ({name!r})" for cid, name in sorted(self.unscored.items()))
            logger.warning(
                "%s has categories %s lacks: %s; their detections are left out of scoring",
                self.model_source, self.dataset_source, shown,
            )  # fmt: skip


def align_categories(
    model: Mapping[int, str] | CategoryMap,
    dataset: Mapping[int, str],
    *,
    used: Collection[int] | None = None,
    model_source: str = "the model",
    dataset_source: str = "the dataset",
    strict: bool = True,
) -> CategoryAlignment:
    """Match a model's `{id: name}` to a dataset's `{id: name}` by name: the one rule wherever two category maps meet.

    Why names: files converted separately number their classes in their own order (sorted names, say), so equal ids
    can mean different birds and equal names with different ids are common. Ids follow the name: training labels
    of a file come from the model's category of the same name, and detections are written with the dataset's id
    for their name, since the dataset's own ids are what pycocotools scores. Model categories the dataset lacks are
    `unscored`. A dataset category that its annotations use (`used`; all of them when None) and the model does not
    know is an `InputError` listing both maps (or, with `strict=False`, recorded in `unknown`). Two categories with
    one name on either side are an `InputError`.
    """
    cmap = model if isinstance(model, CategoryMap) else CategoryMap.from_dict(model)
    dataset = {int(k): str(v) for k, v in dataset.items()}
    model_ids = _ids_by_name(cmap.as_dict(), model_source)
    dataset_ids = _ids_by_name(dataset, dataset_source)
    to_dataset = {mid: dataset_ids[key] for key, mid in model_ids.items() if key in dataset_ids}
    unscored = {mid: name for mid, name in cmap.as_dict().items() if mid not in to_dataset}
    used_ids = set(dataset) if used is None else {int(c) for c in used}
    unknown = {
        cid: name for cid, name in sorted(dataset.items()) if cid in used_ids and _name_key(name) not in model_ids
    }
    alignment = CategoryAlignment(
        model=cmap,
        dataset=dataset,
        to_dataset=to_dataset,
        unscored=unscored,
        unknown=unknown,
        model_source=model_source,
        dataset_source=dataset_source,
    )
    if unknown and strict:
        raise InputError(alignment.unknown_message())
    return alignment
