"""The sliding window, the selection strategies and the beta objective."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autoselmatch.errors import InvalidArgument
from autoselmatch.registry import UnknownNameError
from autoselmatch.selection import (
    SELECTIONS,
    class_sizes,
    max_beta,
    select,
    select_window,
    sweep_beta,
    window_accuracy,
)


def reference_window(scores, labels, pool, ipc, beta, alpha):
    """Plain-Python SelMatch window: per class (select, distill) lists, hardest first."""
    out = []
    for c in sorted(set(labels)):
        members = sorted((i for i in pool if labels[i] == c), key=lambda i: (-scores[i], i))
        start = math.floor(beta * len(members) + 1e-9)
        window = members[start : start + ipc]
        n_select = math.ceil((1 - alpha) * ipc - 1e-9)
        out.append((window[:n_select], window[n_select:]))
    return out


def toy(n_per_class=(12, 10, 15), seed=0):
    """Labels in random order, random scores, every 5th sample held out: pool classes of 9, 9, 11."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    scores = torch.randn(len(labels), generator=g)
    pool = torch.tensor([i for i in range(len(labels)) if i % 5 != 0])
    return scores, labels, pool


def test_window_matches_reference_and_is_class_balanced():
    scores, labels, pool = toy()
    win = select_window(scores, labels, pool, ipc=4, beta=0.25, alpha=0.5)
    ref = reference_window(scores.tolist(), labels.tolist(), pool.tolist(), 4, 0.25, 0.5)
    assert win.select_index.tolist() == [i for sel, _ in ref for i in sel]
    assert win.distill_index.tolist() == [i for _, dis in ref for i in dis]
    assert torch.bincount(labels[win.indices]).tolist() == [4, 4, 4]
    assert win.select_index.dtype == torch.int64


def test_window_starts_at_floor_beta_times_class_size():
    labels = torch.zeros(10, dtype=torch.long)
    scores = torch.arange(10, 0, -1).float()  # sample i has rank i
    pool = torch.arange(10)
    assert select_window(scores, labels, pool, ipc=3, beta=0.0).indices.tolist() == [0, 1, 2]
    assert select_window(scores, labels, pool, ipc=3, beta=0.25).indices.tolist() == [2, 3, 4]  # floor(2.5)
    assert select_window(scores, labels, pool, ipc=3, beta=0.3).indices.tolist() == [3, 4, 5]
    assert select_window(scores, labels, pool, ipc=3, beta=0.7).indices.tolist() == [7, 8, 9]


def test_select_part_is_harder_than_distill_part():
    scores, labels, pool = toy()
    win = select_window(scores, labels, pool, ipc=6, beta=0.2, alpha=0.5)
    for c in range(3):
        sel = scores[win.select_index[labels[win.select_index] == c]]
        dis = scores[win.distill_index[labels[win.distill_index] == c]]
        assert sel.min() >= dis.max()


def test_validation_indices_are_never_selected():
    scores, labels, pool = toy()
    val = torch.tensor([i for i in range(len(labels)) if i % 5 == 0])
    scores[val] = 100.0  # the hardest samples are all held out
    win = select_window(scores, labels, pool, ipc=8, beta=0.0, alpha=0.3)
    assert not set(win.indices.tolist()) & set(val.tolist())


def test_ties_are_broken_by_index():
    labels = torch.tensor([0, 1] * 6)
    scores = torch.zeros(12)
    pool = torch.tensor([11, 3, 5, 0, 2, 7, 9, 4])  # unsorted on purpose
    win = select_window(scores, labels, pool, ipc=2, beta=0.25)
    # class 0 pool {0, 2, 4}: skip floor(0.75) = 0; class 1 pool {3, 5, 7, 9, 11}: skip floor(1.25) = 1
    assert win.indices.tolist() == [0, 2, 5, 7]


def test_alpha_splits_window_with_ceil():
    scores, labels, pool = toy()
    assert select_window(scores, labels, pool, ipc=7, beta=0.0, alpha=0.5).n_select == 4  # ceil(3.5)
    assert select_window(scores, labels, pool, ipc=7, beta=0.0, alpha=0.0).distill_index.numel() == 0
    assert select_window(scores, labels, pool, ipc=7, beta=0.0, alpha=1.0).select_index.numel() == 0
    # (1 - 0.7) * 10 is 3.0000000000000004 in floats: still 3 select samples
    assert select_window(scores, labels, pool, ipc=7, beta=0.0, alpha=0.7).n_select == math.ceil(0.3 * 7 - 1e-9)


def test_window_helpers_are_aligned():
    scores, labels, pool = toy()
    win = select_window(scores, labels, pool, ipc=5, beta=0.1, alpha=0.4)
    mask = win.distill_mask
    assert mask.tolist() == ([False] * 3 + [True] * 2) * 3
    assert win.indices[~mask].tolist() == win.select_index.tolist()
    assert win.indices[mask].tolist() == win.distill_index.tolist()


def test_window_labels_use_dataset(digits):
    scores = torch.rand(len(digits.train_labels), generator=torch.Generator().manual_seed(0))
    win = select_window(scores, digits.train_labels, digits.train_index, ipc=3, beta=0.5)
    assert win.labels(digits).tolist() == [c for c in range(10) for _ in range(3)]


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(3, 12), min_size=2, max_size=4),
    data=st.data(),
)
def test_window_property(sizes, data):
    labels = [c for c, n in enumerate(sizes) for _ in range(n)]
    n = len(labels)
    scores = data.draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))  # many ties
    held_out = data.draw(st.sets(st.integers(0, n - 1), max_size=n // 4))
    pool = [i for i in range(n) if i not in held_out]
    pool_sizes = [sum(1 for i in pool if labels[i] == c) for c in range(len(sizes))]
    if min(pool_sizes) < 1:
        return
    ipc = data.draw(st.integers(1, min(pool_sizes)))
    beta = data.draw(st.floats(0.0, max_beta(ipc, pool_sizes)))
    alpha = data.draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]))
    win = select_window(torch.tensor(scores, dtype=torch.float32), torch.tensor(labels), torch.tensor(pool),
                        ipc=ipc, beta=beta, alpha=alpha)
    ref = reference_window(scores, labels, pool, ipc, beta, alpha)
    assert win.select_index.tolist() == [i for sel, _ in ref for i in sel]
    assert win.distill_index.tolist() == [i for _, dis in ref for i in dis]
    assert len(win.indices) == ipc * len(sizes)
    assert not set(win.indices.tolist()) & held_out


def test_max_beta_uses_smallest_class():
    assert max_beta(10, [100, 50, 80]) == pytest.approx(0.8)
    assert class_sizes(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 3])).tolist() == [1, 1, 1]


# --------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------


def test_ipc_zero_raises():
    scores, labels, pool = toy()
    with pytest.raises(InvalidArgument, match=r"ipc must be in \[1, 9\].*got 0"):
        select_window(scores, labels, pool, ipc=0, beta=0.0)


def test_ipc_above_smallest_class_raises():
    scores, labels, pool = toy()
    with pytest.raises(InvalidArgument, match=r"ipc must be in \[1, 9\].*got 10"):
        select_window(scores, labels, pool, ipc=10, beta=0.0)


def test_negative_beta_raises():
    scores, labels, pool = toy()
    with pytest.raises(InvalidArgument, match=r"beta must be in \[0, 0.5556\].*got -0.1"):
        select_window(scores, labels, pool, ipc=4, beta=-0.1)


def test_beta_past_end_of_smallest_class_raises():
    scores, labels, pool = toy()
    message = r"beta must be in \[0, 0.5556\] for ipc=4 \(class of 9 samples\), got 0.6"
    with pytest.raises(InvalidArgument, match=message):
        select_window(scores, labels, pool, ipc=4, beta=0.6)


def test_beta_at_the_bound_is_allowed():
    scores, labels, pool = toy()
    win = select_window(scores, labels, pool, ipc=4, beta=1 - 4 / 9)
    assert len(win.indices) == 12


def test_alpha_below_zero_raises():
    scores, labels, pool = toy()
    with pytest.raises(InvalidArgument, match=r"alpha must be in \[0, 1\], got -0.5"):
        select_window(scores, labels, pool, ipc=4, beta=0.0, alpha=-0.5)


def test_alpha_above_one_raises():
    scores, labels, pool = toy()
    with pytest.raises(InvalidArgument, match=r"alpha must be in \[0, 1\], got 1.5"):
        select_window(scores, labels, pool, ipc=4, beta=0.0, alpha=1.5)


def test_nan_scores_raise():
    scores, labels, pool = toy()
    scores[pool[3]] = float("nan")
    with pytest.raises(InvalidArgument, match="1 NaN"):
        select_window(scores, labels, pool, ipc=4, beta=0.0)


def test_scores_of_wrong_length_raise():
    scores, labels, pool = toy()
    with pytest.raises(InvalidArgument, match="scores must have shape"):
        select_window(scores[:-1], labels, pool, ipc=4, beta=0.0)


def test_max_beta_rejects_bad_ipc():
    with pytest.raises(InvalidArgument, match=r"ipc must be in \[1, 50\]"):
        max_beta(51, [100, 50])


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


def test_strategies_are_registered():
    assert SELECTIONS.names() == ["easiest", "forgetting", "hardest", "random", "window"]


def test_random_is_class_balanced_and_seeded():
    scores, labels, pool = toy()
    a = select("random", None, labels, pool, ipc=5, seed=1)
    assert torch.bincount(labels[a]).tolist() == [5, 5, 5]
    assert set(a.tolist()) <= set(pool.tolist())
    assert torch.equal(a, select("random", None, labels, pool, ipc=5, seed=1))
    assert not torch.equal(a, select("random", None, labels, pool, ipc=5, seed=2))


def test_hardest_and_forgetting_are_the_top_of_the_score():
    scores, labels, pool = toy()
    hardest = select("hardest", scores, labels, pool, ipc=3)
    assert torch.equal(hardest, select("forgetting", scores, labels, pool, ipc=3))
    assert torch.equal(hardest, select_window(scores, labels, pool, ipc=3, beta=0.0).indices)


def test_easiest_is_the_bottom_of_the_score():
    scores, labels, pool = toy()
    easiest = select("easiest", scores, labels, pool, ipc=3)
    ref = [sorted((i for i in pool.tolist() if labels[i] == c), key=lambda i: (-scores[i].item(), i))[-3:]
           for c in range(3)]
    assert easiest.tolist() == [i for part in ref for i in part]


def test_window_strategy_uses_beta():
    scores, labels, pool = toy()
    assert torch.equal(select("window", scores, labels, pool, ipc=3, beta=0.4),
                       select_window(scores, labels, pool, ipc=3, beta=0.4).indices)


def test_window_strategy_without_beta_raises():
    scores, labels, pool = toy()
    with pytest.raises(InvalidArgument, match="needs beta"):
        select("window", scores, labels, pool, ipc=3)


def test_score_strategy_without_scores_raises():
    _, labels, pool = toy()
    with pytest.raises(InvalidArgument, match="needs difficulty scores"):
        select("hardest", None, labels, pool, ipc=3)


def test_unknown_strategy_raises():
    scores, labels, pool = toy()
    with pytest.raises(UnknownNameError, match="choose one of: easiest, forgetting, hardest, random, window"):
        select("median", scores, labels, pool, ipc=3)


# --------------------------------------------------------------------------------------------
# The beta objective (through the evaluation engine)
# --------------------------------------------------------------------------------------------


def tiny_eval_cfg():
    from autoselmatch.config import EvalConfig
    from autoselmatch.models import ModelSpec

    return EvalConfig(model=ModelSpec("convnet", {"depth": 1, "width": 8, "norm": "none"}), steps=10, batch_size=32,
                      augment="combined", runs=1)


def test_window_accuracy_trains_on_the_window(digits, monkeypatch):
    import autoselmatch.evaluate as evaluate

    seen = {}
    real = evaluate.evaluate_set

    def spy(ds, images, labels, **kwargs):
        seen.update(images=images, labels=labels, **kwargs)
        return real(ds, images, labels, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_set", spy)
    scores = torch.rand(len(digits.train_labels), generator=torch.Generator().manual_seed(0))
    result = window_accuracy(digits, scores, ipc=5, beta=0.3, cfg=tiny_eval_cfg(), fraction=0.5, seeds=2)
    win = select_window(scores, digits.train_labels, digits.train_index, ipc=5, beta=0.3)
    assert torch.equal(seen["images"], digits.train_images[win.indices])
    assert seen["split"] == "val" and seen["runs"] == 2 and seen["cfg"].augment == "simple"
    assert result.steps == 5 and len(result.accuracies) == 2 and 0.0 <= result.mean <= 1.0


def test_sweep_beta_returns_one_point_per_beta(digits):
    scores = torch.rand(len(digits.train_labels), generator=torch.Generator().manual_seed(0))
    curve = sweep_beta(digits, scores, ipc=5, betas=[0.0, 0.5], cfg=tiny_eval_cfg(), epochs=2, seeds=1)
    assert [beta for beta, _, _ in curve] == [0.0, 0.5]
    assert all(0.0 <= mean <= 1.0 and std == 0.0 for _, mean, std in curve)


def test_sweep_beta_checks_every_beta_before_training(digits, monkeypatch):
    import autoselmatch.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate_set", lambda *a, **k: pytest.fail("trained before checking betas"))
    scores = torch.rand(len(digits.train_labels))
    with pytest.raises(InvalidArgument, match=r"beta must be in \[0, 0.9\d+\] for ipc=5.*got 0.99"):
        sweep_beta(digits, scores, ipc=5, betas=[0.0, 0.99], cfg=tiny_eval_cfg(), seeds=1)


def test_sweep_beta_without_betas_raises(digits):
    with pytest.raises(InvalidArgument, match="at least one"):
        sweep_beta(digits, torch.rand(len(digits.train_labels)), ipc=5, betas=[], cfg=tiny_eval_cfg())


def test_sweep_beta_with_zero_epochs_raises(digits):
    with pytest.raises(InvalidArgument, match="epochs must be >= 1, got 0"):
        sweep_beta(digits, torch.rand(len(digits.train_labels)), ipc=5, betas=[0.0], cfg=tiny_eval_cfg(), epochs=0)
