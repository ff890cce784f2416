"""The allowed range of every numeric config field, and the one pass that checks a config against them.

A numeric field carries its range in its annotation (`Annotated[int, Range(ge=1)]`, also inside lists; the shared
aliases below name the common ones), and `check_ranges` walks a config dataclass recursively, checking each value
against its `Range` and every float for finiteness. `birddet/config.py` declares the fields and calls the check for
YAML files, overrides and the configs stored in checkpoints alike; the machinery is here, apart from the schema, so
that config.py reads as the dataclasses and their loading.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from birddet.errors import InputError


@dataclass(frozen=True)
class Range:
    """The values a numeric config field may take: `ge`/`le` inclusive, `gt`/`lt` exclusive bounds (None: open).

    Attached to a field's annotation (`Annotated[int, Range(ge=1)]`, also inside lists) and checked by
    `check_ranges` for every config, so a value that would crash a run hours in (a zero `log_every`, a NaN
    learning rate) or make it allocate absurd amounts (a 2e6-wide box head) is refused at load time, named.
    Floats must also be finite, whatever their range.
    """

    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return " and ".join(f"{op} {_number(v)}" for op, v in bounds if v is not None)

    def contains(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


MAX_EPOCHS = 100_000
# Shared ranges. Sizes stop where memory would: an image side of 16384 px is already 800 MB as float RGB.
ImageSide = Annotated[int, Range(ge=16, le=16384)]
BoxCount = Annotated[int, Range(ge=1, le=100_000)]
Fraction = Annotated[float, Range(ge=0, le=1)]
BatchSize = Annotated[int, Range(ge=1, le=65536)]
Workers = Annotated[int, Range(ge=0, le=256)]
Seed = Annotated[int, Range(ge=0, lt=2**32)]  # numpy's seed range; the trainer seeds numpy with it
LearningRate = Annotated[float, Range(ge=0, le=10)]  # 0 freezes the weights (tests use it)
WeightDecay = Annotated[float, Range(ge=0, le=10)]
LayerDecay = Annotated[float, Range(gt=0, le=1)]
WarmupIters = Annotated[int, Range(ge=0, le=10_000_000)]


@functools.cache
def _hints_with_ranges(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def check_ranges(cfg: Any, where: str = "config", prefix: str = "") -> None:
    """Check every field of the config dataclass `cfg` (recursively) against the `Range` in its annotation, and
    every float for finiteness; the first violation is an `InputError` naming the key, the value and the range."""
    hints = _hints_with_ranges(type(cfg))
    for f in dataclasses.fields(cfg):
        key = f"{prefix}.{f.name}" if prefix else f.name
        _check_value(getattr(cfg, f.name), hints[f.name], key, where)


def _check_value(value: Any, tp: Any, key: str, where: str) -> None:
    ranges: list[Range] = []
    while typing.get_origin(tp) is Annotated:
        ranges.extend(m for m in tp.__metadata__ if isinstance(m, Range))
        tp = typing.get_args(tp)[0]
    if value is None:
        return
    if dataclasses.is_dataclass(value):
        check_ranges(value, where, key)
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in (a for a in args if a is not type(None)):
            _check_value(value, arg, key, where)
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_value(v, args[0] if origin is list and args else Any, f"{key}[{i}]", where)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_value(v, args[1] if origin is dict and len(args) == 2 else Any, f"{key}.{k}", where)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: '{key}' must be a finite number, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        for r in ranges:
            if not r.contains(value):
                raise InputError(f"{where}: '{key}' must be {r.describe()}, got {value!r}")
