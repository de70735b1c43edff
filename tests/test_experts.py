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

import autoselmatch.experts as experts_module
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
    train_experts,
    trajectory_file_problem,
)
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
    """The per-expert manifest fields that must not depend on interruptions."""
    return [(r["sha256"], r["test_acc"], r["train_acc"]) for r in
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
    assert all(0.0 <= a <= 1.0 for a in store.test_accuracies)


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
    real_epoch = experts_module._train_epoch
    calls = []

    def crashing_epoch(*args, **kwargs):
        if len(calls) == epochs:
            raise KeyboardInterrupt
        calls.append(1)
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(experts_module, "_train_epoch", crashing_epoch)
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
    monkeypatch.setattr(experts_module, "_train_epoch", real_epoch)

    resumed_calls = []
    monkeypatch.setattr(experts_module, "_train_epoch",
                        lambda *a, **k: resumed_calls.append(1) or real_epoch(*a, **k))
    resumed = train_experts(digits, cfg)
    assert len(resumed_calls) == 2 * EPOCHS - calls_before_crash  # finished epochs were not retrained
    assert trajectory_bytes(resumed) == trajectory_bytes(reference)
    assert records(resumed) == records(reference)
    assert not list(directory.glob("*.partial.npy")) and not list(directory.glob("*.state.pt"))


def test_crash_between_row_write_and_state_save_redoes_that_epoch(digits, reference, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "crash")
    real_save = experts_module.save_torch
    saves = []

    def crashing_save(obj, path):
        if len(saves) == 2:  # the state of expert 0 after epoch 3: row 3 is written, the state says 2
            raise KeyboardInterrupt
        saves.append(1)
        real_save(obj, path)

    monkeypatch.setattr(experts_module, "save_torch", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        train_experts(digits, cfg)
    monkeypatch.setattr(experts_module, "save_torch", real_save)
    assert trajectory_bytes(train_experts(digits, cfg)) == trajectory_bytes(reference)


def test_partial_file_that_disagrees_with_its_state_restarts_the_expert(digits, reference, tmp_path, monkeypatch,
                                                                       caplog):
    cfg = tiny_config(tmp_path / "crash")
    real_epoch = interrupt_after_epochs(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_experts(digits, cfg)
    monkeypatch.setattr(experts_module, "_train_epoch", real_epoch)
    (partial,) = expert_cache_dir(cfg, expert_manifest(digits, cfg)).glob("*.partial.npy")
    damaged = bytearray(partial.read_bytes())
    damaged[-(EPOCHS - 1) * reference.num_params * 4 - 1] ^= 0xFF  # last byte of row 1, before the saved epoch 2
    partial.write_bytes(bytes(damaged))
    with caplog.at_level("WARNING", logger="autoselmatch"):
        assert trajectory_bytes(train_experts(digits, cfg)) == trajectory_bytes(reference)
    assert "inconsistent with its state file at epoch 1" in caplog.text


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
    with pytest.raises(InvalidArgument, match="seed must be >= 0"):
        train_experts(digits, tiny_config(cache_dir, seed=-1))


@pytest.mark.parametrize("field, value, message", [
    ("augment", "combined", "experts.augment must be one of none, simple, dsa"),
    ("epochs", 0, "experts.epochs must be >= 1"),
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
    assert result["num_experts"] == 1 and result["num_epochs"] == 2 and len(result["test_accuracy"]) == 1
    path = Path(result["directory"]) / "expert_000.npy"
    stamp = path.stat().st_mtime_ns
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0 and json.loads(second.output) == result
    assert path.stat().st_mtime_ns == stamp


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
    real_train_expert = experts_module._train_expert

    def train_expert(expert, *args):
        if not mine:
            both_training.wait(timeout=120)
        mine.append(expert)
        return real_train_expert(expert, *args)

    experts_module._train_expert = train_expert
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
    assert names == {"manifest.json", *(shared.path(i).name for i in range(4))}  # no lock, partial or state file


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
