"""Expert trajectories: reproducible, resumable, cached by settings, checked on load."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from autoselmatch.cli import cli
from autoselmatch.config import ExpertConfig, apply_overrides, load_preset
from autoselmatch.errors import DataError, InvalidArgument
from autoselmatch.experts import (
    ExpertStore,
    ZCAWhitening,
    expert_cache_dir,
    expert_epochs_for,
    expert_manifest,
    expert_seed,
    load_experts,
    steps_per_epoch,
    train_experts,
    trajectory_file_problem,
)
from autoselmatch.experts import _train as train_module  # owns the training steps the tests replace
from autoselmatch.models import FlatModel

EPOCHS = 3


def tiny_config(cache_dir: Path, **overrides):
    """2 experts x 3 epochs of a width-8 ConvNet on digits, on the CPU, with momentum (state a resume must restore)."""
    values = {"cache_dir": str(cache_dir), "device": "cpu", "experts.num_experts": 2, "experts.epochs": EPOCHS,
              "experts.model.width": 8, "experts.momentum": 0.9}
    values.update(overrides)
    return apply_overrides(load_preset("digits"), values)


def trajectory_bytes(store: ExpertStore) -> list[bytes]:
    return [store.path(i).read_bytes() for i in range(store.num_experts)]


def records(store: ExpertStore) -> list[tuple]:
    """The per-expert manifest fields that must not depend on interruptions (the correctness record's sha256 too)."""
    return [(r["sha256"], r["val_acc"], r["train_acc"], r["correct"]) for r in
            (store.manifest["experts"][str(i)] for i in range(store.num_experts))]



@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    """A finished tiny run, trained once per module; tests must not modify it."""
    return train_experts(digits, tiny_config(tmp_path_factory.mktemp("reference")))


@pytest.fixture
def trained(reference, cache_dir):
    """A private copy of the reference run: (config, store)."""
    cfg = tiny_config(cache_dir)
    shutil.copytree(reference.directory, cache_dir / "experts" / reference.directory.name)
    return cfg, ExpertStore(cache_dir / "experts" / reference.directory.name)


# --------------------------------------------------------------------------------------------
# Training and the stored format
# --------------------------------------------------------------------------------------------


def test_trajectories_have_init_plus_one_row_per_epoch_and_move(digits, trained):
    cfg, store = trained
    assert (store.num_experts, store.num_epochs) == (2, EPOCHS)
    trajectory = store.trajectory(1)
    assert trajectory.shape == (EPOCHS + 1, store.num_params) and trajectory.dtype == np.float32
    # every epoch is its own snapshot (the reference's aliasing bug would make them all equal)
    assert all(not np.array_equal(trajectory[e], trajectory[e + 1]) for e in range(EPOCHS))
    # row 0 is the initialisation of a model seeded with the expert's seed
    torch.manual_seed(expert_seed(cfg.seed, 1))
    model = cfg.experts.model.build(channels=1, num_classes=10, image_size=8)
    assert np.array_equal(trajectory[0], FlatModel(model).flatten().numpy())
    assert all(0.0 <= a <= 1.0 for a in store.val_accuracies)


def test_same_seed_gives_identical_files_and_other_seed_differs(digits, reference, tmp_path):
    again = train_experts(digits, tiny_config(tmp_path / "other"))
    assert trajectory_bytes(again) == trajectory_bytes(reference)
    reseeded = train_experts(digits, tiny_config(tmp_path / "other", seed=1, **{"experts.num_experts": 1}))
    assert reseeded.directory != again.directory
    assert trajectory_bytes(reseeded)[0] != trajectory_bytes(reference)[0]


def test_expert_does_not_depend_on_how_many_experts_are_asked_for(digits, trained):
    cfg, store = trained
    first = store.path(0).stat()
    bigger = train_experts(digits, apply_overrides(cfg, {"experts.num_experts": 3}))
    assert bigger.directory == store.directory and bigger.num_experts == 3
    assert store.path(0).stat().st_mtime_ns == first.st_mtime_ns  # reused, not rewritten
    assert trajectory_bytes(bigger)[:2] == trajectory_bytes(store)


def interrupt_after_epochs(monkeypatch, epochs: int):
    """Make expert training raise KeyboardInterrupt once ``epochs`` epochs have run; returns the real epoch function."""
    real_epoch = train_module._train_epoch
    calls = []

    def crashing_epoch(*args, **kwargs):
        if len(calls) == epochs:
            raise KeyboardInterrupt
        calls.append(1)
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "_train_epoch", crashing_epoch)
    return real_epoch


@pytest.mark.parametrize("calls_before_crash", [1, 4])
def test_interrupted_run_resumes_to_identical_files(digits, reference, tmp_path, monkeypatch, calls_before_crash):
    """A crash after epoch k (k=1: inside expert 0; k=4: inside expert 1) then a rerun equals an uninterrupted run."""
    cfg = tiny_config(tmp_path / "crash")
    real_epoch = interrupt_after_epochs(monkeypatch, calls_before_crash)
    with pytest.raises(KeyboardInterrupt):
        train_experts(digits, cfg)
    directory = expert_cache_dir(cfg, expert_manifest(digits, cfg))
    assert list(directory.glob("*.partial.npy")) and list(directory.glob("*.state.pt"))
    monkeypatch.setattr(train_module, "_train_epoch", real_epoch)

    resumed_calls = []
    monkeypatch.setattr(train_module, "_train_epoch",
                        lambda *a, **k: resumed_calls.append(1) or real_epoch(*a, **k))
    resumed = train_experts(digits, cfg)
    assert len(resumed_calls) == 2 * EPOCHS - calls_before_crash  # finished epochs were not retrained
    assert trajectory_bytes(resumed) == trajectory_bytes(reference)
    assert records(resumed) == records(reference)
    assert not list(directory.glob("*.partial.npy")) and not list(directory.glob("*.state.pt"))


def test_crash_between_row_write_and_state_save_redoes_that_epoch(digits, reference, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "crash")
    real_save = train_module.save_torch
    saves = []

    def crashing_save(obj, path):
        if len(saves) == 2:  # the state of expert 0 after epoch 3: row 3 is written, the state says 2
            raise KeyboardInterrupt
        saves.append(1)
        real_save(obj, path)

    monkeypatch.setattr(train_module, "save_torch", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        train_experts(digits, cfg)
    monkeypatch.setattr(train_module, "save_torch", real_save)
    assert trajectory_bytes(train_experts(digits, cfg)) == trajectory_bytes(reference)


def test_partial_file_that_disagrees_with_its_state_restarts_the_expert(digits, reference, tmp_path, monkeypatch,
                                                                       caplog):
    cfg = tiny_config(tmp_path / "crash")
    real_epoch = interrupt_after_epochs(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_experts(digits, cfg)
    monkeypatch.setattr(train_module, "_train_epoch", real_epoch)
    (partial,) = expert_cache_dir(cfg, expert_manifest(digits, cfg)).glob("*.partial.npy")
    damaged = bytearray(partial.read_bytes())
    damaged[-(EPOCHS - 1) * reference.num_params * 4 - 1] ^= 0xFF  # last byte of row 1, before the saved epoch 2
    partial.write_bytes(bytes(damaged))
    with caplog.at_level("WARNING", logger="autoselmatch"):
        assert trajectory_bytes(train_experts(digits, cfg)) == trajectory_bytes(reference)
    assert "inconsistent with its state file at row 1" in caplog.text


# --------------------------------------------------------------------------------------------
# Snapshots every few SGD steps, and the correctness record
# --------------------------------------------------------------------------------------------

SNAPSHOT = 5  # digits' pool: 1295 samples, batch 64 -> 21 steps per epoch; 5 does not divide it


@pytest.fixture(scope="module")
def snapshots(digits, tmp_path_factory):
    """The reference run with a row every SNAPSHOT SGD steps, trained once per module."""
    return train_experts(digits, tiny_config(tmp_path_factory.mktemp("snapshots"),
                                             **{"experts.snapshot_every": SNAPSHOT}))


def test_snapshot_rows_fall_every_few_steps_and_agree_with_epoch_rows(digits, reference, tmp_path):
    steps = steps_per_epoch(len(digits.train_index), 64)
    assert steps == 21
    every_7 = train_experts(digits, tiny_config(tmp_path, **{"experts.snapshot_every": 7, "experts.num_experts": 1}))
    assert every_7.num_epochs == EPOCHS * 3 and every_7.snapshot_every == 7
    # the same training, stored more often: every third row is an epoch row of the per-epoch run
    assert np.array_equal(every_7.trajectory(0)[::3], reference.trajectory(0))
    assert every_7.manifest["experts"]["0"]["train_acc"] == reference.manifest["experts"]["0"]["train_acc"]


def test_snapshot_file_shape_and_cache_key(digits, snapshots, reference):
    assert snapshots.num_epochs == EPOCHS * 21 // SNAPSHOT  # 12 snapshots after the initial row
    assert snapshots.trajectory(1).shape == (EPOCHS * 21 // SNAPSHOT + 1, reference.num_params)
    assert snapshots.directory != reference.directory
    assert snapshots.manifest["key"]["snapshot_every"] == SNAPSHOT
    assert "snapshot_every" not in reference.manifest["key"] and reference.snapshot_every is None
    rows = snapshots.trajectory(0)
    assert all(not np.array_equal(rows[r], rows[r + 1]) for r in range(len(rows) - 1))
    assert np.array_equal(rows[0], reference.trajectory(0)[0])  # the same initialisation


def test_snapshot_of_one_epoch_is_the_default_layout(digits, cache_dir):
    base = tiny_config(cache_dir)
    one_epoch = tiny_config(cache_dir, **{"experts.snapshot_every": 21})
    assert expert_manifest(digits, one_epoch) == expert_manifest(digits, base)
    assert expert_cache_dir(one_epoch, expert_manifest(digits, one_epoch)) == expert_cache_dir(base, expert_manifest(digits, base))
    other = tiny_config(cache_dir, **{"experts.snapshot_every": 20})
    assert expert_cache_dir(other, expert_manifest(digits, other)) != expert_cache_dir(base, expert_manifest(digits, base))


def test_default_epochs_with_snapshots_cover_t_plus_m_snapshots(cache_dir):
    cfg = apply_overrides(load_preset("digits"), {"distill.max_start_epoch": 7, "distill.expert_epochs": 3,
                                                  "experts.snapshot_every": 5})
    assert expert_epochs_for(cfg, 1295) == 3  # 10 snapshots x 5 steps = 50 steps = 3 epochs of 21 steps
    with pytest.raises(InvalidArgument, match="pass num_train"):
        expert_epochs_for(cfg)


def test_snapshot_longer_than_the_training_is_refused(digits, cache_dir):
    with pytest.raises(InvalidArgument, match=r"experts.snapshot_every must be at most the 63 SGD steps of 3 epochs, got 64"):
        train_experts(digits, tiny_config(cache_dir, **{"experts.snapshot_every": 64}))


@pytest.mark.parametrize("calls_before_crash", [1, 4])
def test_interrupted_snapshot_run_resumes_to_identical_files(digits, snapshots, tmp_path, monkeypatch,
                                                             calls_before_crash):
    """A crash mid-expert with rows every 5 steps, then a rerun, equals an uninterrupted run, byte for byte."""
    cfg = tiny_config(tmp_path / "crash", **{"experts.snapshot_every": SNAPSHOT})
    real_epoch = interrupt_after_epochs(monkeypatch, calls_before_crash)
    with pytest.raises(KeyboardInterrupt):
        train_experts(digits, cfg)
    directory = expert_cache_dir(cfg, expert_manifest(digits, cfg))
    assert list(directory.glob("*.partial.npy")) and list(directory.glob("*.state.pt"))
    resumed_calls = []
    monkeypatch.setattr(train_module, "_train_epoch", lambda *a, **k: resumed_calls.append(1) or real_epoch(*a, **k))
    resumed = train_experts(digits, cfg)
    assert len(resumed_calls) == 2 * EPOCHS - calls_before_crash
    assert trajectory_bytes(resumed) == trajectory_bytes(snapshots)
    assert records(resumed) == records(snapshots)
    assert [resumed.correctness(i).tobytes() for i in range(2)] == [snapshots.correctness(i).tobytes() for i in range(2)]


def test_snapshot_pairs_read_the_right_rows(digits, snapshots):
    rows = np.load(snapshots.path(1))
    start, target = snapshots.pair(1, 4, 3)
    assert np.array_equal(start.numpy(), rows[4]) and np.array_equal(target.numpy(), rows[7])
    with pytest.raises(InvalidArgument, match="start_epoch \\+ expert_epochs must be <= the 12 stored epochs"):
        snapshots.pair(0, 10, 3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        expert, t = snapshots.sample_index(generator, max_start_epoch=10, expert_epochs=2)
        assert 0 <= t < 10
        start, target = snapshots.pair(expert, t, 2)
        trajectory = np.load(snapshots.path(expert))
        assert np.array_equal(start.numpy(), trajectory[t]) and np.array_equal(target.numpy(), trajectory[t + 2])


def test_correctness_record_matches_the_training_accuracy(digits, reference):
    for i in range(reference.num_experts):
        correct = reference.correctness(i)
        assert correct.dtype == np.uint8 and correct.shape == (EPOCHS, len(digits.train_index))
        assert set(np.unique(correct)) <= {0, 1}
        train_acc = reference.manifest["experts"][str(i)]["train_acc"]
        assert np.allclose(correct.mean(axis=1), train_acc)


def test_corrupt_correctness_record_is_retrained(trained, digits, caplog):
    cfg, store = trained
    path = store.directory / "expert_001.correct.npy"
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(DataError, match="correctness record .* is missing or corrupt"):
        store.correctness(1)
    with caplog.at_level("WARNING", logger="autoselmatch"):
        train_experts(digits, cfg)
    assert "missing or corrupt correctness record expert_001.correct.npy" in caplog.text
    assert path.read_bytes() == good


OLD_CACHE = Path(__file__).parent / "fixtures" / "experts-v0.1.0" / "digits-84aafc887a60791b"


def test_cache_written_before_snapshots_loads_and_is_reused(digits, cache_dir, monkeypatch):
    """A folder written by 0.1.0 (one row per epoch, no correctness record) keeps its key and loads as it is."""
    cfg = tiny_config(cache_dir, **{"experts.num_experts": 1, "experts.epochs": 2})
    directory = expert_cache_dir(cfg, expert_manifest(digits, cfg))
    assert directory.name == OLD_CACHE.name  # the default layout's cache key did not change
    shutil.copytree(OLD_CACHE, directory)
    monkeypatch.setattr(train_module, "_train_epoch", lambda *a, **k: pytest.fail("an old expert was retrained"))
    store = train_experts(digits, cfg)
    store.verify()
    assert (store.num_experts, store.num_epochs, store.snapshot_every) == (1, 2, None)
    start, target = load_experts(digits, cfg).pair(0, 0, 2)
    rows = np.load(OLD_CACHE / "expert_000.npy")
    assert np.array_equal(start.numpy(), rows[0]) and np.array_equal(target.numpy(), rows[2])
    with pytest.raises(DataError, match="trained without a correctness record .*delete the folder"):
        store.correctness(0)


def test_new_code_writes_the_old_layout(digits, cache_dir):
    """The same .npy header (format, dtype, shape) and the same trajectory. The first row (the seeded initial
    weights) is bit-identical; the trained rows agree to float32 rounding, since a CPU with other vector
    instructions (AVX-512 or not) picks other convolution kernels."""
    cfg = tiny_config(cache_dir, **{"experts.num_experts": 1, "experts.epochs": 2})
    store = train_experts(digits, cfg)
    new, old = store.path(0).read_bytes(), (OLD_CACHE / "expert_000.npy").read_bytes()
    header = 128  # numpy's format 1.0 header, padded to 64 bytes: identical files start with identical headers
    assert len(new) == len(old) and new[:header] == old[:header]
    rows, old_rows = np.load(store.path(0)), np.load(OLD_CACHE / "expert_000.npy")
    assert np.array_equal(rows[0], old_rows[0])
    np.testing.assert_allclose(rows, old_rows, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Cache keys
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override", [
    {"seed": 1},
    {"experts.lr": 0.02},
    {"experts.momentum": 0.5},
    {"experts.weight_decay": 1e-4},
    {"experts.batch_size": 32},
    {"experts.augment": "simple"},
    {"experts.zca": True},
    {"experts.epochs": EPOCHS + 1},
    {"experts.model.width": 16},
])
def test_any_setting_that_shapes_a_trajectory_changes_the_cache_key(digits, cache_dir, override):
    base = tiny_config(cache_dir)
    changed = tiny_config(cache_dir, **override)
    assert expert_cache_dir(changed, expert_manifest(digits, changed)) != expert_cache_dir(base, expert_manifest(digits, base))


def test_other_split_changes_the_cache_key(digits, cache_dir):
    from autoselmatch.data import load_dataset

    cfg = tiny_config(cache_dir)
    other = load_dataset("digits", val_fraction=0.1, split_seed=1)
    assert expert_manifest(other, cfg)["dataset"]["sha256"] != expert_manifest(digits, cfg)["dataset"]["sha256"]


def test_mismatched_settings_are_never_reused(digits, trained):
    cfg, _ = trained
    with pytest.raises(DataError, match="no experts for digits with these settings.*autoselmatch experts --dataset digits"):
        load_experts(digits, apply_overrides(cfg, {"experts.lr": 0.02}))


def test_default_epochs_are_max_start_epoch_plus_expert_epochs(cache_dir):
    cfg = apply_overrides(load_preset("digits"), {"distill.max_start_epoch": 7, "distill.expert_epochs": 3})
    assert expert_epochs_for(cfg) == 10
    assert expert_epochs_for(apply_overrides(cfg, {"experts.epochs": 4})) == 4


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def test_pair_returns_the_start_and_target_epochs(trained, digits):
    cfg, _ = trained
    store = load_experts(digits, cfg)
    start, target = store.pair(1, 1, 2)
    trajectory = np.load(store.path(1))
    assert start.dtype == torch.float32 and start.shape == (store.num_params,)
    assert np.array_equal(start.numpy(), trajectory[1]) and np.array_equal(target.numpy(), trajectory[3])


def test_sample_draws_a_stored_pair_within_the_start_range(trained):
    _, store = trained
    generator = torch.Generator().manual_seed(0)
    seen = {store.sample_index(generator, max_start_epoch=2, expert_epochs=1) for _ in range(40)}
    assert seen == {(e, t) for e in range(2) for t in range(2)}
    start, target = store.sample(torch.Generator().manual_seed(3), max_start_epoch=2, expert_epochs=1)
    expert, t = store.sample_index(torch.Generator().manual_seed(3), max_start_epoch=2, expert_epochs=1)
    assert torch.equal(start, store.epoch(expert, t)) and torch.equal(target, store.epoch(expert, t + 1))


def test_sample_draws_starts_from_min_start_epoch_on(trained):
    _, store = trained
    generator = torch.Generator().manual_seed(0)
    seen = {store.sample_index(generator, max_start_epoch=2, expert_epochs=1, min_start_epoch=1) for _ in range(40)}
    assert seen == {(0, 1), (1, 1)}
    for bad in (-1, 2):
        with pytest.raises(InvalidArgument, match=f"min_start_epoch < max_start_epoch, got {bad} and 2"):
            store.sample_index(generator, max_start_epoch=2, expert_epochs=1, min_start_epoch=bad)


def test_min_start_epoch_zero_draws_what_runs_before_it_existed_drew(trained):
    _, store = trained
    a, b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    draws = [store.sample_index(a, max_start_epoch=2, expert_epochs=1) for _ in range(20)]
    # torch.randint(high) and torch.randint(0, high) consume the generator alike: seeded runs repeat
    assert draws == [store.sample_index(b, max_start_epoch=2, expert_epochs=1, min_start_epoch=0) for _ in range(20)]
    assert draws == [(int(torch.randint(2, (1,), generator=g)), int(torch.randint(2, (1,), generator=g)))
                     for g in [torch.Generator().manual_seed(7)] for _ in range(20)]


def test_sample_rejects_more_epochs_than_stored(trained):
    _, store = trained
    with pytest.raises(InvalidArgument, match="exceeds the 3 epochs"):
        store.sample(torch.Generator(), max_start_epoch=2, expert_epochs=2)


def test_pair_rejects_bad_epochs_and_experts(trained):
    _, store = trained
    with pytest.raises(InvalidArgument, match="must be <= the 3 stored epochs, got 2 \\+ 2"):
        store.pair(0, 2, 2)
    with pytest.raises(InvalidArgument, match="start_epoch must be >= 0"):
        store.pair(0, -1, 1)
    with pytest.raises(InvalidArgument, match="expert_epochs must be >= 1"):
        store.pair(0, 0, 0)
    with pytest.raises(InvalidArgument, match=r"expert must be in \[0, 1\]"):
        store.pair(2, 0, 1)


def test_parameter_count_mismatch_is_a_clear_error(trained, digits):
    cfg, store = trained
    with pytest.raises(DataError, match=f"have {store.num_params} parameters but the model has 5"):
        ExpertStore(store.directory, num_params=5)
    manifest = json.loads((store.directory / "manifest.json").read_text())
    manifest["num_params"] += 1
    (store.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="parameters but the model has"):
        load_experts(digits, cfg)
    with pytest.raises(DataError, match="says .* parameters but the model convnet has"):
        train_experts(digits, cfg)


def test_asking_for_more_experts_than_finished_is_an_error(trained, digits):
    cfg, _ = trained
    with pytest.raises(DataError, match="holds 2 finished experts \\(need 3\\)"):
        load_experts(digits, apply_overrides(cfg, {"experts.num_experts": 3}))


# --------------------------------------------------------------------------------------------
# Corrupt files
# --------------------------------------------------------------------------------------------


def test_truncated_file_is_detected_on_load_and_retrained(trained, digits, caplog):
    cfg, store = trained
    original = trajectory_bytes(store)
    path = store.path(1)
    path.write_bytes(original[1][:-100])
    assert trajectory_file_problem(path, (EPOCHS + 1, store.num_params)).startswith("truncated")
    with pytest.raises(DataError, match="truncated"):
        load_experts(digits, cfg)
    with caplog.at_level("WARNING", logger="autoselmatch"):
        retrained = train_experts(digits, cfg)
    assert "truncated" in caplog.text and "retraining" in caplog.text
    assert trajectory_bytes(retrained) == original


def test_same_size_corruption_is_caught_by_the_checksum(trained, digits, caplog):
    cfg, store = trained
    original = trajectory_bytes(store)
    damaged = bytearray(original[0])
    damaged[-1] ^= 0xFF
    store.path(0).write_bytes(bytes(damaged))
    with pytest.raises(DataError, match="sha256"):
        load_experts(digits, cfg).verify()
    with caplog.at_level("WARNING", logger="autoselmatch"):
        assert trajectory_bytes(train_experts(digits, cfg)) == original
    assert "sha256" in caplog.text


def test_file_with_a_wrong_header_is_reported(trained, digits):
    cfg, store = trained
    store.path(0).write_bytes(b"not a numpy file at all")
    with pytest.raises(DataError, match="not a readable .npy file"):
        load_experts(digits, cfg)


def test_unwritable_cache_dir_is_a_clear_error(digits, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(InvalidArgument, match="cannot be written.*--cache-dir"):
        train_experts(digits, tiny_config(blocker))


def test_negative_seed_is_rejected(digits, cache_dir):
    with pytest.raises(InvalidArgument, match=r"seed must be (>= 0|in \[0, )"):
        train_experts(digits, tiny_config(cache_dir, seed=-1))


@pytest.mark.parametrize("field, value, message", [
    ("augment", "combined", "experts.augment must be one of none, simple, dsa"),
    ("epochs", 0, "experts.epochs must be >= 1"),
    ("snapshot_every", 0, r"experts.snapshot_every must be >= 1 SGD steps \(or unset: one epoch\), got 0"),
    ("lr", 0.0, "experts.lr must be > 0"),
    ("batch_size", 0, "experts.batch_size must be >= 1"),
    ("momentum", -0.1, "experts.momentum must be >= 0"),
    ("weight_decay", -1.0, "experts.weight_decay must be >= 0"),
    ("zca_eps", 0.0, "experts.zca_eps must be > 0"),
])
def test_expert_config_rejects_bad_values(field, value, message):
    with pytest.raises(InvalidArgument, match=message):
        ExpertConfig(**{field: value})


# --------------------------------------------------------------------------------------------
# ZCA
# --------------------------------------------------------------------------------------------


def test_zca_whitening_decorrelates_and_inverts():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(16, 16, generator=generator)
    images = (torch.randn(4000, 16, generator=generator) @ mixing + 3.0).view(-1, 1, 4, 4)  # correlated pixels
    zca = ZCAWhitening.fit(images, eps=1e-6)
    white = zca(images)
    assert white.shape == images.shape
    assert torch.allclose(torch.cov(white.flatten(1).double().T), torch.eye(16, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(zca.inverse(white), images, atol=1e-3)


def test_zca_experts_store_their_transform(digits, cache_dir):
    cfg = tiny_config(cache_dir, **{"experts.zca": True, "experts.num_experts": 1, "experts.epochs": 1})
    store = train_experts(digits, cfg)
    assert (store.directory / "zca.pt").is_file()
    images = digits.normalize(digits.split("train")[0][:4])
    assert torch.allclose(store.zca(images), ZCAWhitening.fit(digits.normalize(digits.split("train")[0]), 0.1)(images))
    assert load_experts(digits, cfg).zca is not None


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_trains_then_reuses(cache_dir):
    args = ["--device", "cpu", "-q", "experts", "--dataset", "digits", "--num-experts", "1", "--epochs", "2",
            "--set", "experts.model.width=8", "--cache-dir", str(cache_dir), "--output", "json"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    result = json.loads(first.output)
    assert result["num_experts"] == 1 and result["num_epochs"] == 2 and len(result["validation_accuracy"]) == 1
    path = Path(result["directory"]) / "expert_000.npy"
    stamp = path.stat().st_mtime_ns
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0 and json.loads(second.output) == result
    assert path.stat().st_mtime_ns == stamp


def test_cli_snapshot_every(cache_dir):
    args = ["--device", "cpu", "-q", "experts", "--dataset", "digits", "--num-experts", "1", "--epochs", "1",
            "--snapshot-every", "4", "--set", "experts.model.width=8", "--cache-dir", str(cache_dir), "--output", "json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    steps = steps_per_epoch(len(load_dataset_for_cli().train_index), 64)
    assert data["snapshot_every"] == 4 and data["num_epochs"] == steps // 4
    bad = CliRunner().invoke(cli, args[:-2] + ["--snapshot-every", "0"])
    assert bad.exit_code != 0 and "--snapshot-every" in bad.output


def load_dataset_for_cli():
    """digits as the CLI loads it with the digits preset."""
    from autoselmatch.data import load_configured

    return load_configured(load_preset("digits").data)


def test_cli_rejects_bad_values(cache_dir):
    result = CliRunner().invoke(cli, ["experts", "--dataset", "digits", "--num-experts", "0"])
    assert result.exit_code == 2 and "--num-experts" in result.output
    result = CliRunner().invoke(cli, ["experts", "--dataset", "digits", "--set", "experts.lr=-1",
                                      "--cache-dir", str(cache_dir)])
    assert result.exit_code == 2 and "experts.lr must be > 0" in result.output


# --------------------------------------------------------------------------------------------
# Several processes on one cache folder
# --------------------------------------------------------------------------------------------


def _train_in_child(cache_dir: str, both_training, trained) -> None:
    """Spawned: train 4 tiny experts into ``cache_dir``; report which ones this process trained.

    Before its first expert each process waits on ``both_training``, so the
    two are inside training (of different experts, whose locks they hold) at
    the same time, whatever their start-up times.
    """
    from autoselmatch.data import load_dataset

    torch.set_num_threads(1)
    mine = []
    real_train_expert = train_module._train_expert

    def train_expert(expert, *args):
        if not mine:
            both_training.wait(timeout=120)
        mine.append(expert)
        return real_train_expert(expert, *args)

    train_module._train_expert = train_expert
    ds = load_dataset("digits", val_fraction=0.1, split_seed=0)
    train_experts(ds, tiny_config(Path(cache_dir), **{"experts.num_experts": 4}))
    trained.put(mine)


def test_two_processes_share_the_work_and_match_a_single_process(digits, trained, tmp_path):
    import multiprocessing

    cfg, store = trained
    single = train_experts(digits, apply_overrides(cfg, {"experts.num_experts": 4}))  # one process, same seed
    context = multiprocessing.get_context("spawn")
    both_training, queue = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_train_in_child, args=(str(tmp_path / "shared"), both_training, queue))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]
    shares = [queue.get(timeout=10) for _ in workers]
    assert all(shares) and sorted(shares[0] + shares[1]) == [0, 1, 2, 3]  # each expert trained once, by one

    shared = ExpertStore(tmp_path / "shared" / "experts" / store.directory.name)
    assert shared.num_experts == 4 and sorted(shared.manifest["experts"]) == ["0", "1", "2", "3"]
    shared.verify()
    assert trajectory_bytes(shared) == trajectory_bytes(single) and records(shared) == records(single)
    names = {p.name for p in shared.directory.iterdir()}
    finished = {name for i in range(4) for name in (shared.path(i).name, f"expert_{i:03d}.correct.npy")}
    assert names == {"manifest.json", *finished}  # no lock, partial or state file


def test_expert_whose_trainer_was_killed_is_taken_over(digits, reference, cache_dir):
    """A trainer SIGKILLed mid-expert leaves its lock file; the next process is not blocked by it and resumes."""
    cfg = tiny_config(cache_dir)
    command = [sys.executable, "-m", "autoselmatch", "--device", "cpu", "-q", "experts", "--dataset", "digits",
               "--cache-dir", str(cache_dir), "--set", "experts.num_experts=2", "--set", f"experts.epochs={EPOCHS}",
               "--set", "experts.model.width=8", "--set", "experts.momentum=0.9"]
    env = {**os.environ, "AUTOSELMATCH_FAULT": "experts.epoch:2:KILL"}  # expert 0, after its second epoch
    assert subprocess.run(command, env=env, capture_output=True).returncode == -signal.SIGKILL
    directory = expert_cache_dir(cfg, expert_manifest(digits, cfg))
    assert (directory / ".expert_000.lock").exists() and (directory / "expert_000.state.pt").exists()

    resumed = train_experts(digits, cfg)
    assert trajectory_bytes(resumed) == trajectory_bytes(reference) and records(resumed) == records(reference)
    assert not list(directory.glob(".*.lock"))


def test_experts_on_simple_augmentation_key_and_follow_data_flip(digits, cache_dir, monkeypatch):
    """Crop-only experts (data.flip false, experts.augment simple) are other trajectories with another key; DSA
    experts ignore data.flip, so their key is the one before the setting existed."""
    import dataclasses

    import autoselmatch.augment as augment

    cfg = tiny_config(cache_dir, **{"experts.num_experts": 1, "experts.epochs": 1, "experts.augment": "simple"})
    no_flip = dataclasses.replace(digits, flip=False)
    assert "flip" not in expert_manifest(digits, cfg) and expert_manifest(no_flip, cfg)["flip"] is False
    dsa_cfg = tiny_config(cache_dir)
    assert expert_manifest(no_flip, dsa_cfg) == expert_manifest(digits, dsa_cfg)
    seen = []
    monkeypatch.setattr(augment, "simple_augment", lambda x, **kw: seen.append(kw["flip"]) or x)
    train_experts(no_flip, cfg)
    assert seen and set(seen) == {False}
