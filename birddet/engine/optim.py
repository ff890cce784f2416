"""Optimizer and learning-rate schedule, shared by detector and species-classifier training.

ViTDet (arXiv 2203.16527, section 4) fine-tunes a pretrained ViT with AdamW and *layer-wise LR decay*: the deeper a
block, the closer its LR to the base LR, because early blocks hold generic features that fine-tuning should move
least. Block `i` of `L` gets `lr * layer_decay ** (L - i)`; the patch embedding (projection, register tokens,
position embedding) sits below block 0 and gets `layer_decay ** (L + 1)`; the pyramid and the heads are new and
get the full LR. For a species classifier the ViT is the whole model (`body_prefix=""`) and its final norm and
classification head are the new part (`head_prefixes`), as in BEiT's fine-tuning recipe. Norm weights, biases, position embeddings and register tokens get no weight decay: shrinking them
towards zero is not regularisation, it changes what they mean.

The schedule is one multiplicative factor per optimizer step (`LambdaLR`): linear warmup from `warmup_factor`, times
cosine decay to `min_lr_ratio` or step decay (x0.1 at each milestone, given as fractions of the total steps).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from birddet.config import TrainConfig

BODY_PREFIX = "model.backbone.body."
_BLOCK_RE = re.compile(r"^encoder\.block\.(\d+)\.")
_EMBEDDING_NAMES = ("conv_proj.", "reg_tokens", "pos_embedding")
_NO_DECAY_NAMES = ("pos_embedding", "reg_tokens")


@dataclass(frozen=True)
class ParamRule:
    """How one parameter is optimised: its LR multiplier and whether weight decay applies."""

    lr_scale: float
    decay: bool


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and norm scales are 1-D; position embeddings and register tokens are named. None of them decay."""
    return param.ndim <= 1 or name.split(".")[-1] in _NO_DECAY_NAMES


def layer_lr_scale(
    name: str,
    *,
    num_layers: int,
    layer_decay: float,
    backbone_lr_mult: float = 1.0,
    body_prefix: str = BODY_PREFIX,
    head_prefixes: tuple[str, ...] = (),
) -> float:
    """LR multiplier of a parameter named `name` (see the module docstring): names outside `body_prefix` (the
    ViT) or starting with one of `head_prefixes` are new layers at the full LR."""
    if not name.startswith(body_prefix) or name.startswith(head_prefixes):
        return 1.0
    local = name[len(body_prefix) :]
    match = _BLOCK_RE.match(local)
    if match:
        depth = num_layers - int(match.group(1))
    elif local.startswith(_EMBEDDING_NAMES):
        depth = num_layers + 1
    else:  # anything after the last block (the final norm is dropped for detection, but be safe)
        depth = 0
    return backbone_lr_mult * layer_decay**depth


def param_rules(
    model: nn.Module,
    *,
    layer_decay: float,
    backbone_lr_mult: float = 1.0,
    body_prefix: str = BODY_PREFIX,
    head_prefixes: tuple[str, ...] = (),
) -> dict[str, ParamRule]:
    """Name -> rule for every trainable parameter (frozen ones are left out) of a `BirdDetector` (the default
    prefixes) or of a bare `ViT` or `ResNet` classifier (`body_prefix=""`, `head_prefixes=("norm.", "classifier.")`)."""
    body = model.get_submodule(body_prefix.rstrip(".")) if body_prefix else model
    num_layers = body.num_layers  # a ResNet classifier's names match no ViT block: no layer decay there
    return {
        name: ParamRule(
            lr_scale=layer_lr_scale(
                name,
                num_layers=num_layers,
                layer_decay=layer_decay,
                backbone_lr_mult=backbone_lr_mult,
                body_prefix=body_prefix,
                head_prefixes=head_prefixes,
            ),
            decay=not no_weight_decay(name, p),
        )
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float,
    backbone_lr_mult: float = 1.0,
    body_prefix: str = BODY_PREFIX,
    head_prefixes: tuple[str, ...] = (),
) -> list[dict]:
    """AdamW parameter groups, one per distinct (LR scale, decay) pair, in a stable order.

    Each group carries `lr_scale` so the schedule multiplies a per-group base LR; the order is the order of
    first appearance in `named_parameters`, so a resumed optimizer state lines up with the same groups.
    """
    params = dict(model.named_parameters())
    groups: dict[ParamRule, dict] = {}
    rules = param_rules(
        model,
        layer_decay=layer_decay,
        backbone_lr_mult=backbone_lr_mult,
        body_prefix=body_prefix,
        head_prefixes=head_prefixes,
    )
    for name, rule in rules.items():
        group = groups.setdefault(
            rule,
            {
                "params": [],
                "lr": lr * rule.lr_scale,
                "lr_scale": rule.lr_scale,
                "weight_decay": weight_decay if rule.decay else 0.0,
            },
        )
        group["params"].append(params[name])
    return list(groups.values())


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, *, body_prefix: str = BODY_PREFIX, head_prefixes: tuple[str, ...] = ()
) -> torch.optim.AdamW:
    """AdamW over the layer-decayed groups of `model` (the unwrapped model, not a DDP wrapper)."""
    groups = param_groups(
        model,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        layer_decay=cfg.layer_decay,
        backbone_lr_mult=cfg.backbone_lr_mult,
        body_prefix=body_prefix,
        head_prefixes=head_prefixes,
    )
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)


def lr_factor(
    step: int,
    *,
    total_steps: int,
    schedule: str = "cosine",
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
    min_lr_ratio: float = 0.0,
    milestones: list[float] | tuple[float, ...] = (0.75, 0.9),
) -> float:
    """The LR multiplier after `step` optimizer steps (0 = before the first step).

    Warmup multiplies the main schedule, as in detectron2, so a short run whose warmup is longer than the run still
    decays. Milestones are fractions of `total_steps`, so a config keeps its meaning when the epoch count changes.
    """
    total = max(1, total_steps)
    t = min(step, total)
    if schedule == "cosine":
        factor = min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t / total))
    elif schedule == "step":
        passed = sum(1 for m in milestones if t >= m * total)
        factor = 0.1**passed
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'step'")
    if warmup_iters > 0 and step < warmup_iters:
        alpha = step / warmup_iters
        factor *= warmup_factor * (1.0 - alpha) + alpha
    return factor


def schedule_fn(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The `lr_factor` for a config, as the one-argument function `LambdaLR` wants."""

    def factor(step: int) -> float:
        return lr_factor(
            step,
            total_steps=total_steps,
            schedule=cfg.schedule,
            warmup_iters=cfg.warmup_iters,
            warmup_factor=cfg.warmup_factor,
            min_lr_ratio=cfg.min_lr_ratio,
            milestones=cfg.step_milestones,
        )

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step `LambdaLR`; its state dict holds only numbers, so it round-trips through `weights_only` loading."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_fn(cfg, total_steps))


def resize_schedule(
    scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The same schedule stretched or shrunk to `total_steps`, continuing at the step `scheduler` has reached.

    A time-budgeted run learns its length only after its first epoch; the LR from then on is what the new length
    gives at the current step (a small jump in a cosine that has barely moved), so the decay completes at the end.
    """
    state = scheduler.state_dict()
    optimizer = scheduler.optimizer
    resized = build_scheduler(optimizer, cfg, total_steps)
    resized.load_state_dict(state)
    factor = resized.lr_lambdas[0](resized.last_epoch)
    for group, base in zip(optimizer.param_groups, resized.base_lrs):
        group["lr"] = base * factor
    resized._last_lr = [group["lr"] for group in optimizer.param_groups]
    return resized


def ramped_ema(decay: float, tau: float) -> Callable[..., None]:
    """`multi_avg_fn` for `torch.optim.swa_utils.AveragedModel`: an EMA whose decay ramps up as
    `decay * (1 - exp(-t / tau))` over the updates `t` (Ultralytics' `ModelEMA`).

    Why: `AveragedModel`'s first update copies the weights of step 1, and a fixed decay then keeps them: at 0.999 they
    still weigh about 5 % after 3,000 steps, and only the EMA weights are evaluated and saved. A short run's
    `best.pt` was measured at top-1 0.61 while the live weights were at 0.88. With the ramp, early updates follow the
    live weights closely and the full `decay` applies once `t` is several `tau`. `t` is `AveragedModel.n_averaged`, a
    buffer saved with the EMA, so a resumed run continues the same ramp.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        d = decay * (1.0 - math.exp(-float(num_averaged) / tau))
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):  # foreach lerp: float only
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(a * d + c * (1.0 - d))

    return update
