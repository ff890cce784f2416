"""Config ranges: every numeric field has one, and a value outside it is a one-line error naming the key."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Annotated, Any

import pytest

import birddet.config as config_module
from birddet.cli import main
from birddet.config import ClassifierConfig, Config, config_from_dict, config_to_dict, load_config
from birddet.errors import InputError


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.log_every=0", "train.log_every"),
        ("train.seed=-1", "train.seed"),
        ("train.seed=4294967296", "train.seed"),
        ("train.lr=nan", "train.lr"),
        ("train.lr=.inf", "train.lr"),
        ("data.workers=-1", "data.workers"),
        ("train.warmup_iters=-10", "train.warmup_iters"),
        ("train.grad_clip=-1.0", "train.grad_clip"),
        ("model.roi_heads.roi_output_size=0", "model.roi_heads.roi_output_size"),
        ("model.roi_heads.representation_size=2000000", "model.roi_heads.representation_size"),
        ("model.rpn.anchor_sizes=[32,64,0,256,512]", "model.rpn.anchor_sizes[2]"),
        ("model.rpn.nms_thresh=1.5", "model.rpn.nms_thresh"),
        ("data.tile.overlap=1.0", "data.tile.overlap"),
        ("train.ema_decay=1.0", "train.ema_decay"),
    ],
)
def test_out_of_range_values_are_refused_with_the_key(override: str, key: str) -> None:
    with pytest.raises(InputError, match=f"'{re.escape(key)}' must be") as err:
        load_config(None, [override])
    assert override in str(err.value)  # where: the override that brought the value in


@pytest.mark.parametrize(
    ("override", "key"),
    [("train.label_smoothing=1.0", "train.label_smoothing"), ("model.image_size=0", "model.image_size")],
)
def test_classifier_config_ranges(override: str, key: str) -> None:
    with pytest.raises(InputError, match=rf"'{key}' must be"):
        load_config(None, [override], schema=ClassifierConfig)


def test_values_at_the_edges_of_their_ranges_load() -> None:
    cfg = load_config(None, ["train.seed=4294967295", "train.warmup_iters=0", "data.workers=0", "train.grad_clip=null"])
    assert (cfg.train.seed, cfg.train.warmup_iters, cfg.data.workers, cfg.train.grad_clip) == (2**32 - 1, 0, 0, None)


def test_a_checkpoint_config_is_range_checked_too() -> None:
    data = config_to_dict(Config())
    data["train"]["lr"] = float("nan")
    with pytest.raises(InputError, match=r"best\.pt: 'train\.lr' must be a finite number, got nan"):
        config_from_dict(data, "best.pt")


def test_yaml_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  log_every: 0\n")
    with pytest.raises(InputError, match=r"cfg\.yaml: 'train\.log_every' must be >= 1, got 0"):
        load_config(path)


def test_cli_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    code = main(["train", str(config), "--out", str(tmp_path / "run"), "train.seed=-1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("birddet: error:") and "'train.seed' must be >= 0" in err and len(err.splitlines()) == 1


def _numeric(tp: Any) -> bool:
    """Whether an annotation (with its Annotated layers stripped) holds ints or floats, directly or in a list."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, typing.types.UnionType, list):
        return any(_numeric(a) for a in args if a is not type(None))
    return tp in (int, float)


def _ranged(tp: Any) -> bool:
    """Whether every numeric part of an annotation carries a `Range`."""
    from birddet.config import Range

    if typing.get_origin(tp) is Annotated:
        return any(isinstance(m, Range) for m in tp.__metadata__) or not _numeric(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, typing.types.UnionType, list):
        return all(_ranged(a) for a in args if a is not type(None))
    return tp not in (int, float)


def test_every_numeric_field_has_a_range() -> None:
    """A new numeric config field must say what it accepts (rgb_stats is checked for finiteness only)."""
    classes = [c for c in vars(config_module).values() if isinstance(c, type) and dataclasses.is_dataclass(c)]
    unranged = []
    for cls in classes:
        if cls.__name__ == "Range":
            continue
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            if f.name != "rgb_stats" and _numeric(hints[f.name]) and not _ranged(hints[f.name]):
                unranged.append(f"{cls.__name__}.{f.name}")
    assert len(classes) > 10
    assert unranged == []
