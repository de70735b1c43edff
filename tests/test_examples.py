"""Every example command shown to users parses: the README's code blocks and every ``--help`` text.

A command that has ``--print-config`` is run with it (its settings are resolved, nothing is
computed); any other is parsed by click alone (options, types and files that must exist). The
files an example names are created empty in a scratch folder first.
"""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from autoselmatch.cli import COMMANDS, cli

README = Path(__file__).resolve().parent.parent / "README.md"
RUNNER = CliRunner()


def _commands_in(text: str) -> list[str]:
    """``autoselmatch ...`` command lines in ``text`` (continuations joined, comments and prompts dropped)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        for part in line.split("&&"):
            part = part.strip()
            if part.startswith("autoselmatch "):
                found.append(re.split(r"\s+#", part)[0].strip())
    return found


def readme_examples() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [cmd for block in blocks for cmd in _commands_in(block)]


def help_examples() -> list[str]:
    texts = [RUNNER.invoke(cli, ["--help"]).output]
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        texts.append(RUNNER.invoke(cli, [name, "--help"]).output)
        if isinstance(command, click.Group):
            texts += [RUNNER.invoke(cli, [name, sub, "--help"]).output for sub in command.commands]
    return [cmd for text in texts for cmd in _commands_in(text)]


EXAMPLES = sorted(set(readme_examples()) | set(help_examples()))


def test_examples_are_found():
    assert len(readme_examples()) >= 8 and len(help_examples()) >= 20
    assert any("--device cuda" in e for e in readme_examples())  # the multi-machine example


def _leaf(args: list[str]) -> tuple[click.Command, list[str]]:
    """Parse ``args`` down to the command that runs (click's parser, no command body runs)."""
    ctx = cli.make_context("autoselmatch", list(args))
    command: click.Command = cli
    while isinstance(command, click.Group):
        with warnings.catch_warnings():  # click 8.2 deprecates protected_args; click 9 moves them into args
            warnings.simplefilter("ignore", DeprecationWarning)
            rest = [*getattr(ctx, "protected_args", []), *ctx.args]
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
    return command, args


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_parses(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    args = shlex.split(example)[1:]
    placeholders = [token for token in args  # files an example reads must exist for click.Path(exists=True)
                    if re.search(r"\.(pt|npy|npz|txt)$", token) and "://" not in token and not token.startswith("-")]
    for token in placeholders:
        path = Path(token).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    for token in args:  # folders an example reads (an export folder given to evaluate)
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)+", token) and not Path(token).suffix:
            Path(token).mkdir(parents=True, exist_ok=True)
            placeholders.append(token)
    if "--help" in args or "--version" in args:
        result = RUNNER.invoke(cli, args)
        assert result.exit_code == 0, result.output
        return
    command, _ = _leaf(args)
    if any("--print-config" in p.opts for p in command.params) and not (command.name == "evaluate" and placeholders):
        # (evaluate reads its set, here an empty placeholder, before it resolves the settings)
        result = RUNNER.invoke(cli, [*args, "--print-config"])
        assert result.exit_code == 0, f"{example}\n{result.output}"
        assert "[distill]" in result.output
