"""`autoselmatch bench combine`: `bench reproduce` runs of different --seed combined (reproduce/_seeds.py)."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from autoselmatch.cli import cli

RUNNER = CliRunner()
TINY = ["--set", "scores.epochs=1", "--set", "scores.networks=1", "--set", "evaluate.steps=10"]


def combine(*args):
    return RUNNER.invoke(cli, ["bench", "combine", *map(str, args)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Random and window sets on digits at IPC 3 and 7, 2 networks each, and their coverage, for seeds 0 and 1."""
    root = tmp_path_factory.mktemp("seeds")
    folders = []
    for seed in (0, 1):
        out = root / f"s{seed}"
        result = RUNNER.invoke(cli, ["--device", "cpu", "--seed", str(seed), "bench", "reproduce", "-d", "digits",
                                     "--cache-dir", str(root / "cache"), *TINY, "--ipc", "3,7", "--runs", "2",
                                     "--methods", "random,window", "--alpha", "0.5", "--beta", "0.2", "--no-ablation",
                                     "--out", str(out)])
        assert result.exit_code == 0, result.output
        folders.append(out)
    return root, folders


def _means(folder):
    table = json.loads((folder / "results.json").read_text())["table"]
    return {(r["method"], r["ipc"]): r["mean"] for r in table}


def test_the_table_is_the_mean_and_std_across_seeds_and_the_differences_are_paired(runs, tmp_path):
    _, folders = runs
    result = combine(*folders, "--against", "random", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    per_seed = [_means(f) for f in folders]
    assert per_seed[0] != per_seed[1]  # another seed draws other images and networks
    saved = json.loads((tmp_path / "out" / "seeds.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["against"] == "random"
    for row in saved["table"]:
        values = [m[(row["method"], row["ipc"])] for m in per_seed]
        assert row["accuracies"] == values and row["seeds"] == [0, 1]
        assert row["mean"] == pytest.approx(np.mean(values)) and row["std"] == pytest.approx(np.std(values))
    (diff,) = [d for d in saved["differences"] if d["ipc"] == 7]
    expected = [m[("window", 7)] - m[("random", 7)] for m in per_seed]
    assert diff["method"] == "window" and diff["diffs"] == pytest.approx(expected)
    assert diff["se"] == pytest.approx(np.std(expected, ddof=1) / np.sqrt(2))
    table = (tmp_path / "out" / "seeds.md").read_text()
    assert table in result.output and "over 2 pipeline seeds (0, 1)" in table
    assert "mean ± std over 2 pipeline seeds; best per IPC" in table and "over 2 networks" not in table  # the spread
    window = next(r for r in saved["table"] if r["method"] == "window" and r["ipc"] == 7)
    assert f"{100 * window['mean']:.2f} ± {100 * window['std']:.2f}" in table
    assert "(population std, as for the networks)" in table and "(sample std / sqrt(n);" in table  # which spread
    line = next(line for line in table.splitlines() if line.startswith("| window − random |"))
    assert line.split(" | ")[-1].startswith(f"{100 * diff['mean']:+.2f} ± {100 * diff['se']:.2f}")  # IPC 7
    assert "IPC 7: seed 0 (0.5, 0.2; given), seed 1 (0.5, 0.2; given)" in table  # the knobs of each seed
    assert "Evaluation budget: sets 10 steps per network" in table  # the runs' common budget line
    coverage = [{(r["method"], r["ipc"]): r for r in json.loads((f / "results.json").read_text())["coverage"]}
                for f in folders]
    combined = {(r["method"], r["ipc"]): r for r in saved["coverage"]}
    assert set(combined) == {(m, i) for m in ("random", "window") for i in (3, 7)}
    for key, row in combined.items():
        assert row["seeds"] == [0, 1]
        assert row["hard"] == pytest.approx(np.mean([c[key]["hard"] for c in coverage]))
    assert f"| window | 7 | {combined[('window', 7)]['coverage']:.3f} |" in table


def test_a_row_missing_from_a_seed_counts_only_the_seeds_that_have_it(runs, tmp_path):
    _, folders = runs
    partial = tmp_path / "s1"
    partial.mkdir()
    results = json.loads((folders[1] / "results.json").read_text())
    for row in results["table"]:
        if row["method"] == "window" and row["ipc"] == 3:  # as if its cells were not finished
            row["mean"], row["std"], row["accuracies"] = None, None, []
    (partial / "results.json").write_text(json.dumps(results))
    result = combine(folders[0], partial, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "seeds.json").read_text())
    assert saved["against"] == "random"  # no selmatch in these runs: the first method
    row = next(r for r in saved["table"] if r["method"] == "window" and r["ipc"] == 3)
    assert row["seeds"] == [0] and row["mean"] == _means(folders[0])[("window", 3)] and row["std"] == 0.0
    assert "Fewer than 2 seeds (their count): window at IPC 3 (1)." in result.output
    diff = next(d for d in saved["differences"] if d["ipc"] == 3)
    assert diff["seeds"] == [0] and diff["se"] is None
    table = (tmp_path / "out" / "seeds.md").read_text()
    assert "a cell with fewer than 2 seeds shows its n in brackets" in table
    line = next(row for row in table.splitlines() if row.startswith(f"| {diff['method']} − random |"))
    assert f"{100 * diff['mean']:+.2f} (1)" in line  # no spread from one seed, and its count


def test_the_ablation_is_combined_row_by_row_over_the_seeds_that_finished_it(runs, tmp_path):
    """Each seed's ablation row (paper Table 3) -> mean ± std across seeds; a row one seed lacks says so."""
    _, folders = runs

    def ablation(means):
        return [{"ipc": 7, "select_init": s, "partial_update": p, "combined_augmentation": c, "set": name,
                 "label": name, "alpha": 1.0 if not p else 0.5, "beta": 0.2 if s else None, "cells": [],
                 "accuracies": [] if m is None else [m], "mean": m, "std": None if m is None else 0.0,
                 "loss_ratio": 0.9, "pixel_change": 0.2, "barely_distilled": False}
                for (s, p, c, name), m in zip([(True, True, False, "selmatch"), (True, True, True, "selmatch"),
                                               (False, True, True, "partial")], means)]

    copies = [_edited(folders[0], tmp_path, "s0", lambda r: r.update(ablation=ablation([0.80, 0.78, 0.75]))),
              _edited(folders[1], tmp_path, "s1", lambda r: r.update(ablation=ablation([0.84, 0.76, None])))]
    result = combine(*copies, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = {(r["set"], r["combined_augmentation"]): r for r in
            json.loads((tmp_path / "out" / "seeds.json").read_text())["ablation"]}
    assert rows[("selmatch", False)]["accuracies"] == [0.80, 0.84] and rows[("selmatch", False)]["seeds"] == [0, 1]
    assert rows[("selmatch", False)]["mean"] == pytest.approx(0.82) and rows[("selmatch", False)]["std"] == pytest.approx(0.02)
    assert rows[("partial", True)]["seeds"] == [0] and rows[("partial", True)]["label"] == "partial (1 of 2 seeds)"
    table = (tmp_path / "out" / "seeds.md").read_text()
    assert "Ablation at IPC 7 (paper Table 3)" in table
    assert "| ✓ | ✓ | – | selmatch | 0.5 | 0.2 | 82.00 ± 2.00 | 0.900 (0.200) |" in table
    assert "| – | ✓ | ✓ | partial (1 of 2 seeds) | 0.5 |  | 75.00 | 0.900 (0.200) |" in table


def _edited(folder, tmp_path, name, edit):
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    results = json.loads((copy / "results.json").read_text())
    edit(results)
    (copy / "results.json").write_text(json.dumps(results))
    return copy


@pytest.mark.parametrize("case, message", [
    ("one", "combining seeds needs 2 or more `bench reproduce` folders, got 1"),
    ("same seed", "were both run with --seed 0; combine runs of different seeds"),
    ("other setting", "differ in evaluate.steps (10 vs 11); only seed, cache_dir, device may differ"),
    ("no results", "has no results.json: expected the --out folder of a `bench reproduce` run"),
    ("not results", "is not a `bench reproduce` results file: it has no"),
    ("against", "--against 'selmatch' is not a method of these runs; they have: random, window"),
])
def test_runs_that_cannot_be_combined_are_one_line_errors(runs, tmp_path, case, message):
    _, (s0, s1) = runs
    edit = {
        "same seed": lambda r: r["config"].update(seed=0),
        "other setting": lambda r: r["config"]["evaluate"].update(steps=11),
        "not results": lambda r: r.pop("table"),
    }
    args = {"one": [s0], "no results": [s0, tmp_path], "against": [s0, s1, "--against", "selmatch"]}.get(case)
    if args is None:
        args = [s0, _edited(s1, tmp_path, "s1", edit[case])]
    result = combine(*args, "--out", tmp_path / "out")
    assert result.exit_code != 0
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out" / "seeds.md").exists()


@pytest.mark.parametrize("stored, combinable", [(None, True), (["dsa"], True), ([], False)])
def test_a_setting_an_older_run_lacks_counts_as_its_default(runs, tmp_path, stored, combinable):
    """A run made before tune.final_augments existed combines with today's runs while theirs is the default
    (["dsa"]); a run that set it otherwise does not."""
    _, (s0, s1) = runs

    def edit(results):
        if stored is None:
            results["config"]["tune"].pop("final_augments")
        else:
            results["config"]["tune"]["final_augments"] = stored

    result = combine(_edited(s0, tmp_path, "old", edit), s1, "--out", tmp_path / "out")
    if combinable:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0 and "differ in tune.final_augments ([] vs ['dsa'])" in result.output
