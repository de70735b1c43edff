"""The CLI shell: global options, help texts, option order, config printing, result formats and
error handling."""

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from autoselmatch import __version__
from autoselmatch.cli import COMMANDS, cli
from autoselmatch.cli._common import format_accuracy, plural

RUNNER = CliRunner()


def all_commands() -> dict[str, click.Command]:
    """Every leaf command by its full name ('tune', 'bench reproduce', ...)."""
    ctx = click.Context(cli)
    found = {}
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        if isinstance(command, click.Group):
            found.update({f"{name} {sub}": c for sub, c in command.commands.items()})
        else:
            found[name] = command
    return found


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


@pytest.mark.parametrize("name, command", all_commands().items())
def test_every_command_takes_the_global_options_and_shows_examples(name, command):
    options = {opt for param in command.params for opt in param.opts}
    assert {"--device", "--seed", "--quiet", "-q", "--verbose", "-v"} <= options
    assert "Example" in (command.help or "")


# Options several commands share, in the one order every --help lists them.
SHARED_ORDER = ["--dataset", "--preset", "--data-root", "--download", "--cache-dir", "--set", "--print-config",
                "--out", "--output", "--device", "--seed", "--quiet", "--verbose"]


@pytest.mark.parametrize("name, command", all_commands().items())
def test_shared_options_come_in_one_order(name, command):
    listed = [param.opts[0] for param in command.params if param.opts and param.opts[0] in SHARED_ORDER]
    assert listed == sorted(listed, key=SHARED_ORDER.index), name


@pytest.mark.parametrize("name, command", all_commands().items())
def test_out_is_o_and_output_is_the_print_format(name, command):
    for param in command.params:
        if "--out" in param.opts:
            assert "-o" in param.opts, name
        if "-o" in param.opts:
            assert "--out" in param.opts, name
        if "--output" in param.opts:
            assert list(param.type.choices) == ["text", "json"], name


def test_commands_that_write_a_file_take_out():
    for name in ("distill", "evaluate", "scores", "export", "export-study", "report", "bench reproduce"):
        assert any("--out" in p.opts for p in all_commands()[name].params), name


def test_report_has_no_dataset_loading_options():
    options = {opt for param in all_commands()["report"].params for opt in param.opts}
    assert not options & {"--download", "--data-root", "--cache-dir", "--set", "--preset"}


def test_global_options_work_after_the_command():
    result = RUNNER.invoke(cli, ["tune", "--dataset", "digits", "--device", "cpu", "--seed", "7", "-q",
                                 "--print-config"])
    assert result.exit_code == 0, result.output
    assert "seed = 7" in result.output and 'device = "cpu"' in result.output


def test_a_global_option_after_the_command_wins_over_one_before():
    result = RUNNER.invoke(cli, ["--seed", "1", "experts", "--seed", "0", "--print-config"])
    assert result.exit_code == 0, result.output
    assert "seed = 0" in result.output


def test_print_config_applies_overrides():
    result = RUNNER.invoke(cli, ["--seed", "7", "tune", "--dataset", "digits", "--set", "distill.iterations=3",
                                 "--print-config"])
    assert result.exit_code == 0, result.output
    assert "seed = 7" in result.output and "iterations = 3" in result.output


@pytest.mark.parametrize("dataset, preset, name", [
    ("Digits", "digits", "digits"),
    ("FASHION-MNIST", "fashion-mnist", "fashion-mnist"),
    ("mnist", "fashion-mnist", "mnist"),
    ("folder:/data/pets", "digits", "folder:/data/pets"),
])
def test_the_preset_follows_the_dataset_in_any_case(dataset, preset, name):
    result = RUNNER.invoke(cli, ["tune", "--dataset", dataset, "--print-config"])
    assert result.exit_code == 0, result.output
    assert f'preset = "{preset}"' in result.output and f'name = "{name}"' in result.output


def test_folder_default_preset_is_named_in_help():
    result = RUNNER.invoke(cli, ["tune", "--help"])
    assert "digits, small, for folder:PATH" in " ".join(result.output.split())


def test_unknown_dataset_is_a_usage_error():
    result = RUNNER.invoke(cli, ["tune", "--dataset", "imagenet-1k", "--print-config"])
    assert result.exit_code == 2
    assert "unknown dataset 'imagenet-1k'" in result.output and "cifar100" in result.output


def test_bad_set_is_a_usage_error():
    result = RUNNER.invoke(cli, ["tune", "--dataset", "digits", "--set", "distill.bogus=1", "--print-config"])
    assert result.exit_code == 2 and "unknown setting 'distill.bogus'" in result.output


def test_bad_device_choice():
    result = RUNNER.invoke(cli, ["--device", "tpu", "studies"])
    assert result.exit_code == 2 and "tpu" in result.output


def test_help_does_not_import_torch():
    code = "import sys; from autoselmatch.cli import cli; cli(['--help'], standalone_mode=False); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


@pytest.mark.parametrize("args, text", [
    ((0.9325,), "93.25 %"),
    ((0.9325, 0.004, 5), "93.25 ± 0.40 % (5 runs)"),
    ((0.9325, 0.0, 1), "93.25 % (1 run)"),
    ((0.9325, 0.004), "93.25 ± 0.40 %"),
])
def test_one_accuracy_format(args, text):
    assert format_accuracy(*args) == text


def test_plural():
    assert plural(1, "run") == "1 run" and plural(2, "run") == "2 runs" and plural(0, "run") == "0 runs"
