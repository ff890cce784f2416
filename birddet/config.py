"""Typed configuration: dataclass defaults are the single source of truth; YAML files say only what differs.

`load_config(path, overrides)` reads a YAML file into `Config`, applies `KEY=VALUE` overrides
(`train.lr=1e-4 data.train.ann=...`), and checks every key and type. An unknown key or a value of the wrong type
is an `InputError` naming the key and where it came from. Every numeric field carries its allowed range in its
annotation (`Annotated[int, Range(ge=1)]`), and one pass (`check_ranges`, `birddet/config_ranges.py`) checks them
all, plus finiteness of every float, for YAML files, overrides and the configs stored in checkpoints alike. The
resolved config is saved with every run and inside every checkpoint, so a checkpoint alone rebuilds its model.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from birddet.config_ranges import (  # the fields' annotations use these; tests import Range from here
    MAX_EPOCHS,
    BatchSize,
    BoxCount,
    Fraction,
    ImageSide,
    LayerDecay,
    LearningRate,
    Range,
    Seed,
    WarmupIters,
    WeightDecay,
    Workers,
    check_ranges,
)
from birddet.errors import InputError


@dataclass
class BackboneConfig:
    preset: str = "vit_reg4_m16_rms_avg"
    # A birder weights file or registered name (`vit_reg4_m16_rms_avg_i-jepa-inat21`); null starts from random init.
    weights: str | None = None
    # -1: train everything; 0: freeze the patch embedding; k: the patch embedding and the first k blocks.
    freeze_blocks: Annotated[int, Range(ge=-1, le=1024)] = -1
    grad_checkpointing: bool = False
    # ViTDet window attention (arXiv 2203.16527), in patches per window side: 0 = global attention in every block,
    # exactly birder's network. Same parameters either way, so any weights file runs windowed or global.
    window_size: Annotated[int, Range(ge=0, le=1024)] = 0
    # Blocks that keep global attention when window_size > 0; null = ViTDet's four evenly spaced blocks scaled to
    # the depth (2, 5, 8, 11 of 12). Register tokens take part only in these blocks (see backbone/vit.py).
    global_blocks: list[Annotated[int, Range(ge=0, le=1024)]] | None = None
    # Input size the backbone's position embedding was trained at; filled in from the weights file (or
    # model.image_size for random init) so that a checkpoint rebuilds the same network.
    pretrain_size: list[ImageSide] | None = None


@dataclass
class PyramidConfig:
    out_channels: Annotated[int, Range(ge=1, le=4096)] = 256
    # ViTDet's simple feature pyramid: strides 4, 8, 16, 32 from the stride-16 neck; p6 by max-pool of p5.
    scale_factors: list[Annotated[float, Range(gt=0, le=8)]] = field(default_factory=lambda: [4.0, 2.0, 1.0, 0.5])
    top_block: bool = True


@dataclass
class RPNConfig:
    anchor_sizes: list[Annotated[int, Range(ge=1, le=16384)]] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    aspect_ratios: list[Annotated[float, Range(gt=0, le=100)]] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    conv_depth: Annotated[int, Range(ge=1, le=16)] = 1
    pre_nms_top_n_train: BoxCount = 2000
    pre_nms_top_n_test: BoxCount = 1000
    post_nms_top_n_train: BoxCount = 2000
    # 300 proposals at test time, as Faster R-CNN (arXiv 1506.01497) evaluates its RPN: a bird image holds few
    # objects, and the box head's cost is linear in this number (see benchmarks/detector.py).
    post_nms_top_n_test: BoxCount = 300
    nms_thresh: Fraction = 0.7
    fg_iou_thresh: Fraction = 0.7
    bg_iou_thresh: Fraction = 0.3
    batch_size_per_image: BoxCount = 256
    positive_fraction: Fraction = 0.5
    score_thresh: Fraction = 0.0


@dataclass
class RoIHeadsConfig:
    # "2mlp": torchvision's TwoMLPHead; "4conv1fc": four 3x3 convs with norm and one FC, as in ViTDet.
    box_head: Literal["2mlp", "4conv1fc"] = "2mlp"
    representation_size: Annotated[int, Range(ge=1, le=16384)] = 1024
    conv_dim: Annotated[int, Range(ge=1, le=4096)] = 256
    roi_output_size: Annotated[int, Range(ge=1, le=64)] = 7
    # 0: torchvision's adaptive sampling (ceil(roi size / output size) points per bin).
    sampling_ratio: Annotated[int, Range(ge=0, le=64)] = 2
    score_thresh: Fraction = 0.05
    nms_thresh: Fraction = 0.5
    detections_per_img: BoxCount = 100
    fg_iou_thresh: Fraction = 0.5
    bg_iou_thresh: Fraction = 0.5
    batch_size_per_image: BoxCount = 512
    positive_fraction: Fraction = 0.25
    # The box-regression loss (birddet/models/box_loss.py): torchvision's smooth-L1 on the encoded offsets, or GIoU
    # on the boxes (trains the overlap that COCO AP at IoU 0.5:0.95 scores), times box_loss_weight.
    box_loss: Literal["smooth_l1", "giou"] = "smooth_l1"
    box_loss_weight: Annotated[float, Range(gt=0, le=100)] = 1.0
    # torchvision's BoxCoder weights for (dx, dy, dw, dh); they scale the regression targets, and so the smooth-L1
    # loss, and are saved with the model's config (inference decodes with the same weights).
    bbox_reg_weights: list[Annotated[float, Range(gt=0, le=1000)]] = field(
        default_factory=lambda: [10.0, 10.0, 5.0, 5.0]
    )
    # At inference, pool at each detected box and regress it again this many times (birddet/models/box_refine.py):
    # tighter boxes for a RoIAlign + box-head pass over the kept boxes; 0 is torchvision's single regression.
    refine_steps: Annotated[int, Range(ge=0, le=3)] = 0


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    # Longest image side the detector sees; min_size/max_size, when set, follow torchvision's rule instead
    # (shorter side to min_size unless the longer would exceed max_size).
    image_size: ImageSide = 640
    min_size: ImageSide | None = None
    max_size: ImageSide | None = None
    # Pad every image to image_size x image_size, as ViTDet does: the ViT then sees the same token grid whatever
    # an image's batch mates are, so a detection never depends on batching. Applies when min/max_size are null.
    fixed_square: bool = True
    # Normalisation; null takes the backbone file's rgb_stats (filled in when the model is built).
    rgb_stats: dict[str, list[float]] | None = None
    # Inference (validation, eval, predict, export) at another square than training: a model trained at 224 px
    # with scale augmentation has seen birds larger than 224 px photos show them, and its stride-16 features place
    # box edges more finely on a finer grid (docs/training.md). Null: image_size. Needs the fixed square.
    test_size: ImageSide | None = None
    # Test-time augmentation at inference: "flip" also detects in the mirrored image and fuses the two box sets
    # (`birddet.models.tta`): tighter boxes for twice the inference cost.
    tta: Literal["none", "flip"] = "none"
    # More test squares (multiples of 32) for test-time augmentation: the detector also runs at each of these sizes
    # (with its mirror under `tta: flip`) and every view's boxes are fused with the test square's. A bird a few
    # pixels wide is found and boxed at one scale, a large one at another (docs/training.md). Images are read at the
    # largest square; one more square costs about one more detector pass. Empty: the test square only.
    tta_sizes: list[ImageSide] = field(default_factory=list)

    @property
    def input_size(self) -> int:
        """Longest side every training image is resized to before the detector (and every image at inference,
        unless `test_size` says otherwise: see `inference_size`)."""
        return self.max_size or self.image_size

    @property
    def test_square(self) -> int:
        """The square the network runs at in validation, eval, predict and export (the first view under TTA)."""
        return self.test_size or self.input_size

    @property
    def inference_size(self) -> int:
        """Longest side images are read at for validation, eval and predict: the test square, or the largest of
        `tta_sizes` when that is larger, so no view is an upsampled copy of a smaller read."""
        return max([self.test_square, *self.tta_sizes])


@dataclass
class SplitConfig:
    ann: str | None = None
    images: str | None = None


@dataclass
class SyntheticConfig:
    """The embedded default dataset: generated into `dir` when its files are missing."""

    dir: str | None = None
    num_train: Annotated[int, Range(ge=1, le=1_000_000)] = 160
    num_val: Annotated[int, Range(ge=1, le=1_000_000)] = 40
    seed: Seed = 0
    preset: str = "square"  # square | realistic | dense (birddet.data.synthetic.SYNTH_PRESETS)
    species: Literal["easy", "hard"] = "easy"  # hard: six look-alike songbirds (birddet.data.synthetic_species)


@dataclass
class AugmentConfig:
    scale_range: list[Annotated[float, Range(gt=0, le=100)]] = field(default_factory=lambda: [0.1, 2.0])
    hflip: Fraction = 0.5
    color_jitter: Fraction = 0.4
    # Probability that a training sample is a 2x2 mosaic with three other images (YOLOv4); 0 disables it.
    mosaic: Fraction = 0.0
    # Train the last N epochs without mosaic (YOLO's close_mosaic), so the model ends on whole photos.
    mosaic_off_epochs: Annotated[int, Range(ge=0, le=MAX_EPOCHS)] = 0
    # Probability of pasting birds (boxes with a feathered margin) from another training image; 0 disables it.
    copy_paste: Fraction = 0.0
    # Multi-scale training (YOLO's multi_scale): each training batch enters the network at the input size times one of
    # these factors (rounded to a multiple of 32), e.g. [0.75, 1.0, 1.25]; evaluation stays at the input size.
    # Empty: every batch at the input size.
    multi_scale: list[Annotated[float, Range(gt=0, le=8)]] = field(default_factory=list)


@dataclass
class TileConfig:
    """Train on windows cut from big images (aerial surveys, colonies) instead of whole images shrunk to
    `model.image_size`. Off while `size` is null. The window list is computed once from the COCO file (image sizes
    and boxes, no decoding), so it is the same on every run and a resumed run sees the same items."""

    # Window side in original pixels (model.image_size keeps birds at their own size); null = whole images.
    size: Annotated[int, Range(ge=16, le=1_000_000)] | None = None
    # Fraction of `size` shared by neighbouring windows, as in tiled prediction.
    overlap: Annotated[float, Range(ge=0, lt=1)] = 0.25
    # A box is kept in a window when at least this fraction of its area is inside; windows that only hold slivers
    # below it are left out (they would teach the detector that part of a bird is background).
    min_visibility: Fraction = 0.5
    # Fraction of the windows without any bird that are kept as negatives (chosen by train.seed).
    negatives: Fraction = 0.1


@dataclass
class DataConfig:
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tile: TileConfig = field(default_factory=TileConfig)
    workers: Workers = 2
    aspect_ratio_grouping: bool = True
    # Keep the training images decoded in RAM at the input size (YOLO's cache=ram): a few hundred big photos then
    # cost their JPEG decode and shrink once, not every epoch (on a CPU that is a fifth of a step at 192 px, more with
    # mosaic). Same pixels as without it; skipped with a warning when it would need over half the free memory.
    cache_images: bool = False


@dataclass
class TrainConfig:
    epochs: Annotated[int, Range(ge=1, le=MAX_EPOCHS)] = 12
    batch_size: BatchSize = 2
    lr: LearningRate = 1e-4
    weight_decay: WeightDecay = 0.1
    # Layer-wise LR decay over backbone blocks (ViTDet uses 0.7 for ViT-B); 1.0 disables it.
    layer_decay: LayerDecay = 0.7
    backbone_lr_mult: Annotated[float, Range(ge=0, le=100)] = 1.0
    schedule: Literal["cosine", "step"] = "cosine"
    step_milestones: list[Fraction] = field(default_factory=lambda: [0.75, 0.9])
    warmup_iters: WarmupIters = 250
    warmup_factor: Annotated[float, Range(gt=0, le=1)] = 0.001
    min_lr_ratio: Fraction = 0.0
    grad_clip: Annotated[float, Range(gt=0)] | None = 1.0
    accumulate: Annotated[int, Range(ge=1, le=1024)] = 1
    amp: Literal["none", "bf16", "fp16"] = "none"
    ema: bool = False
    ema_decay: Annotated[float, Range(ge=0, lt=1)] = 0.9998
    #: EMA warm-up (updates): the decay after t updates is `ema_decay * (1 - exp(-t / ema_tau))` (Ultralytics' ramp),
    #: so the first steps' random-ish weights fade out instead of weighing ~5 % after 3,000 steps at 0.999.
    ema_tau: Annotated[float, Range(gt=0, le=1e9)] = 2000.0
    eval_every: Annotated[int, Range(ge=1, le=MAX_EPOCHS)] = 1
    eval_batch_size: BatchSize = 4
    log_every: Annotated[int, Range(ge=1)] = 20
    seed: Seed = 0
    device: str = "auto"
    max_steps: Annotated[int, Range(ge=1)] | None = None
    # Minutes the run may take, evaluation and checkpoints included: after measuring its first epoch the run sets
    # its epoch count (and LR schedule) to fit; `epochs` then only shapes the first epoch's schedule. Null: no budget.
    time_budget: Annotated[float, Range(gt=0)] | None = None
    # What the budget counts: "wall" (real time) or "cpu" (this process's CPU time; comparable on a shared machine).
    budget_clock: Literal["wall", "cpu"] = "wall"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# -- species classifier (`birddet train-classifier`) -------------------------------------------------------------
@dataclass
class ClassifierModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # "new": a fresh, zero-initialised head for the dataset's classes on the backbone file (e.g. the iNat21 file);
    # "keep": the file's own head, whose class names must be the dataset's (continue training a birddet classifier).
    head: Literal["new", "keep"] = "new"
    # Crop side in pixels (a multiple of the patch size). It becomes the size recorded in best.pt, so
    # `birddet predict --classifier RUN/best.pt` crops at it. The crop rule itself (margin, square, clip) is
    # predict's and is not configurable, so training and inference always see the same pixels.
    image_size: ImageSide = 224
    # Normalisation; null takes the backbone file's rgb_stats (birder's default (0.5, 0.5) for random init).
    rgb_stats: dict[str, list[float]] | None = None


@dataclass
class CropAugmentConfig:
    # Each box edge moves by up to this fraction of the box size before the crop rule is applied: the crops then
    # look like a detector's imperfect boxes rather than perfect annotations. 0 disables it.
    box_jitter: Fraction = 0.1
    hflip: Fraction = 0.5
    color_jitter: Fraction = 0.2
    # torchvision's automatic augmentation of each crop after flip and colour jitter: "trivial" (TrivialAugment,
    # Müller & Hutter 2021: one random op at a random strength), "randaugment" (Cubuk et al. 2020), or "none".
    auto_augment: Literal["none", "trivial", "randaugment"] = "none"


@dataclass
class ClassifierDataConfig:
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    augment: CropAugmentConfig = field(default_factory=CropAugmentConfig)
    workers: Workers = 2
    # "loss": cross-entropy weighted by n / (C * n_class) so rare classes count as much as common ones; "none".
    balance: Literal["loss", "none"] = "loss"
    # Decode each image once and keep only the pixels each box's crops come from (CocoCrops.cache_crops): on a CPU
    # a crop otherwise costs a full photo decode, several times the classifier's own step at small crop sizes.
    cache_crops: bool = False


@dataclass
class ClassifierTrainConfig(TrainConfig):
    """The detector's training knobs with classifier-sized defaults (crops are small, so batches are larger)."""

    epochs: Annotated[int, Range(ge=1, le=MAX_EPOCHS)] = 10
    batch_size: BatchSize = 32
    lr: LearningRate = 1e-4
    weight_decay: WeightDecay = 0.05
    layer_decay: LayerDecay = 0.75
    warmup_iters: WarmupIters = 50
    eval_batch_size: BatchSize = 64
    label_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.1


@dataclass
class ClassifierConfig:
    """`birddet train-classifier`: the data keys are the detector's; a box's category is its class."""

    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    data: ClassifierDataConfig = field(default_factory=ClassifierDataConfig)
    train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)


# -- conversion ------------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp` (recursing into dataclasses and containers)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"{where}: '{key}' must be a mapping of {tp.__name__} fields, got {value!r}")
        return _from_dict(tp, value, key, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, where)
            except InputError as err:
                errors.append(str(err))
        raise InputError(errors[0] if len(errors) == 1 else f"{where}: '{key}' has an invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise InputError(f"{where}: '{key}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise InputError(f"{where}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return {_coerce(k, args[0], key, where): _coerce(v, args[1], f"{key}.{k}", where) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise InputError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r}")
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        full = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise InputError(f"{where}: unknown config key '{full}'; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        kwargs[k] = _coerce(v, hints[k], key, where)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], where: str = "config", schema: type = Config) -> Any:
    """Build a `Config` (or another run config `schema`, e.g. `ClassifierConfig`) from a plain mapping, checking
    keys, types and ranges."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{where}: the top level must be a mapping with model/data/train sections")
    cfg = _from_dict(schema, data, "", where)
    check_ranges(cfg, where)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise InputError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `KEY=VALUE` strings to a config mapping; values are parsed as YAML (`1e-4`, `null`, `[1, 2]`)."""
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override '{item}' must look like KEY=VALUE (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise InputError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_path(data, key, value)
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None, schema: type = Config) -> Any:
    """Read a YAML config (or the defaults when `path` is None), apply overrides, validate everything.

    `schema` is the run config's dataclass: `Config` (detector) or `ClassifierConfig` (species classifier)."""
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise InputError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: the top level must be a mapping with model/data/train sections")
    config_from_dict(data, where, schema)  # report file errors against the file, before overrides mix in
    if overrides:
        data = apply_overrides(data, overrides)
        where = f"{where} with overrides {' '.join(overrides)}"
    return config_from_dict(data, where, schema)


def save_config(cfg: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path
