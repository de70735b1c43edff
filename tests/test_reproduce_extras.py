"""`bench reproduce --extra NAME=PATH`: sets saved by MTT / DATM as rows of the main table, same protocol."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from autoselmatch.cli import cli
from autoselmatch.errors import InvalidArgument
from autoselmatch.experts import ZCAWhitening
from autoselmatch.reproduce import parse_extras


def save_reference(folder: Path, images: torch.Tensor, labels: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(images, folder / "images_best.pt")
    torch.save(labels, folder / "labels_best.pt")
    return folder


@pytest.fixture
def sets(digits, tmp_path):
    """3 images per class of digits saved as MTT does (hard labels) and as DATM does (soft logits)."""
    images, labels = digits.split("train")
    index = torch.cat([torch.nonzero(labels == c).flatten()[:3] for c in range(10)])
    x, y = digits.normalize(images[index]), labels[index]
    hard = save_reference(tmp_path / "mtt", x, y)
    soft = save_reference(tmp_path / "datm", x, 4 * torch.nn.functional.one_hot(y, 10).float())
    return {"hard": hard, "soft": soft, "images": x, "labels": y}


def reproduce(tmp_path: Path, *extra: str):
    args = ["--device", "cpu", "-q", "bench", "reproduce", "-d", "digits", "--ipc", "3", "--methods", "random",
            "--runs", "1", "--no-ablation", "--no-coverage", "--set", "evaluate.steps=5",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), *extra]
    return CliRunner().invoke(cli, args)


def test_extra_sets_are_rows_of_the_table_and_resume(sets, tmp_path):
    extras = ["--extra", f"MTT={sets['hard']}", "--extra", f"DATM={sets['soft']}"]
    result = reproduce(tmp_path, *extras)
    assert result.exit_code == 0, result.output
    table = (tmp_path / "out" / "table.md").read_text()
    for name in ("random", "MTT", "DATM"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} "))
        assert "—" not in row, row
    cell = json.loads((tmp_path / "out" / "cells" / "DATM-ipc3-s0.json").read_text())
    assert cell["set"]["labels"] == "soft" and cell["evaluation"]["n_distill"] == 30
    assert cell["evaluation"]["steps"] == 5 and f"--extra DATM={sets['soft']}" in cell["command"]
    again = reproduce(tmp_path, *extras)
    assert again.exit_code == 0 and "0 cell(s) computed, 3 reused" in again.output
    # another file under the same name is another set: scored again
    save_reference(sets["hard"], sets["images"].flip(3), sets["labels"])
    changed = reproduce(tmp_path, *extras)
    assert changed.exit_code == 0 and "1 cell(s) computed, 2 reused" in changed.output


def test_bad_extras_are_one_line_errors(sets, digits, tmp_path):
    whitened = ZCAWhitening.fit(digits.normalize(digits.split("train")[0]), 0.1)(sets["images"])
    white = save_reference(tmp_path / "white", whitened, sets["labels"])
    two = save_reference(tmp_path / "two", sets["images"][::3][:20], sets["labels"][::3][:20])
    cases = [
        (["--extra", "MTT"], "--extra takes NAME=PATH"),
        (["--extra", f"selmatch={sets['hard']}"], "'selmatch' is already a row"),
        (["--extra", f"DATM={white}"], "look ZCA-whitened"),
        (["--extra", f"DATM={two}"], "add --ipc"),
    ]
    for extra, message in cases:
        result = reproduce(tmp_path, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and result.output.strip().count("\n") == 0, result.output


def test_parse_extras_keeps_order_and_refuses_repeats():
    assert parse_extras(["A=x", "B=y"]) == (("A", "x"), ("B", "y"))
    with pytest.raises(InvalidArgument, match="already a row"):
        parse_extras(["A=x", "A=y"])
    with pytest.raises(InvalidArgument, match="letters, digits"):
        parse_extras(["a b=x"])
