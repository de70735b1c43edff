"""Presets, overrides and their checks."""

import pytest

from autoselmatch.config import (
    RunConfig,
    apply_overrides,
    format_config,
    from_dict,
    list_presets,
    load_preset,
    parse_assignment,
    preset_for_dataset,
    to_dict,
)
from autoselmatch.errors import InvalidArgument


def test_every_preset_loads():
    names = list_presets()
    assert {"cifar10", "cifar100", "tinyimagenet", "digits", "fashion-mnist"} <= set(names)
    for name in names:
        cfg = load_preset(name)
        assert cfg.preset == name
        assert name == cfg.data.name or name.startswith(cfg.data.name + "-")  # e.g. fashion-mnist-active


def test_paper_values_in_cifar100_preset():
    cfg = load_preset("cifar100")
    assert (cfg.distill.syn_steps, cfg.distill.expert_epochs, cfg.distill.max_start_epoch) == (55, 2, 80)
    assert (cfg.distill.batch_syn, cfg.distill.lr_img, cfg.distill.lr_lr, cfg.distill.lr_teacher) == (125, 1000.0, 1e-5, 0.001)
    assert cfg.experts.model.options == {"depth": 3, "width": 128, "norm": "batch"}
    assert cfg.evaluate.model.name == "resnet18"
    assert load_preset("tinyimagenet").distill.syn_steps == 20
    assert load_preset("tinyimagenet").experts.model.options["depth"] == 4


def test_overrides_reach_nested_values():
    cfg = apply_overrides(load_preset("digits"), {"distill.iterations": 7, "evaluate.model.width": 64, "seed": 5,
                                                  "data.root": None})
    assert cfg.distill.iterations == 7
    assert cfg.evaluate.model.options["width"] == 64
    assert cfg.seed == 5
    assert cfg.data.root is None


def test_roundtrip_through_dict():
    cfg = load_preset("cifar10")
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"distill.nope": 1}, "unknown setting 'distill.nope'"),
        ({"nope.x": 1}, "unknown setting 'nope.x'"),
        ({"distill.iterations": "many"}, "distill.iterations must be an integer"),
        ({"distill.syn_steps": 2.5}, "distill.syn_steps must be an integer"),
        ({"distill.memory": "disk"}, "distill.memory must be one of exact, checkpoint, tesla"),
        ({"evaluate.augment": "mixup"}, "evaluate.augment must be one of"),
        ({"evaluate.compile_mode": "fast"}, "evaluate.compile_mode must be one of default, reduce-overhead"),
        ({"evaluate.stack_runs": 0}, "evaluate.stack_runs must be >= 1, got 0"),
        ({"data.val_fraction": 0.9}, r"data.val_fraction must be in \[0.0, 0.5\]"),
        ({"evaluate.runs": 0}, "evaluate.runs must be >= 1"),
        ({"data.download": "maybe"}, "data.download must be true or false"),
        ({"distill.min_start_epoch": 6}, r"distill.min_start_epoch must be in \[0, distill.max_start_epoch = 6\), got 6"),
        ({"distill.min_start_epoch": -1}, r"distill.min_start_epoch must be in \[0, .*got -1"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(InvalidArgument, match=message):
        apply_overrides(load_preset("digits"), overrides)


def test_parse_assignment():
    assert parse_assignment("distill.lr_img=100") == ("distill.lr_img", 100)
    assert parse_assignment("tune.beta_grid=[0.1, 0.2]") == ("tune.beta_grid", [0.1, 0.2])
    assert parse_assignment("scores.file=/tmp/x.npz") == ("scores.file", "/tmp/x.npz")
    with pytest.raises(InvalidArgument, match="section.key=value"):
        parse_assignment("distill.lr_img")


def test_unknown_preset_and_bad_toml(tmp_path):
    with pytest.raises(InvalidArgument, match="unknown preset 'nope'"):
        load_preset("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("[distill\n")
    with pytest.raises(InvalidArgument, match="not valid TOML"):
        load_preset(str(bad))
    typo = tmp_path / "typo.toml"
    typo.write_text("[distill]\nsyn_step = 3\n")
    with pytest.raises(InvalidArgument, match="unknown setting distill.syn_step"):
        load_preset(str(typo))


def test_format_config_mentions_every_section():
    text = format_config(load_preset("digits"))
    for section in ("[data]", "[scores]", "[experts]", "[experts.model]", "[distill]", "[evaluate]", "[tune]"):
        assert section in text
    assert "syn_steps = 10" in text


@pytest.mark.parametrize("dataset, preset", [
    ("digits", "digits"), ("Digits", "digits"), ("CIFAR100", "cifar100"), ("mnist", "fashion-mnist"),
    ("folder:/data/pets", "digits"), ("folder:/data/CIFAR10", "digits"), (None, "digits"),
])
def test_preset_for_dataset(dataset, preset):
    assert preset_for_dataset(dataset) == preset


def test_preset_names_are_case_insensitive():
    assert load_preset("Digits").preset == "digits"


@pytest.mark.parametrize("overrides, message", [
    ({"distill.lr_img": float("nan")}, "distill.lr_img must be a finite number, got nan"),
    ({"evaluate.lr": "inf"}, "evaluate.lr must be a finite number, got 'inf'"),
    ({"data.val_fraction": float("nan")}, "data.val_fraction must be a finite number, got nan"),
    ({"distill.iterations": float("inf")}, "distill.iterations must be an integer, got inf"),
    ({"device": "tpu"}, "device must be one of auto, cpu, cuda, mps (or cuda:N), got 'tpu'"),
    ({"device": "mps:1"}, "got 'mps:1'"),
    ({"seed": 2**64}, f"seed must be in [0, {2**63 - 1}], got {2**64}"),
    ({"seed": -1}, "seed must be in [0, "),
])
def test_settings_refused_when_resolved(overrides, message):
    with pytest.raises(InvalidArgument) as info:
        apply_overrides(load_preset("digits"), overrides)
    assert message in str(info.value)


def test_devices_accepted_when_resolved():
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert apply_overrides(load_preset("digits"), {"device": device}).device == device


def test_active_fashion_preset_matches_five_expert_steps_per_student_step():
    # configs/fashion-mnist-active.toml: M rows x snapshot_every SGD steps = 5 x N (its header says 5:1).
    cfg = load_preset("configs/fashion-mnist-active.toml")
    expert_steps = cfg.distill.expert_epochs * cfg.experts.snapshot_every
    assert expert_steps == 5 * cfg.distill.syn_steps
    assert cfg.data.name == "fashion-mnist" and cfg.distill.lr_img == 1000.0


def test_key_dict_leaves_out_added_settings_only_at_their_legacy_values():
    from autoselmatch.config import ADDED_SETTINGS, DistillConfig, key_dict, to_dict

    plain = key_dict("distill", DistillConfig())
    assert set(to_dict(DistillConfig())) - set(plain) == set(ADDED_SETTINGS["distill"])  # keys as older versions hashed
    changed = key_dict("distill", DistillConfig(precision="bf16"))
    assert changed["precision"] == "bf16" and "coverage_every" not in changed
    assert key_dict("tune", load_preset("digits").tune) == to_dict(load_preset("digits").tune)  # no added settings


def test_data_flip_is_keyed_only_when_off():
    from autoselmatch.config import DataConfig, key_dict

    assert "flip" not in key_dict("data", DataConfig())  # caches keyed before data.flip keep their keys
    assert key_dict("data", DataConfig(flip=False))["flip"] is False
    assert load_preset("digits").data.flip is False  # a mirrored digit is another symbol
    assert load_preset("fashion-mnist").data.flip and load_preset("cifar10").data.flip
