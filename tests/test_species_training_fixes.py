"""Species-classifier training: class-balanced weights and label smoothing together must not move the minimum."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from birddet.engine.classification import class_weighted_cross_entropy


def test_without_smoothing_it_is_pytorchs_weighted_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(13, 4), torch.randint(0, 4, (13,))
    weight = torch.tensor([0.2, 3.0, 1.0, 7.5])
    torch.testing.assert_close(
        class_weighted_cross_entropy(logits, targets, weight), F.cross_entropy(logits, targets, weight=weight)
    )
    torch.testing.assert_close(class_weighted_cross_entropy(logits, targets, None), F.cross_entropy(logits, targets))


def test_smoothing_with_class_weights_keeps_the_common_class_on_top():
    """970 common crops and 30 rare ones, balanced weights n / (C n_c), smoothing 0.1: the loss minimum for a crop
    of the common class must predict the common class. PyTorch's `weight=` + `label_smoothing=` puts it on the rare
    class, because the smoothing term of every crop is weighted by the rare class's large weight."""
    counts = torch.tensor([970.0, 30.0])
    weight = counts.sum() / (len(counts) * counts)
    targets = torch.zeros(970, dtype=torch.long)  # a batch of the common class: one shared, free logit vector
    logits = torch.zeros(2, requires_grad=True)
    optim = torch.optim.SGD([logits], lr=1.0)
    for _ in range(500):
        optim.zero_grad()
        class_weighted_cross_entropy(logits.expand(970, 2), targets, weight, label_smoothing=0.1).backward()
        optim.step()
    probs = logits.detach().softmax(0)
    assert probs.argmax().item() == 0
    assert probs[0].item() == pytest.approx(0.95, abs=0.01)  # the smoothed target: 1 - 0.1 + 0.1 / 2


def _ema_after(steps: int, decay: float, tau: float) -> float:
    """The EMA of a one-parameter model that is 100 at step 1 and 0 at every later step."""
    from torch.optim.swa_utils import AveragedModel

    from birddet.engine.optim import ramped_ema

    net = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(net, multi_avg_fn=ramped_ema(decay, tau), use_buffers=True)
    with torch.no_grad():
        net.weight.fill_(100.0)
        ema.update_parameters(net)
        net.weight.fill_(0.0)
        for _ in range(steps - 1):
            ema.update_parameters(net)
    return float(ema.module.weight)


def test_ema_warm_up_lets_the_first_steps_weights_fade():
    """A fixed decay of 0.999 keeps 5 % of step 1's weights after 3,000 steps (PyTorch's `get_ema_multi_avg_fn`:
    100 * 0.999**2999 = 5.0); with the ramp they are gone, and later the configured decay holds."""
    assert _ema_after(3000, 0.999, 2000.0) < 1e-3
    assert _ema_after(180, 0.999, 2000.0) < 1e-3  # a short run's EMA follows its live weights
    from birddet.engine.optim import ramped_ema

    averaged, current = [torch.tensor([1.0])], [torch.tensor([0.0])]
    ramped_ema(0.999, 2000.0)(averaged, current, torch.tensor(100_000))  # t >> tau: the full decay
    assert averaged[0].item() == pytest.approx(0.999)
    ramped_ema(0.999, 2000.0)(averaged, current, torch.tensor(2000))  # t = tau: decay * (1 - 1/e)
    assert averaged[0].item() == pytest.approx(0.999 * 0.999 * (1 - math.exp(-1)))


def test_a_short_runs_ema_weights_follow_its_live_weights(tmp_path):
    """End to end (the loop builds the EMA): after a few steps at `ema_decay` 0.999 the EMA weights saved in
    `last.pt` are the live weights, not step 1's. With a fixed decay they stayed near step 1's: 60 % of the weights'
    scale away from the live ones."""
    from test_classifier_training import tiny_classifier_config

    from birddet.data.synthetic import make_synthetic_coco
    from birddet.engine.classification import train_classifier

    make_synthetic_coco(tmp_path / "data", num_train=8, num_val=4, seed=0)
    cfg = tiny_classifier_config(tmp_path / "data", epochs=2, lr=1e-2, warmup_iters=0, ema=True, ema_decay=0.999)
    train_classifier(cfg, tmp_path / "run")
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    live = last["model"]["classifier.weight"]
    ema = last["training"]["ema"]["module.classifier.weight"]
    steps = int(last["training"]["ema"]["n_averaged"])
    assert steps >= 4
    assert (ema - live).abs().max().item() < 0.01 * (live.abs().max().item())
