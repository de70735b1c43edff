"""Importing MTT replay buffers: the exact layout, parameter order, provenance, resume, and refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from autoselmatch.cli import cli
from autoselmatch.config import apply_overrides, load_preset
from autoselmatch.errors import DataError, InvalidArgument
from autoselmatch.experts import (expert_cache_dir, expert_manifest, import_mtt_experts, load_experts,
                                  mtt_model_norm, train_experts, write_mtt_buffer)
from autoselmatch.experts._import import flatten_epoch
from autoselmatch.models import ConvNet, FlatModel

EPOCHS = 3


def tiny_config(cache_dir: Path, **overrides):
    """Width-8 ConvNet experts of 3 epochs on digits, on the CPU."""
    values = {"cache_dir": str(cache_dir), "device": "cpu", "experts.num_experts": 2, "experts.epochs": EPOCHS,
              "experts.model.width": 8}
    values.update(overrides)
    return apply_overrides(load_preset("digits"), values)


def model_of(cfg, ds) -> nn.Module:
    channels, size, _ = ds.image_shape
    return cfg.experts.model.build(channels=channels, num_classes=ds.num_classes, image_size=size)


def write_buffers(folder: Path, model: nn.Module, *, files: int = 2, per_file: int = 2, epochs: int = 5,
                  seed: int = 0) -> list[list]:
    """Random experts saved as buffer.py does: ``torch.save(trajectories, replay_buffer_<n>.pt)``; returns them."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    everything = []
    for n in range(files):
        trajectories = []
        for _ in range(per_file):
            timestamps = [[torch.randn(p.shape, generator=generator) for p in model.parameters()]
                          for _ in range(epochs + 1)]
            trajectories.append(timestamps)
        torch.save(trajectories, folder / f"replay_buffer_{n}.pt")
        everything += trajectories
    return everything


@pytest.fixture
def buffers(tmp_path, digits):
    """An MTT-named buffer folder (2 files x 2 experts x 5 epochs) for the tiny model, and its experts."""
    folder = tmp_path / "buffers" / "DIGITS_NO_ZCA" / "ConvNetBN"
    experts = write_buffers(folder, model_of(tiny_config(tmp_path), digits))
    return folder, experts


# --------------------------------------------------------------------------------------------
# The layout and the parameter order
# --------------------------------------------------------------------------------------------


class MTTConvNet(nn.Module):
    """MTT's utils ConvNet (networks.py), as written there: the network a buffer's tensor order comes from."""

    def __init__(self, channel, num_classes, net_width, net_depth, net_norm, im_size):
        super().__init__()
        layers, shape_feat = [], [channel, im_size[0], im_size[1]]
        for d in range(net_depth):
            layers += [nn.Conv2d(shape_feat[0], net_width, kernel_size=3,
                                 padding=3 if channel == 1 and d == 0 else 1)]
            shape_feat[0] = net_width
            if channel == 1 and d == 0:
                shape_feat[1] += 4
                shape_feat[2] += 4
            if net_norm == "batchnorm":
                layers += [nn.BatchNorm2d(shape_feat[0], affine=True)]
            elif net_norm == "instancenorm":
                layers += [nn.GroupNorm(shape_feat[0], shape_feat[0], affine=True)]
            layers += [nn.ReLU(inplace=True), nn.AvgPool2d(kernel_size=2, stride=2)]
            shape_feat[1] //= 2
            shape_feat[2] //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(shape_feat[0] * shape_feat[1] * shape_feat[2], num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).view(x.size(0), -1))


@pytest.mark.parametrize("norm, mtt_norm, channels, size", [("batch", "batchnorm", 3, 32),
                                                             ("instance", "instancenorm", 1, 28)])
def test_mtt_parameter_list_maps_onto_our_flat_order(norm, mtt_norm, channels, size):
    torch.manual_seed(0)
    theirs = MTTConvNet(channels, 10, 16, 3, mtt_norm, (size, size)).eval()
    for p in theirs.parameters():  # non-default values everywhere, so a swapped pair would show
        nn.init.normal_(p)
    ours = ConvNet(channels=channels, num_classes=10, image_size=size, depth=3, width=16, norm=norm).eval()
    flat = FlatModel(ours)
    epoch = [p.detach().clone() for p in theirs.parameters()]  # what buffer.py appends per epoch
    theta = flatten_epoch(epoch, flat.names, [tuple(s) for s in flat.shapes], "test")
    # what MTT's distill.py does with an epoch: torch.cat([p.reshape(-1) for p in params])
    assert torch.equal(theta, torch.cat([p.reshape(-1) for p in epoch]))
    x = torch.randn(4, channels, size, size)
    with torch.no_grad():
        assert torch.allclose(flat(theta, x), theirs(x), atol=1e-5)


def test_imported_rows_are_the_buffer_epochs_in_order(digits, buffers, cache_dir):
    folder, experts = buffers
    cfg = tiny_config(cache_dir)
    store = import_mtt_experts(folder, digits, cfg)
    assert (store.num_experts, store.num_epochs) == (4, EPOCHS)
    for i, expert in enumerate(experts):
        expected = torch.stack([torch.cat([p.reshape(-1) for p in epoch]) for epoch in expert[:EPOCHS + 1]])
        assert np.array_equal(store.trajectory(i), expected.numpy())
    # filed under the settings' key: distill's load_experts finds them
    opened = load_experts(digits, cfg)  # the first experts.num_experts = 2 of them
    assert opened.directory == store.directory == expert_cache_dir(cfg, expert_manifest(digits, cfg))
    start, target = opened.pair(1, 1, 2)
    assert torch.equal(start, torch.cat([p.reshape(-1) for p in experts[1][1]]))
    assert torch.equal(target, torch.cat([p.reshape(-1) for p in experts[1][3]]))


def test_manifest_records_where_the_experts_came_from(digits, buffers, cache_dir):
    folder, _ = buffers
    store = import_mtt_experts(folder, digits, tiny_config(cache_dir))
    imported = store.manifest["imported"]
    assert imported["format"] == "mtt-replay-buffer" and imported["source"] == str(folder.resolve())
    from autoselmatch.fileio import sha256_file

    assert imported["files"] == {f"replay_buffer_{n}.pt": {"bytes": (folder / f"replay_buffer_{n}.pt").stat().st_size,
                                                           "sha256": sha256_file(folder / f"replay_buffer_{n}.pt"),
                                                           "experts": [2 * n, 2 * n + 2]} for n in range(2)}
    assert store.manifest["experts"]["3"]["imported"] == {"source_file": "replay_buffer_1.pt", "source_index": 1,
                                                          "source_epochs": 5}
    with pytest.raises(DataError, match="imported from reference buffers, which hold no correctness record"):
        store.correctness(0)


DISTILL = {"experts.epochs": 2, "distill.max_start_epoch": 1, "distill.expert_epochs": 1, "distill.syn_steps": 3,
           "distill.iterations": 3, "distill.init": "random", "distill.batch_syn": 20, "distill.eval_every": 0,
           "distill.checkpoint_every": 0}


def test_round_trip_native_experts_export_and_import_bit_identical(digits, tmp_path, monkeypatch):
    native_cfg = tiny_config(tmp_path / "native", **DISTILL)
    imported_cfg = tiny_config(tmp_path / "imported", **DISTILL)
    native = train_experts(digits, native_cfg)
    folder = tmp_path / "buffers" / "DIGITS" / "ConvNetBN"
    shapes = [tuple(p.shape) for p in model_of(tiny_config(tmp_path), digits).parameters()]
    write_mtt_buffer(native, folder, shapes, experts_per_file=1)
    # the written files are exactly buffer.py's layout: lists of per-epoch lists of tensors
    loaded = torch.load(folder / "replay_buffer_1.pt", weights_only=True)
    assert len(loaded) == 1 and len(loaded[0]) == 3 and [tuple(t.shape) for t in loaded[0][0]] == shapes
    imported = import_mtt_experts(folder, digits, imported_cfg)
    assert imported.directory.name == native.directory.name  # the same key, in another cache
    for i in range(2):
        assert native.path(i).read_bytes() == imported.path(i).read_bytes()
        for start in range(2):
            for a, b in zip(native.pair(i, start, 1), imported.pair(i, start, 1)):
                assert torch.equal(a, b)
    # distill (load_experts) and tune (train_experts) use them as they are: nothing trains, the same set comes out
    from autoselmatch.distill import selmatch
    from autoselmatch.experts import _train

    monkeypatch.setattr(_train, "_train_expert", lambda *a, **k: pytest.fail("an imported expert was retrained"))
    assert train_experts(digits, imported_cfg).num_experts == 2
    ours, theirs = (selmatch(digits, cfg, ipc=2, alpha=1.0) for cfg in (native_cfg, imported_cfg))
    assert torch.equal(ours.images, theirs.images) and ours.eta == theirs.eta


def test_experts_of_many_pages_import_exactly_and_their_pages_are_released(digits, tmp_path, cache_dir):
    cfg = tiny_config(cache_dir, **{"experts.model.width": 64})  # 64 x 64 x 3 x 3 floats: 36 pages of 4 KB
    folder = tmp_path / "buffers" / "DIGITS" / "ConvNetBN"
    experts = write_buffers(folder, model_of(cfg, digits), files=1, epochs=EPOCHS)
    store = import_mtt_experts(folder, digits, cfg)
    for i, expert in enumerate(experts):
        expected = torch.stack([torch.cat([p.reshape(-1) for p in epoch]) for epoch in expert])
        assert np.array_equal(store.trajectory(i), expected.numpy())
    # released pages of a mapped file read back as the file's bytes (clean private pages, never zeros)
    from autoselmatch.experts._import import _release
    from autoselmatch.fileio import load_torch

    mapped = load_torch(folder / "replay_buffer_0.pt", mmap=True)
    before = [[t.clone() for t in epoch] for epoch in mapped[1]]
    _release(mapped[1])
    assert all(torch.equal(a, b) for x, y in zip(before, mapped[1]) for a, b in zip(x, y))


def test_fewer_epochs_than_stored_imports_the_first_ones_and_num_experts_limits(digits, buffers, cache_dir):
    folder, experts = buffers
    store = import_mtt_experts(folder, digits, tiny_config(cache_dir, **{"experts.epochs": 1}), num_experts=3)
    assert (store.num_experts, store.num_epochs) == (3, 1)
    assert not store.path(3).exists()
    assert np.array_equal(store.trajectory(2)[1], torch.cat([p.reshape(-1) for p in experts[2][1]]).numpy())


# --------------------------------------------------------------------------------------------
# Resume and provenance checks
# --------------------------------------------------------------------------------------------


def test_killed_import_resumes_to_identical_files(digits, buffers, tmp_path):
    """A real SIGKILL mid-expert (two CLI processes, ~15 s on a loaded 2-core machine): nothing else kills for real."""
    folder, _ = buffers
    reference = import_mtt_experts(folder, digits, tiny_config(tmp_path / "whole"))
    cache = tmp_path / "killed"
    command = [sys.executable, "-m", "autoselmatch", "--device", "cpu", "-q", "experts", "-d", "digits",
               "--epochs", str(EPOCHS), "--set", "experts.model.width=8", "--cache-dir", str(cache),
               "--from-mtt", str(folder), "--output", "json"]
    env = {**os.environ, "AUTOSELMATCH_FAULT": "experts.import_row:10:KILL"}  # in expert 2, the second file's first
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9
    directory = cache / "experts" / reference.directory.name
    manifest = json.loads((directory / "manifest.json").read_text())
    assert sorted(manifest["experts"]) == ["0", "1"] and list(manifest["imported"]["files"]) == ["replay_buffer_0.pt"]
    env.pop("AUTOSELMATCH_FAULT")
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["num_experts"] == 4
    for i in range(4):
        assert (directory / f"expert_{i:03d}.npy").read_bytes() == reference.path(i).read_bytes()
    assert not list(directory.glob("*.partial.npy"))


def test_rerun_skips_finished_files_without_loading_them(digits, buffers, cache_dir, monkeypatch):
    folder, _ = buffers
    cfg = tiny_config(cache_dir)
    import_mtt_experts(folder, digits, cfg)
    from autoselmatch.experts import _import

    def no_load(*args, **kwargs):
        raise AssertionError("a finished buffer file was loaded again")

    monkeypatch.setattr(_import, "load_torch", no_load)
    assert import_mtt_experts(folder, digits, cfg).num_experts == 4


def test_source_file_changed_since_import_is_refused(digits, buffers, cache_dir):
    folder, _ = buffers
    cfg = tiny_config(cache_dir)
    import_mtt_experts(folder, digits, cfg)
    write_buffers(folder, model_of(cfg, digits), files=1, seed=1)
    with pytest.raises(DataError, match="replay_buffer_0.pt changed since it was imported"):
        import_mtt_experts(folder, digits, cfg)


def test_folder_of_trained_experts_is_not_mixed_with_imported_ones(digits, buffers, cache_dir):
    folder, _ = buffers
    cfg = tiny_config(cache_dir, **{"experts.num_experts": 1, "experts.epochs": 1})
    train_experts(digits, cfg)
    with pytest.raises(DataError, match="already holds 1 trained experts"):
        import_mtt_experts(folder, digits, cfg)


# --------------------------------------------------------------------------------------------
# Refusals: one line each, nothing executed
# --------------------------------------------------------------------------------------------


def one_line(exc_info, *needles: str) -> None:
    message = str(exc_info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_truncated_buffer_file_is_a_one_line_error(digits, buffers, cache_dir):
    folder, _ = buffers
    path = folder / "replay_buffer_1.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as exc_info:
        import_mtt_experts(folder, digits, tiny_config(cache_dir))
    one_line(exc_info, "replay_buffer_1.pt", "not a complete torch file")
    # the first file's experts are kept for the rerun
    manifest = json.loads(next((cache_dir / "experts").glob("*/manifest.json")).read_text())
    assert sorted(manifest["experts"]) == ["0", "1"]


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_in_a_buffer_is_refused(digits, buffers, cache_dir, tmp_path):
    folder, experts = buffers
    marker = tmp_path / "PWNED"
    torch.save([experts[0], Evil(marker)], folder / "replay_buffer_1.pt")
    with pytest.raises(DataError) as exc_info:
        import_mtt_experts(folder, digits, tiny_config(cache_dir))
    one_line(exc_info, "refusing to load expert buffer", "replay_buffer_1.pt", "Python object")
    assert not marker.exists()


@pytest.mark.parametrize("payload, needle", [
    ({"experts": []}, "expected a list of experts"),
    ([[torch.zeros(3), torch.zeros(3)]], "is not a list of parameter tensors"),  # epochs as flat tensors
    ([[["text"], ["text"]]], "is not a list of parameter tensors"),
])
def test_structure_other_than_lists_of_tensors_is_refused(digits, buffers, cache_dir, payload, needle):
    folder, _ = buffers
    torch.save(payload, folder / "replay_buffer_0.pt")
    with pytest.raises((DataError, InvalidArgument)) as exc_info:
        import_mtt_experts(folder, digits, tiny_config(cache_dir, **{"experts.epochs": 1}))
    one_line(exc_info, needle)


def test_buffers_of_another_width_name_the_parameter(digits, buffers, cache_dir):
    folder, _ = buffers
    with pytest.raises(InvalidArgument) as exc_info:
        import_mtt_experts(folder, digits, tiny_config(cache_dir, **{"experts.model.width": 16}))
    one_line(exc_info, "features.0.weight", "(8, 1, 3, 3) in the buffer", "(16, 1, 3, 3) in the model")


def test_instance_norm_experts_do_not_fit_a_batch_norm_student(digits, tmp_path, cache_dir):
    cfg = tiny_config(cache_dir)
    folder = tmp_path / "buffers" / "CIFAR10" / "ConvNet"  # MTT's default ConvNet: instance norm
    write_buffers(folder, model_of(cfg, digits), files=1)
    assert mtt_model_norm(folder) == "instance" and mtt_model_norm(folder.parent / "ConvNetD4BN") == "batch"
    with pytest.raises(InvalidArgument) as exc_info:
        import_mtt_experts(folder, digits, cfg)
    one_line(exc_info, "instance norm", "norm=batch", "do not fit a batch-norm student")
    # the same experts filed under an instance-norm model import fine
    store = import_mtt_experts(folder, digits, tiny_config(
        cache_dir, **{"experts.model": {"name": "convnet", "depth": 2, "width": 8, "norm": "instance"}}))
    assert store.num_experts == 2


def test_too_few_epochs_and_missing_files_are_clear(digits, buffers, cache_dir):
    folder, _ = buffers
    with pytest.raises(InvalidArgument) as exc_info:
        import_mtt_experts(folder, digits, tiny_config(cache_dir, **{"experts.epochs": 9}))
    one_line(exc_info, "holds 5 epochs, the settings need 9", "--epochs 5")
    (folder / "replay_buffer_0.pt").unlink()
    with pytest.raises(DataError) as exc_info:
        import_mtt_experts(folder, digits, tiny_config(cache_dir))
    one_line(exc_info, "lacks replay_buffer_0.pt")
    with pytest.raises(InvalidArgument, match="holds no replay_buffer"):
        import_mtt_experts(folder.parent, digits, tiny_config(cache_dir))


def test_cli_imports_and_refuses_training_options(buffers, cache_dir):
    folder, _ = buffers
    args = ["--device", "cpu", "-q", "experts", "-d", "digits", "--epochs", "2", "--set", "experts.model.width=8",
            "--cache-dir", str(cache_dir), "--from-mtt", str(folder), "--output", "json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["num_experts"], data["num_epochs"], data["validation_accuracy"]) == (4, 2, [])
    bad = CliRunner().invoke(cli, args + ["--snapshot-every", "3"])
    assert bad.exit_code == 2 and "--snapshot-every does not apply" in bad.output
    bad = CliRunner().invoke(cli, args[:-4] + ["--norm", "batch"])
    assert bad.exit_code == 2 and "--norm" in bad.output


def test_zca_experts_get_the_transform_the_settings_describe(digits, tmp_path, cache_dir):
    cfg = tiny_config(cache_dir, **{"experts.zca": True})
    folder = tmp_path / "buffers" / "CIFAR10" / "ConvNetBN"  # MTT's name for ZCA buffers
    write_buffers(folder, model_of(cfg, digits), files=1)
    store = import_mtt_experts(folder, digits, cfg)
    assert store.zca is not None and load_experts(digits, cfg).zca is not None
