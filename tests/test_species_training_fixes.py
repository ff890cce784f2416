"""Species-classifier training: class-balanced weights and label smoothing together must not move the minimum."""

from __future__ import annotations

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
