"""`autoselmatch bench reproduce` on digits with a tiny budget: tables, resume, --only, folders, bad input."""

import csv
import json
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from autoselmatch.cli import cli
from autoselmatch.config import REPRODUCE_METHODS, load_preset
from autoselmatch.errors import InvalidArgument
from autoselmatch.reproduce import Knobs, SetSpec, distill_recipe, resolve_ipcs, set_key, study_knobs

RUNNER = CliRunner()
TINY = [
    "--set", "experts.num_experts=1", "--set", "distill.max_start_epoch=2", "--set", "distill.expert_epochs=1",
    "--set", "distill.syn_steps=3", "--set", "distill.iterations=3", "--set", "distill.eval_every=0",
    "--set", "distill.checkpoint_every=0", "--set", "scores.epochs=1", "--set", "scores.networks=1",
    "--set", "evaluate.steps=10",
]


def invoke(args):
    return RUNNER.invoke(cli, ["--device", "cpu", "bench", "reproduce", *args])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished run: every method at 5 % and 10 % of digits (IPC 7 and 14), ablation and coverage."""
    root = tmp_path_factory.mktemp("reproduce")
    args = ["-d", "digits", "--cache-dir", str(root / "cache"), *TINY, "--ipc", "5%,10%", "--runs", "1",
            "--alpha", "0.5", "--beta", "0.2,0.1", "--out", str(root / "out")]
    started = time.perf_counter()
    result = invoke(args)
    assert result.exit_code == 0, result.output
    return {"args": args, "out": root / "out", "output": result.output, "seconds": time.perf_counter() - started}


def test_table_has_every_method_and_ipc(run):
    table = (run["out"] / "table.md").read_text()
    assert "IPC 7 (5%)" in table and "IPC 14 (10%)" in table
    for method in REPRODUCE_METHODS:
        row = next(line for line in table.splitlines() if line.startswith(f"| {method} ") or
                   (method == "full" and line.startswith("| full (")))
        assert "—" not in row and row.count("±") == 2
    assert table.count("**") == 4  # one bold best per IPC
    assert table in run["output"]


def test_csv_and_json_agree(run):
    rows = list(csv.DictReader((run["out"] / "table.csv").open()))
    results = json.loads((run["out"] / "results.json").read_text())
    assert {(r["method"], r["ipc"]) for r in rows} == {(m, str(i)) for m in REPRODUCE_METHODS if m != "full"
                                                        for i in (7, 14)} | {("full", "")}
    by_key = {(r["method"], r["ipc"]): r for r in results["table"]}
    for row in rows:
        stored = by_key[(row["method"], int(row["ipc"]) if row["ipc"] else None)]
        assert float(row["mean"]) == pytest.approx(stored["mean"], abs=1e-6)
    window = by_key[("window", 14)]
    assert window["beta"] == 0.1 and window["beta_source"] == "given" and window["alpha"] is None
    assert results["knobs"][0] == {"ipc": 7, "alpha": 0.5, "beta": 0.2, "alpha_source": "given", "beta_source": "given"}


def test_ablation_and_coverage_outputs(run):
    ablation = (run["out"] / "ablation.md").read_text()
    assert "IPC 14" in ablation and ablation.count("\n| ") == 9  # header + eight rows
    assert "—" not in ablation
    results = json.loads((run["out"] / "results.json").read_text())
    coverage = {(r["method"], r["ipc"]): r for r in results["coverage"]}
    assert len(coverage) == 2 * 7 + 1
    assert all(0 <= r["easy"] <= 1 and 0 <= r["hard"] <= 1 for r in coverage.values())
    assert coverage[("full", None)]["coverage"] > coverage[("random", 7)]["coverage"]
    page = (run["out"] / "coverage.html").read_text()
    assert 'id="coverage-ipc7"' in page and "<script src=" not in page  # plotly.js inline


def test_cells_record_seed_time_and_rerun_command(run):
    cell = json.loads((run["out"] / "cells" / "selmatch-ipc7-s0.json").read_text())
    assert cell["seed"] == 0 and cell["seconds"] > 0 and 0 <= cell["accuracy"] <= 1
    assert cell["alpha"] == 0.5 and cell["beta"] == 0.2
    assert cell["command"].startswith("autoselmatch --device cpu bench reproduce --dataset digits")
    assert cell["command"].endswith("--only selmatch-ipc7-s0") and "--set distill.iterations=3" in cell["command"]
    # mtt, mtt-init, merge, selmatch at 2 IPCs + partial at the ablation IPC: 9 distillations, one file each
    assert len(list((run["out"] / "sets").glob("distilled-ipc*.pt"))) == 9


def test_rerun_computes_nothing_and_only_reruns_one_cell(run):
    cells = sorted((run["out"] / "cells").glob("*.json"))
    before = {p.name: p.stat().st_mtime_ns for p in cells}
    started = time.perf_counter()
    again = invoke(run["args"])
    seconds = time.perf_counter() - started
    assert again.exit_code == 0, again.output
    assert f"0 cell(s) computed, {len(cells)} reused" in again.output
    assert {p.name: p.stat().st_mtime_ns for p in cells} == before
    assert seconds < run["seconds"] / 2

    only = invoke([*run["args"], "--only", "random-ipc7-s0"])
    assert only.exit_code == 0, only.output
    assert f"1 cell(s) computed, {len(cells) - 1} reused" in only.output
    after = {p.name: p.stat().st_mtime_ns for p in cells}
    assert [n for n in after if after[n] != before[n]] == ["random-ipc7-s0.json"]

    unknown = invoke([*run["args"], "--only", "nope-ipc7-s0"])
    assert unknown.exit_code == 2 and "is not a cell of this run" in unknown.output


def test_bad_inputs_are_one_line_errors(tmp_path):
    base = ["-d", "digits", "--out", str(tmp_path / "out")]
    cases = [
        (["--methods", "random,bogus"], "unknown reproduce method 'bogus'"),
        (["--ipc", "150%"], "--ipc ratio must be in (0%, 100%], got 150%"),
        (["--ipc", "5%,x"], "--ipc values must be integers or percentages"),
        (["--ipc", "7,14", "--alpha", "0.5,0.4,0.3"], "--alpha takes one value or one per IPC (2), got 3"),
        (["--ipc", "7", "--beta", "1.5"], "--beta values must be in [0, 1], got 1.5"),
        (["--ipc", "500", "--methods", "random"], "more than the smallest class"),
    ]
    for extra, message in cases:
        result = invoke([*base, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and result.output.strip().count("\n") == 0


def test_ratios_are_shares_of_each_class_of_the_training_split(digits):
    per_class = len(digits.train_labels) / digits.num_classes  # 143.7
    assert resolve_ipcs(["5%", "10%", "20%", "3"], digits) == [round(0.05 * per_class), round(0.1 * per_class),
                                                                round(0.2 * per_class), 3]
    assert load_preset("fashion-mnist").reproduce.ratios == (0.01, 0.05, 0.1)
    with pytest.raises(InvalidArgument, match="more than the smallest class"):
        resolve_ipcs(["100%"], digits)


def test_methods_with_the_same_recipe_share_one_distillation():
    cfg = load_preset("digits")
    tuned_one = Knobs(14, alpha=1.0, beta=0.3)
    keys = {name: set_key(SetSpec(name, 14, tuned_one), cfg) for name in ("mtt-init", "merge", "selmatch", "mtt")}
    assert keys["mtt-init"] == keys["merge"] == keys["selmatch"] != keys["mtt"]
    half = Knobs(14, alpha=0.5, beta=0.3)
    assert distill_recipe(SetSpec("merge", 14, half)).mode == "merge"
    assert set_key(SetSpec("merge", 14, half), cfg) != set_key(SetSpec("selmatch", 14, half), cfg)
    assert distill_recipe(SetSpec("window", 14, half)) is None


def test_alpha_and_beta_are_read_from_finished_studies(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    done = optuna.create_study(study_name="fm-ipc7-alpha", storage=url, direction="maximize")
    done.set_user_attr("final", {"alpha": 0.4, "beta": 0.6, "ipc": 7})
    optuna.create_study(study_name="fm-ipc14-alpha", storage=url, direction="maximize")
    knobs = study_knobs(url, "fm", [7])
    assert (knobs[7].alpha, knobs[7].beta) == (0.4, 0.6)
    assert knobs[7].alpha_source.startswith("study fm-ipc7-alpha") and "fm-ipc7-beta" in knobs[7].beta_source
    with pytest.raises(Exception, match="fm-ipc14-alpha .* is not finished"):
        study_knobs(url, "fm", [14])
    with pytest.raises(Exception, match="has no study fm-ipc30-alpha"):
        study_knobs(url, "fm", [30])


def test_a_study_whose_baseline_won_still_gives_selmatchs_alpha_and_beta(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="fm-ipc7-alpha", storage=url, direction="maximize")
    study.set_user_attr("final", {"alpha": 1.0, "beta": 0.0, "ipc": 7, "chosen": "mtt",
                                  "selmatch": {"alpha": 0.4, "beta": 0.6, "trial": 3, "val_accuracy": 0.5}})
    knobs = study_knobs(url, "fm", [7])
    assert (knobs[7].alpha, knobs[7].beta) == (0.4, 0.6)  # the best grid point, not MTT's set


def test_folder_dataset_with_a_scores_file(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 14), ("test", 4)):
        for cls in ("cat", "dog", "fox"):
            (tmp_path / "pets" / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "pets" / split / cls / f"{i:02d}.png")
    scores = tmp_path / "pets-scores.npy"
    np.save(scores, rng.random(3 * 14).astype(np.float32))
    result = invoke(["-d", f"folder:{tmp_path / 'pets'}", "--preset", "digits", "--scores-file", str(scores),
                     "--cache-dir", str(tmp_path / "cache"), *TINY, "--set", "distill.batch_syn=6",
                     "--ipc", "2,4", "--methods", "random,hardest,window,selmatch", "--runs", "1",
                     "--alpha", "0.5", "--beta", "0.2", "--no-ablation", "--no-coverage", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "out" / "table.md").read_text()
    assert "IPC 2" in table and "IPC 4" in table and "| selmatch |" in table
    assert not (tmp_path / "out" / "ablation.md").exists() and not (tmp_path / "out" / "coverage.md").exists()
    cell = json.loads((tmp_path / "out" / "cells" / "window-ipc4-s0.json").read_text())
    assert f"--scores-file {scores}" in cell["command"]


def test_without_given_knobs_it_tunes_them_into_out(tmp_path):
    """No --alpha/--beta/--storage: alpha and beta are tuned into OUT/studies.db, and the cells say so."""
    out = tmp_path / "out"
    args = ["-d", "digits", "--cache-dir", str(tmp_path / "cache"), *TINY, "--set", "tune.trial_iterations=2",
            "--set", "evaluate.runs=1", "--ipc", "10%", "--runs", "1", "--methods", "window,selmatch",
            "--no-ablation", "--no-coverage", "--out", str(out)]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    url = f"sqlite:///{out / 'studies.db'}"
    knobs = study_knobs(url, "reproduce", [14])[14]
    stored = json.loads((out / "results.json").read_text())["knobs"][0]
    assert (stored["alpha"], stored["beta"]) == (knobs.alpha, knobs.beta)
    assert stored["alpha_source"].startswith("tuned: study reproduce-ipc14-alpha")
    cell = json.loads((out / "cells" / "selmatch-ipc14-s0.json").read_text())
    assert (cell["alpha"], cell["beta"]) == (knobs.alpha, knobs.beta)
