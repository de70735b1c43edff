"""Each list of names is written once: config checks it, the CLI offers it, the registries hold exactly it."""

import subprocess
import sys

import click
import pytest

from autoselmatch import choices
from autoselmatch.cli import cli
from autoselmatch.errors import InvalidArgument


def option_choices(command: str, option: str) -> tuple[str, ...]:
    ctx = click.Context(cli)
    param = next(p for p in cli.get_command(ctx, command).params if option in p.opts)
    assert isinstance(param.type, click.Choice)
    return tuple(param.type.choices)


@pytest.mark.parametrize("command, option, names", [
    ("distill", "--memory", choices.MEMORY_MODES),
    ("distill", "--init", choices.DISTILL_INITS),
    ("distill", "--mode", choices.DISTILL_MODES),
    ("evaluate", "--augment", choices.AUGMENTATIONS),
    ("experts", "--augment", choices.EXPERT_AUGMENTATIONS),
])
def test_the_cli_offers_the_names_config_accepts(command, option, names):
    assert option_choices(command, option) == names


def test_registries_hold_exactly_the_listed_names():
    from autoselmatch.augment import AUGMENTATIONS
    from autoselmatch.reproduce import METHODS

    assert AUGMENTATIONS.names() == sorted(choices.AUGMENTATIONS)
    assert set(choices.EXPERT_AUGMENTATIONS) < set(choices.AUGMENTATIONS)
    assert METHODS.names() == sorted(choices.REPRODUCE_METHODS)


def test_config_and_the_matcher_check_the_same_memory_modes():
    import torch

    from autoselmatch.config import DistillConfig
    from autoselmatch.distill import TrajectoryMatcher
    from autoselmatch.models import FlatModel, build_model

    for mode in choices.MEMORY_MODES:
        assert DistillConfig(memory=mode).memory == mode
    with pytest.raises(InvalidArgument, match="distill.memory must be one of exact, checkpoint, tesla, got 'disk'"):
        DistillConfig(memory="disk")
    flat = FlatModel(build_model("convnet", channels=1, num_classes=2, image_size=8, width=4, depth=1))
    labels = torch.tensor([0, 1])
    with pytest.raises(InvalidArgument, match="memory must be one of exact, checkpoint, tesla, got 'disk'"):
        TrajectoryMatcher(flat, labels, syn_steps=1, batch_syn=2, memory="disk")


def test_the_names_are_read_without_torch():
    code = "import sys, autoselmatch.choices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
