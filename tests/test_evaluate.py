import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from autoselmatch.cli import cli
from autoselmatch.config import EvalConfig
from autoselmatch.errors import InvalidArgument, TrainingDiverged
from autoselmatch.evaluate import (
    accuracies,
    accuracy,
    batch_bounds,
    batch_plan,
    budget_steps,
    budget_text,
    coverage,
    evaluate_set,
    model_coverage,
    nearest_distances,
    paper_budget,
    paper_share,
    train_network,
    train_networks,
)
from autoselmatch.models import ModelSpec

SMALL = ModelSpec("convnet", {"depth": 2, "width": 16, "norm": "batch"})



def small_cfg(**changes) -> EvalConfig:
    values = dict(model=SMALL, epochs=4, batch_size=64, augment="combined", runs=1)
    values.update(changes)
    return EvalConfig(**values)


def per_class(labels: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` positions of each class in ``labels``."""
    return torch.cat([torch.nonzero(labels == c).flatten()[:k] for c in range(int(labels.max()) + 1)])


# --------------------------------------------------------------------------------------------
# Budget
# --------------------------------------------------------------------------------------------


def test_budget_steps_prefers_steps_then_epochs_then_the_paper_rule():
    assert budget_steps(small_cfg(steps=7, epochs=3), n_set=1000, n_full=50000) == 7
    assert budget_steps(small_cfg(epochs=3), n_set=1000, n_full=50000) == 3 * 16  # ceil(1000 / 64) batches
    paper = EvalConfig(batch_size=128)
    assert budget_steps(paper, n_set=5000, n_full=50000) == 50 * 391  # 25 % of 200 epochs of 391 steps
    assert budget_steps(paper, n_set=5000, n_full=50000, fraction=0.1) == 1955


def test_the_default_budget_is_the_paper_rule_times_budget_fraction_on_digits():
    from autoselmatch.config import apply_overrides, load_preset

    cfg = load_preset("digits").evaluate
    assert cfg.steps is None and cfg.epochs is None  # the preset follows the paper's rule
    n_full = 1438  # digits' training images (len(ds.train_labels))
    paper = paper_budget(100, n_full, cfg.batch_size)
    assert paper == 50 * 12  # 25 % of 200 epochs of ceil(1438 / 128) steps
    assert budget_steps(cfg, n_set=100, n_full=n_full) == math.ceil(paper * cfg.budget_fraction)
    half = apply_overrides(load_preset("digits"), {"evaluate.budget_fraction": 0.5}).evaluate
    assert budget_steps(half, n_set=100, n_full=n_full) == 300
    assert budget_steps(half, n_set=100, n_full=n_full, fraction=half.quick_fraction) == math.ceil(
        300 * half.quick_fraction)  # the beta trials' budget stays a share of the final one
    assert budget_steps(replace(half, steps=30), n_set=100, n_full=n_full) == 30  # steps win
    assert paper_share(300, n_full=n_full, batch_size=128) == 0.5
    assert budget_text(300, 0.5) == "300 steps per network = 50 % of the paper's budget"


def test_evaluate_set_states_its_share_of_the_papers_budget(digits):
    idx = per_class(digits.train_labels, 3)
    result = evaluate_set(digits, digits.train_images[idx], digits.train_labels[idx], cfg=small_cfg(steps=11))
    assert result.steps == 11
    assert result.paper_share == pytest.approx(11 / paper_budget(1, len(digits.train_labels), 64))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01, float("nan")])
def test_budget_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(InvalidArgument, match=r"evaluate.budget_fraction must be in \(0, 1\]"):
        small_cfg(budget_fraction=fraction)


def test_paper_rule_gives_the_papers_epochs_per_set_size():
    for percent, epochs in ((5, 1000), (10, 500), (20, 250)):
        n_set = 50000 * percent // 100
        steps = paper_budget(n_set, 50000, 100)
        assert steps / (n_set / 100) == epochs


def test_budget_steps_is_at_least_one():
    assert budget_steps(small_cfg(steps=1), n_set=10, n_full=10, fraction=0.01) == 1


def test_budget_steps_rejects_bad_arguments():
    with pytest.raises(InvalidArgument, match="fraction"):
        budget_steps(small_cfg(), n_set=10, n_full=10, fraction=0.0)
    with pytest.raises(InvalidArgument, match="fraction"):
        budget_steps(small_cfg(), n_set=10, n_full=10, fraction=1.5)
    with pytest.raises(InvalidArgument, match="n_set"):
        budget_steps(small_cfg(), n_set=0, n_full=10)
    with pytest.raises(InvalidArgument, match="n_full"):
        budget_steps(small_cfg(), n_set=10, n_full=0)
    with pytest.raises(InvalidArgument, match="budget rule"):
        budget_steps(EvalConfig(), n_set=10, n_full=10, rule="linear")


def test_batch_bounds_never_leave_a_single_sample_batch():
    assert batch_bounds(300, 128) == [0, 128, 256, 300]
    assert batch_bounds(257, 128) == [0, 128, 257]
    assert batch_bounds(50, 128) == [0, 50]


def test_batch_plan_gives_each_batch_its_share_of_each_group():
    plan = batch_plan(100, 300, 128)
    assert plan.num_batches == 4
    assert plan.distill_bounds[-1] == 100 and plan.select_bounds[-1] == 300
    sizes = [plan.distill_bounds[i + 1] - plan.distill_bounds[i] for i in range(4)]
    assert sizes[:3] == [32, 32, 32]  # a quarter of each full batch


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


def test_convnet_on_digits_reaches_well_above_chance(digits):
    x, y = digits.split("train")
    result = evaluate_set(digits, x, y, cfg=small_cfg(epochs=6), split="val", seed=0)
    assert result.mean > 0.8  # chance is 0.1
    assert result.runs == 1 and result.split == "val" and result.steps == 6 * 21
    assert result.n_images == len(y) and result.seconds > 0


def test_amp_trains_in_bf16_on_cpu_too(digits):
    """``evaluate.amp`` is not a CUDA-only switch: on CPU it trains under bf16 autocast, and still learns."""
    x, y = digits.split("train")
    images = digits.normalize(x)
    cfg = small_cfg(augment="none", epochs=None)
    fp32 = train_network(images, y, num_classes=10, cfg=cfg, steps=30, seed=0, device="cpu")
    bf16 = train_network(images, y, num_classes=10, cfg=replace(cfg, amp=True), steps=30, seed=0, device="cpu")
    differ = any(not torch.equal(a, b) for a, b in zip(fp32.parameters(), bf16.parameters()))
    assert differ  # bf16 rounding changed the trajectory, so autocast was on
    result = evaluate_set(digits, x, y, cfg=small_cfg(epochs=6, amp=True), split="val", seed=0, device="cpu")
    assert result.mean > 0.8  # chance is 0.1


def test_evaluate_set_is_seeded_and_runs_differ(digits):
    x, y = digits.split("train")
    subset = per_class(y, 10)
    mask = torch.zeros(len(subset), dtype=torch.bool)
    mask[::2] = True
    cfg = small_cfg(epochs=3)
    floats = digits.normalize(x[subset])
    a = evaluate_set(digits, floats, y[subset], cfg=cfg, distill_mask=mask, runs=2, seed=5)
    b = evaluate_set(digits, x[subset], y[subset], cfg=cfg, distill_mask=mask, runs=2, seed=5)  # uint8 input
    assert a.accuracies == b.accuracies
    assert a.n_distill == 50 and len(a.accuracies) == 2
    assert a.std == pytest.approx(float(np.std(a.accuracies)))


def test_evaluation_and_coverage_reference_follow_the_datasets_flip(digits, monkeypatch, tmp_path):
    """A dataset loaded with data.flip = false (digits' preset) trains every network without mirrors."""
    import autoselmatch.evaluate as evaluate
    from autoselmatch.config import apply_overrides, load_preset
    from autoselmatch.coverage import distill_reference
    from autoselmatch.data import load_configured

    seen = []
    real = evaluate.augment_grouped

    def spy(*args, **kwargs):
        seen.append(kwargs["flip"])
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "augment_grouped", spy)
    x, y = digits.split("train")
    subset = per_class(y, 3)
    for flip in (True, False):
        seen.clear()
        ds = replace(digits, flip=flip)
        evaluate_set(ds, x[subset], y[subset], cfg=small_cfg(epochs=1), runs=1)
        assert seen and set(seen) == {flip}
    cfg = apply_overrides(load_preset("digits"), {"cache_dir": str(tmp_path), "device": "cpu",
                                                  "reproduce.full_epochs": 1, "evaluate.model.width": 8})
    ds = load_configured(cfg.data)
    assert ds.flip is False
    seen.clear()
    distill_reference(ds, cfg, torch.device("cpu"))
    assert seen and set(seen) == {False}


@pytest.mark.parametrize("channels_last", [False, True])
def test_stacked_networks_train_as_each_would_alone(digits, channels_last):
    """train_networks(seeds) gives network r what train_network(seed r) gives: same init, batches, augmentation."""
    x, y = digits.split("train")
    images, labels = digits.normalize(x[:300]), y[:300]
    mask = torch.zeros(300, dtype=torch.bool)
    mask[::3] = True  # combined augmentation: DSA and crop+flip streams of every network
    cfg = small_cfg(epochs=None, channels_last=channels_last)
    stacked = train_networks(images, labels, num_classes=10, cfg=cfg, steps=12, distill_mask=mask, seeds=[4, 5, 6])
    val_x, val_y = digits.split("val")
    val = digits.normalize(val_x)
    logits = stacked(val.repeat(1, 3, 1, 1)).view(len(val), 3, 10)
    alone = [train_network(images, labels, num_classes=10, cfg=cfg, steps=12, distill_mask=mask, seed=seed)
             for seed in (4, 5, 6)]
    for r, model in enumerate(alone):
        assert torch.allclose(logits[:, r], model(val), atol=1e-3, rtol=1e-3)
    assert accuracies(stacked, val, val_y, networks=3) == [accuracy(model, val, val_y) for model in alone]
    assert not torch.allclose(logits[:, 0], logits[:, 1])  # the seeds do differ


def test_evaluate_set_stacks_runs_to_the_same_accuracies(digits):
    x, y = digits.split("train")
    subset = per_class(y, 10)
    mask = torch.zeros(len(subset), dtype=torch.bool)
    mask[::2] = True
    one = evaluate_set(digits, x[subset], y[subset], cfg=small_cfg(epochs=3), distill_mask=mask, runs=5, seed=1)
    stacked = evaluate_set(digits, x[subset], y[subset], cfg=small_cfg(epochs=3, stack_runs=2), distill_mask=mask,
                           runs=5, seed=1)  # groups of 2, 2 and 1
    assert stacked.accuracies == pytest.approx(one.accuracies, abs=0.01) and len(stacked.train_seconds) == 5
    m = len(digits.split("val")[1])
    for result in (one, stacked):  # per image, how many of the 5 networks were right: the accuracies, image by image
        assert result.image_hits.shape == (m,) and 0 <= int(result.image_hits.min()) <= int(result.image_hits.max()) <= 5
        assert float(result.image_hits.sum()) / m == pytest.approx(sum(result.accuracies), abs=1e-9)
        assert "image_hits" not in result.to_dict() and result.to_dict()["accuracies"] == result.accuracies


@pytest.mark.parametrize("stack_runs", [1, 2])
def test_one_hot_soft_labels_train_as_hard_labels_and_soft_ones_differ(digits, stack_runs):
    x, y = digits.split("train")
    subset = per_class(y, 5)
    images, labels = x[subset], y[subset]
    cfg = small_cfg(epochs=3, stack_runs=stack_runs, augment="none")
    hard = train_networks(digits.normalize(images), labels, num_classes=10, cfg=cfg, steps=6, seeds=[0, 1][:stack_runs])
    one_hot = F.one_hot(labels, 10).float()
    soft = train_networks(digits.normalize(images), one_hot, num_classes=10, cfg=cfg, steps=6, seeds=[0, 1][:stack_runs])
    for a, b in zip(hard.parameters(), soft.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    smoothed = train_networks(digits.normalize(images), 0.5 * one_hot + 0.05, num_classes=10, cfg=cfg, steps=6,
                              seeds=[0, 1][:stack_runs])
    assert not torch.allclose(next(smoothed.parameters()), next(hard.parameters()))
    result = evaluate_set(digits, images, one_hot, cfg=cfg, runs=2)
    assert len(result.accuracies) == 2
    with pytest.raises(InvalidArgument, match="soft labels must have shape"):
        evaluate_set(digits, images, one_hot[:, :9], cfg=cfg)


def test_evaluate_set_trains_on_soft_probabilities_not_truncated_ones(digits):
    # 0.6 on the true class: cast to int labels this would be all zeros and train nothing useful
    x, y = digits.split("train")
    subset = per_class(y, 10)
    soft = 0.6 * F.one_hot(y[subset], 10).float() + 0.04
    cfg = small_cfg(epochs=20, augment="none")
    result = evaluate_set(digits, x[subset], soft, cfg=cfg, runs=1)
    hard = evaluate_set(digits, x[subset], y[subset], cfg=cfg, runs=1)
    assert result.accuracies[0] > 0.5 and abs(result.accuracies[0] - hard.accuracies[0]) < 0.2


def test_an_epoch_callback_watches_one_network(digits):
    x, y = digits.split("train")
    seen = []
    evaluate_set(digits, x[:300], y[:300], cfg=small_cfg(epochs=2, stack_runs=2), runs=2,
                 epoch_callback=lambda epoch, model: seen.append((epoch, model.classifier.out_features)))
    assert seen == [(0, 10), (1, 10), (2, 10), (3, 10)]  # runs one at a time, each reported
    with pytest.raises(InvalidArgument, match="an epoch_callback watches one network, got 2 seeds"):
        train_networks(digits.normalize(x[:300]), y[:300], num_classes=10, cfg=small_cfg(), steps=2, seeds=[0, 1],
                       epoch_callback=lambda epoch, model: None)


def test_train_network_leaves_the_global_rng_alone(digits):
    x, y = digits.split("train")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_network(digits.normalize(x[:200]), y[:200], num_classes=10, cfg=small_cfg(), steps=2, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_epoch_callback_is_called_per_epoch_and_can_stop_training(digits):
    x, y = digits.split("train")
    seen = []

    class Pruned(Exception):
        pass

    def callback(epoch, model):
        seen.append(epoch)
        assert model.training
        if epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        evaluate_set(digits, x, y, cfg=small_cfg(epochs=5), epoch_callback=callback)
    assert seen == [0, 1, 2]

    seen.clear()
    evaluate_set(digits, x[:300], y[:300], cfg=small_cfg(epochs=2), runs=2, epoch_callback=lambda e, m: seen.append(e))
    assert seen == [0, 1, 2, 3]  # steps keep increasing across runs


def test_few_epoch_mode_scales_the_budget(digits):
    x, y = digits.split("train")
    result = evaluate_set(digits, x, y, cfg=small_cfg(epochs=10), fraction=0.2)
    assert result.steps == 2 * 21 and result.epochs == pytest.approx(2.0)


def test_nan_input_stops_training_with_a_clear_error(digits):
    x, y = digits.split("train")
    images = digits.normalize(x)
    images[5] = float("nan")
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        evaluate_set(digits, images, y, cfg=small_cfg(epochs=1))


def test_huge_learning_rate_diverges_with_a_clear_error(digits):
    x, y = digits.split("train")
    with pytest.raises(TrainingDiverged, match="evaluate.lr"):
        train_network(digits.normalize(x), y, num_classes=10, cfg=small_cfg(lr=1e12, augment="none"), steps=60)


def test_evaluate_set_rejects_bad_sets(digits):
    x, y = digits.split("train")
    cfg = small_cfg()
    no_nine = y != 9
    with pytest.raises(InvalidArgument, match="class 9"):
        evaluate_set(digits, x[no_nine], y[no_nine], cfg=cfg)
    with pytest.raises(InvalidArgument, match="labels must be in"):
        evaluate_set(digits, x, torch.where(y == 3, 10, y), cfg=cfg)
    with pytest.raises(InvalidArgument, match="labels must be in"):
        evaluate_set(digits, x, torch.where(y == 3, -1, y), cfg=cfg)
    with pytest.raises(InvalidArgument, match=r"shape \(n, 1, 8, 8\)"):
        evaluate_set(digits, x.repeat(1, 3, 1, 1), y, cfg=cfg)
    with pytest.raises(InvalidArgument, match=r"shape \(n, 1, 8, 8\)"):
        evaluate_set(digits, x[:, :, :4, :4], y, cfg=cfg)
    with pytest.raises(InvalidArgument, match="labels must have shape"):
        evaluate_set(digits, x, y[:-1], cfg=cfg)
    with pytest.raises(InvalidArgument, match="integers"):
        evaluate_set(digits, x, y.float(), cfg=cfg)
    with pytest.raises(InvalidArgument, match="distill_mask"):
        evaluate_set(digits, x, y, cfg=cfg, distill_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(InvalidArgument, match="split"):
        evaluate_set(digits, x, y, cfg=cfg, split="train")
    with pytest.raises(InvalidArgument, match="runs"):
        evaluate_set(digits, x, y, cfg=cfg, runs=0)
    with pytest.raises(InvalidArgument, match="fraction"):
        evaluate_set(digits, x, y, cfg=cfg, fraction=0.0)


def test_accuracy_matches_argmax_and_restores_the_mode(digits):
    x, y = digits.split("val")
    images = digits.normalize(x)
    model = SMALL.build(channels=1, num_classes=10, image_size=8).train()
    with torch.no_grad():
        expected = (model.eval()(images).argmax(1) == y).float().mean().item()
    model.train()
    assert accuracy(model, images, y, batch_size=7) == pytest.approx(expected)
    assert model.training


# --------------------------------------------------------------------------------------------
# Coverage
# --------------------------------------------------------------------------------------------


def test_nearest_distances_match_a_full_distance_matrix():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 5, generator=g), torch.randn(23, 5, generator=g)
    full = torch.cdist(a, b)
    assert torch.allclose(nearest_distances(a, b, batch_size=8), full.min(1).values, atol=1e-5)
    self_full = torch.cdist(a, a) + torch.diag(torch.full((37,), float("inf")))
    assert torch.allclose(nearest_distances(a, a, batch_size=6, exclude_self=True), self_full.min(1).values, atol=1e-5)


def test_coverage_is_one_when_the_set_holds_the_test_points_and_drops_as_they_go():
    g = torch.Generator().manual_seed(1)
    train = torch.randn(200, 4, generator=g)
    test = torch.randn(100, 4, generator=g) * 2.0
    values = [coverage(train, test, test[:k], batch_size=32).coverage for k in (100, 60, 30, 5)]
    assert values[0] == 1.0
    assert values == sorted(values, reverse=True) and values[-1] < 0.5
    radius = torch.cdist(train, train).add(torch.diag(torch.full((200,), float("inf")))).min(1).values.mean()
    assert coverage(train, test, test, batch_size=32).radius == pytest.approx(float(radius), rel=1e-5)


def test_coverage_splits_easy_and_hard_halves():
    train = torch.arange(20, dtype=torch.float32).view(-1, 1)  # radius 1
    test = torch.tensor([[0.5], [1.5], [100.0], [200.0]])
    syn = torch.tensor([[0.0], [2.0]])
    result = coverage(train, test, syn, difficulty=torch.tensor([0.1, 0.2, 0.9, 0.8]))
    assert result.coverage == 0.5 and result.easy == 1.0 and result.hard == 0.0
    with pytest.raises(InvalidArgument, match="difficulty"):
        coverage(train, test, syn, difficulty=torch.zeros(3))


def test_model_coverage_runs_in_a_trained_network_feature_space(digits):
    x, y = digits.split("train")
    images = digits.normalize(x)
    model = train_network(images, y, num_classes=10, cfg=small_cfg(), steps=20)
    test = digits.normalize(digits.split("test")[0])
    full = model_coverage(model, images, test, images, batch_size=256)
    few = model_coverage(model, images, test, images[per_class(y, 1)], batch_size=256)
    assert 0.0 <= few.coverage < full.coverage <= 1.0


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


@pytest.fixture
def set_file(tmp_path, digits):
    x, y = digits.split("train")
    subset = per_class(y, 8)
    mask = torch.zeros(len(subset), dtype=torch.bool)
    mask[::2] = True
    path = tmp_path / "set.pt"
    torch.save({"images": digits.normalize(x[subset]), "labels": y[subset], "distill_mask": mask,
                "dataset": "digits", "alpha": 0.5}, path)
    return path


def invoke(*args):
    return CliRunner().invoke(cli, ["--device", "cpu", "-q", "evaluate", *map(str, args)])


def test_cli_evaluates_a_set_file(set_file, cache_dir, tmp_path):
    out = tmp_path / "result.json"
    result = invoke(set_file, "--runs", "2", "--epochs", "3", "--set", "evaluate.model.width=16",
                    "--cache-dir", cache_dir, "--save", out)
    assert result.exit_code == 0, result.output
    assert "80 images (40 distilled) of digits" in result.output
    assert "on val (2 runs of convnet, 3 steps, combined augmentation)" in result.output
    saved = json.loads(out.read_text())
    assert len(saved["accuracies"]) == 2 and saved["config"]["evaluate"]["epochs"] == 3


def test_cli_reads_uint8_pixels_when_images_are_absent(set_file, digits, tmp_path):
    payload = torch.load(set_file, weights_only=True)
    pixels = digits.denormalize(payload.pop("images"))
    torch.save({**payload, "pixels": pixels}, tmp_path / "pixels.pt")
    result = invoke(tmp_path / "pixels.pt", "--steps", "2", "--runs", "1", "--output", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n_images"] == 80


def test_cli_evaluates_an_indices_file_as_json(digits, tmp_path, cache_dir):
    y = digits.train_labels[digits.train_index]
    index = digits.train_index[per_class(y, 6)]
    np.save(tmp_path / "idx.npy", index.numpy())
    (tmp_path / "idx.txt").write_text("\n".join(map(str, index.tolist())))
    for name, model, options in (("idx.npy", "vgg11", {}), ("idx.txt", "convnet", {"depth": 2, "width": 32})):
        result = invoke("--indices", tmp_path / name, "-d", "digits", "--steps", "2", "--runs", "1",
                        "--model", model, "--output", "json")
        assert result.exit_code == 0, result.output
        record = json.loads(result.output)
        assert record["n_images"] == 60 and record["n_distill"] == 0 and record["steps"] == 2
        assert record["model"] == model
        # a new model drops the preset's builder options; the preset's own model keeps them
        assert {k: v for k, v in record["config"]["evaluate"]["model"]["options"].items() if k != "norm"} == options


def test_cli_fails_cleanly_on_bad_input(set_file, digits, tmp_path):
    assert invoke().exit_code == 2  # neither PATH nor --indices
    assert invoke(set_file, "--indices", set_file).exit_code == 2

    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pt")
    result = invoke(tmp_path / "list.pt")
    assert result.exit_code == 2 and "must hold a dict" in result.output

    (tmp_path / "junk.pt").write_text("not a tensor file")
    result = invoke(tmp_path / "junk.pt")
    assert result.exit_code == 2
    assert f"refusing to load set file {tmp_path / 'junk.pt'}: it is not a torch file" in result.output

    payload = torch.load(set_file, weights_only=True)
    keep = payload["labels"] != 0
    torch.save({**payload, "images": payload["images"][keep], "labels": payload["labels"][keep],
                "distill_mask": payload["distill_mask"][keep]}, tmp_path / "missing.pt")
    result = invoke(tmp_path / "missing.pt", "--steps", "1")
    assert result.exit_code == 2 and "no images of class 0" in result.output

    result = invoke(set_file, "-d", "fashion-mnist")
    assert result.exit_code == 2 and "does not match" in result.output

    np.save(tmp_path / "far.npy", np.array([0, 5, 10**6]))
    result = invoke("--indices", tmp_path / "far.npy", "-d", "digits")
    assert result.exit_code == 2 and "indices must be in" in result.output

    np.save(tmp_path / "leak.npy", digits.val_index[:20].numpy())
    result = invoke("--indices", tmp_path / "leak.npy", "-d", "digits")
    assert result.exit_code == 2 and "validation samples" in result.output


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_model_trains_like_the_eager_one(digits, mode):
    """``evaluate.compile`` only changes how the model runs, not what it learns (300 images: a short last batch)."""
    x, y = digits.split("train")
    images = digits.normalize(x[:300])
    cfg = small_cfg(augment="none", epochs=None)
    eager = train_network(images, y[:300], num_classes=10, cfg=cfg, steps=10, seed=0)
    compiled = train_network(images, y[:300], num_classes=10, cfg=replace(cfg, compile=True, compile_mode=mode),
                             steps=10, seed=0)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)
