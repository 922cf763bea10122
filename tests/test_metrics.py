"""Per-run measurements against hand-worked values and a float64 reference."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from soap.metrics import angle_degrees, examples_to_target, feedback_gain, signal_agreement


def test_angle_of_known_pairs():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 2.0], [1.0, 0.0]])
    b = torch.tensor([[math.sqrt(3) / 2, 0.5], [0.0, 5.0], [-1.0, -1.0], [0.0, 0.0]])
    torch.testing.assert_close(angle_degrees(a, b), torch.tensor([30.0, 90.0, 180.0, 90.0]))


def test_angle_is_exactly_zero_for_equal_weights_and_matches_float64_when_nearly_parallel():
    w = torch.randn(4, 256, 784, generator=torch.Generator().manual_seed(0))
    assert torch.equal(angle_degrees(w, w.clone()), torch.zeros(4))
    b = w + 1e-4 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1))
    cos = torch.nn.functional.cosine_similarity(w.flatten(1).double(), b.flatten(1).double())
    reference = torch.rad2deg(torch.arccos(cos)).float()  # about 0.006 degrees
    torch.testing.assert_close(angle_degrees(w, b), reference, rtol=1e-3, atol=0)


def test_signal_agreement_cosine_and_norm_ratio():
    bp = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])  # (pop 2, batch 1, units 2)
    rule = torch.tensor([[[6.0, 8.0]], [[0.0, 0.5]]])
    cosine, ratio = signal_agreement(rule, bp)
    torch.testing.assert_close(cosine, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(ratio, torch.tensor([2.0, 0.5]))


def test_feedback_gain_is_the_geometric_mean_of_usable_ratios():
    assert feedback_gain(np.array([[2.0, 8.0], [np.nan, 0.0]])) == pytest.approx(4.0)
    assert math.isnan(feedback_gain(np.array([np.inf, -1.0])))


def test_examples_to_target_first_logged_crossing_or_censored():
    curves = pd.DataFrame({
        "run_id": ["a", "a", "a", "a", "b", "b"],
        "examples": [100, 200, 300, 400, 100, 200],
        "train_loss_ema": [0.9, np.nan, 0.5, 0.4, 0.9, 0.8],
    })
    hits = examples_to_target(curves, 0.5).set_index("run_id")
    assert hits.loc["a", "examples_to_target"] == 300 and hits.loc["a", "reached_target"]
    assert np.isnan(hits.loc["b", "examples_to_target"]) and not hits.loc["b", "reached_target"]
