"""The CLI shell: global options, help texts, config printing and error handling."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from autoselmatch import __version__
from autoselmatch.cli import COMMANDS, cli

RUNNER = CliRunner()


def test_version():
    result = RUNNER.invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_help_lists_every_command():
    result = RUNNER.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("tune", "experts", "scores", "distill", "evaluate", "export", "report", "dashboard", "studies"):
        assert name in result.output
    for option in ("--device", "--seed", "--quiet", "--verbose"):
        assert option in result.output


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_real_help(command):
    result = RUNNER.invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    first_line = result.output.split("\n\n")[1].strip()
    assert len(first_line) > 30


def test_print_config_applies_overrides():
    result = RUNNER.invoke(cli, ["--seed", "7", "report", "--dataset", "digits", "--set", "distill.iterations=3",
                                 "--print-config"])
    assert result.exit_code == 0, result.output
    assert "seed = 7" in result.output and "iterations = 3" in result.output


def test_unknown_dataset_is_a_usage_error():
    result = RUNNER.invoke(cli, ["report", "--dataset", "imagenet-1k", "--print-config"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "unknown dataset 'imagenet-1k'" in result.output and "cifar100" in result.output


def test_bad_set_is_a_usage_error():
    result = RUNNER.invoke(cli, ["report", "--dataset", "digits", "--set", "distill.bogus=1", "--print-config"])
    assert result.exit_code == 2 and "unknown setting 'distill.bogus'" in result.output


def test_bad_device_choice():
    result = RUNNER.invoke(cli, ["--device", "tpu", "studies"])
    assert result.exit_code == 2 and "tpu" in result.output


def test_help_does_not_import_torch():
    code = "import sys; from autoselmatch.cli import cli; cli(['--help'], standalone_mode=False); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
