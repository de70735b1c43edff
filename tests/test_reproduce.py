"""`autoselmatch bench reproduce` on digits with a tiny budget: tables, resume, --only, folders, bad input."""

import csv
import dataclasses
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
        assert "—" not in row and row.count("±") == 0  # one seed: the value alone, no "± 0.00"
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


def test_selection_only_sets_are_scored_with_dsa_and_the_table_says_so(run):
    """Paper Table 1: random, hardest and window train with DSA; sets with a D_distill keep combined."""
    for method, augment in (("random", "dsa"), ("hardest", "dsa"), ("window", "dsa"), ("selmatch", "combined"),
                            ("mtt", "combined")):
        name = f"{method}-ipc7-s0" if augment == "combined" else f"{method}-ipc7-dsa-s0"
        cell = json.loads((run["out"] / "cells" / f"{name}.json").read_text())
        assert cell["augment"] == augment and cell["evaluation"]["augment"] == augment
    assert not (run["out"] / "cells" / "random-ipc7-s0.json").exists()  # no crop + flip cell beside the DSA one
    table = (run["out"] / "table.md").read_text()
    assert "| random | dsa |" in table and "| window | dsa |" in table and "| selmatch | combined |" in table
    rows = {(r["method"], r["ipc"]): r for r in csv.DictReader((run["out"] / "table.csv").open())}
    assert rows[("window", "14")]["augment"] == "dsa" and rows[("merge", "14")]["augment"] == "combined"


def test_tables_state_the_evaluation_budget(run):
    """TINY sets evaluate.steps=10: the tables say so, as a share of the paper's rule on digits' training split."""
    from autoselmatch.evaluate import paper_budget

    results = json.loads((run["out"] / "results.json").read_text())
    share = 10 / paper_budget(1438, 1438, 128)  # digits' 1,438 training images: 600 steps
    line = "Evaluation budget: sets 10 steps per network = 1.67 % of the paper's budget"
    assert line in (run["out"] / "table.md").read_text()
    assert line in (run["out"] / "ablation.md").read_text()
    assert results["cells"]["random-ipc7-dsa-s0"]["evaluation"]["paper_share"] == pytest.approx(share)


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

    only = invoke([*run["args"], "--only", "random-ipc7-dsa-s0"])
    assert only.exit_code == 0, only.output
    assert f"1 cell(s) computed, {len(cells) - 1} reused" in only.output
    after = {p.name: p.stat().st_mtime_ns for p in cells}
    assert [n for n in after if after[n] != before[n]] == ["random-ipc7-dsa-s0.json"]

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
        (["--models", "convnet,resnet99"], "--models: unknown model 'resnet99'; known: convnet, convnetd4, resnet18"),
        (["--models", " , "], "--models must name at least one of: convnet"),
    ]
    for extra, message in cases:
        result = invoke([*base, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and result.output.strip().count("\n") == 0
        assert not (tmp_path / "out").exists()


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


def test_a_distilled_sets_key_follows_only_its_own_methods_settings():
    from autoselmatch.config import apply_overrides, key_dict
    from autoselmatch.fileio import stable_hash

    def key(method, **changes):
        cfg = apply_overrides(load_preset("digits"), {"distill.method": method, **changes})
        return set_key(SetSpec("mtt", 14, Knobs(14, alpha=1.0, beta=0.3)), cfg)

    assert key("mtt", **{"distill.gm_lr_img": 0.5, "distill.sre2l_r_bn": 0.5}) == key("mtt")  # others' settings
    assert key("mtt", **{"distill.lr_img": 50.0}) != key("mtt")
    assert key("dsa", **{"distill.gm_lr_img": 0.5}) != key("dsa")
    assert key("dsa", **{"distill.lr_img": 50.0, "experts.num_experts": 2}) == key("dsa")  # MTT's and the experts'
    # an MTT key at the defaults is the one versions before per-method keys wrote (cached sets stay valid)
    cfg = load_preset("digits")
    recipe = distill_recipe(SetSpec("mtt", 14))
    old = stable_hash({"recipe": dataclasses.asdict(recipe), "ipc": 14,
                       "data": {k: v for k, v in key_dict("data", cfg.data).items() if k not in ("root", "download")},
                       "seed": cfg.seed, "experts": key_dict("experts", cfg.experts),
                       "distill": key_dict("distill", cfg.distill)})
    assert set_key(SetSpec("mtt", 14), cfg) == old


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
    cell = json.loads((tmp_path / "out" / "cells" / "window-ipc4-dsa-s0.json").read_text())
    assert f"--scores-file {scores}" in cell["command"]


def test_without_given_knobs_it_tunes_them_into_out(tmp_path):
    """No --alpha/--beta/--storage: alpha and beta are tuned into OUT/studies.db, and the cells say so. An IPC
    whose set is smaller than distill.batch_syn (IPC 1 of digits: 10 images, preset batch 50) is tuned with the
    whole set as the student batch, as its sets are distilled."""
    import optuna

    out = tmp_path / "out"
    args = ["-d", "digits", "--cache-dir", str(tmp_path / "cache"), *TINY, "--set", "tune.trial_iterations=2",
            "--set", "evaluate.runs=1", "--ipc", "1,10%", "--runs", "1", "--methods", "window,selmatch",
            "--no-ablation", "--no-coverage", "--out", str(out)]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    url = f"sqlite:///{out / 'studies.db'}"
    found = study_knobs(url, "reproduce", [1, 14])
    stored = {k["ipc"]: k for k in json.loads((out / "results.json").read_text())["knobs"]}
    for ipc, knobs in found.items():
        assert (stored[ipc]["alpha"], stored[ipc]["beta"]) == (knobs.alpha, knobs.beta)
        assert stored[ipc]["alpha_source"].startswith(f"tuned: study reproduce-ipc{ipc}-alpha")
        cell = json.loads((out / "cells" / f"selmatch-ipc{ipc}-s0.json").read_text())
        assert (cell["alpha"], cell["beta"]) == (knobs.alpha, knobs.beta)
    batches = {ipc: optuna.load_study(study_name=f"reproduce-ipc{ipc}-alpha", storage=url).user_attrs
               for ipc in (1, 14)}
    assert [attrs["settings"]["distill"]["batch_syn"] for attrs in batches.values()] == [10, 50]


# --------------------------------------------------------------------------------------------
# Whether a distillation did anything: the loss-ratio column and the "barely distilled" mark
# --------------------------------------------------------------------------------------------


def test_a_set_distilled_5_iterations_at_a_tiny_lr_img_is_marked_barely_distilled(digits, tmp_path):
    from autoselmatch.config import apply_overrides
    from autoselmatch.reproduce._plan import Cell
    from autoselmatch.reproduce._sets import _Inputs, distilled_set
    from autoselmatch.reproduce._tables import ablation_markdown, main_rows, table_csv, table_markdown

    # one expert, one start epoch, eta frozen: the pixels are the only thing that could lower the loss
    cfg = apply_overrides(load_preset("digits"), {
        "device": "cpu", "cache_dir": str(tmp_path / "cache"), "experts.num_experts": 1,
        "experts.model": {"name": "convnet", "depth": 2, "width": 16, "norm": "batch"},
        "distill.max_start_epoch": 1, "distill.expert_epochs": 1, "distill.syn_steps": 3, "distill.iterations": 5,
        "distill.lr_img": 1e-6, "distill.lr_lr": 1e-12, "distill.eval_every": 0, "distill.checkpoint_every": 0})
    mtt, random = SetSpec("mtt", 5), SetSpec("random", 5)
    built = distilled_set(_Inputs(digits, cfg), mtt, tmp_path / "work")
    ratio = built.settings["loss_ratio"]
    assert built.settings["activity"][-1]["iteration"] == 5 and ratio == built.settings["activity"][-1]["loss_ratio"]
    assert ratio > cfg.reproduce.barely_distilled  # 5 iterations at lr_img 1e-6 move nothing

    cells = [Cell("mtt-ipc5-s0", "eval", mtt, 0, "combined"), Cell("random-ipc5-dsa-s0", "eval", random, 0, "dsa")]
    records = {"mtt-ipc5-s0": {"accuracy": 0.5, "seed": 0, "set": built.settings},
               "random-ipc5-dsa-s0": {"accuracy": 0.6, "seed": 0, "set": {"method": "random"}}}
    rows = {r["method"]: r for r in main_rows(cfg, ["random", "mtt"], [5], cells, records)}
    pixels = built.settings["activity"][-1]["pixel_change"]
    assert pixels < cfg.reproduce.barely_moved  # nor the pixels
    assert rows["mtt"]["loss_ratio"] == ratio and rows["mtt"]["pixel_change"] == pixels
    assert rows["mtt"]["barely_distilled"] is True
    assert rows["random"]["loss_ratio"] is None and rows["random"]["barely_distilled"] is False
    table = table_markdown(list(rows.values()), [5], {}, dataset="digits", runs=1)
    assert "loss ratio (pixel change), per IPC" in table and "the pixels moved less than 0.05 std" in table
    assert f"| mtt | combined | 50.00 ‡ | {ratio:.3f} ({pixels:.3f}) ‡ |" in table  # one seed: no "± 0.00"
    assert "| random | dsa | **60.00** |  |" in table  # nothing distilled: no ratio, no mark
    csv_rows = {r["method"]: r for r in csv.DictReader(table_csv(list(rows.values())).splitlines())}
    assert float(csv_rows["mtt"]["loss_ratio"]) == pytest.approx(ratio) and csv_rows["mtt"]["barely_distilled"] == "1"
    assert float(csv_rows["mtt"]["pixel_change"]) == pytest.approx(pixels)
    assert csv_rows["random"]["loss_ratio"] == "" and csv_rows["random"]["barely_distilled"] == "0"

    still = apply_overrides(cfg, {"reproduce.barely_distilled": ratio + 0.5})  # the pixel change decides, not the ratio
    assert all(r["barely_distilled"] is (r["method"] == "mtt") for r in main_rows(still, ["random", "mtt"], [5], cells,
                                                                                    records))
    lenient = apply_overrides(cfg, {"reproduce.barely_moved": pixels / 2})
    rows = {r["method"]: r for r in main_rows(lenient, ["random", "mtt"], [5], cells, records)}
    assert rows["mtt"]["barely_distilled"] is False
    table = table_markdown(list(rows.values()), [5], {}, dataset="digits", runs=1, rule=lenient.reproduce)
    assert "‡" not in next(line for line in table.splitlines() if line.startswith("| mtt "))
    row = {"select_init": False, "partial_update": False, "combined_augmentation": True, "set": "mtt", "label": "mtt",
           "ipc": 5, "alpha": 1.0, "beta": None, "mean": 0.5, "std": 0.0, "accuracies": [0.5], "loss_ratio": ratio,
           "pixel_change": pixels, "barely_distilled": True}
    assert f"| {ratio:.3f} ({pixels:.3f}) ‡ |" in ablation_markdown([row], 5)


def test_the_pixel_change_decides_barely_distilled_and_the_loss_ratio_only_without_it():
    from autoselmatch.config import ReproduceConfig
    from autoselmatch.reproduce._tables import activity, barely_distilled

    rule = ReproduceConfig()  # 0.05 std, ratio 0.8 (the rule itself: tests/test_synset.py)
    assert barely_distilled(0.63, 0.03, rule) is True and barely_distilled(0.9, None, rule) is True
    assert barely_distilled(0.63, 0.03, dataclasses.replace(rule, barely_moved=0.02)) is False  # its thresholds
    assert barely_distilled(0.9, None, dataclasses.replace(rule, barely_distilled=0.95)) is False
    made = {"loss_ratio": 0.85, "activity": [{"iteration": 0, "pixel_change": 0.0}, {"iteration": 9, "pixel_change": 0.2}]}
    assert activity([{"set": made}], rule) == {"loss_ratio": 0.85, "pixel_change": 0.2, "barely_distilled": False}
    assert activity([{"set": {"loss_ratio": 0.85}}], rule)["barely_distilled"] is True  # no activity recorded


@pytest.mark.parametrize("method", ["mtt", "dsa", "sre2l"])
def test_the_ablation_and_coverage_name_the_alpha_1_sets_after_the_base_method(method):
    from autoselmatch.config import apply_overrides
    from autoselmatch.reproduce._plan import Cell
    from autoselmatch.reproduce._tables import ablation_markdown, ablation_rows, coverage_markdown, coverage_rows

    cfg = apply_overrides(load_preset("digits"), {"distill.method": method})
    rows = ablation_rows(cfg, 5, {5: Knobs(5, alpha=0.5, beta=0.3)}, {}, runs=1)
    assert {r["set"] for r in rows} == {"mtt", "mtt-init", "partial", "selmatch"}  # the ids stay: cells keep theirs
    assert {r["label"] for r in rows} == {method, f"{method}-init", "partial", "selmatch"}
    table = ablation_markdown(rows, 5)
    assert f"| {method} | 1 |  |" in table and f"| {method}-init | 1 | 0.3 |" in table
    assert method == "mtt" or "| mtt" not in table

    record = {"coverage": {"coverage": 0.5, "easy": 0.6, "hard": 0.4}}
    cells = [Cell("cov-mtt", "coverage", SetSpec("mtt", 5), 0, "dsa"),
             Cell("cov-sel", "coverage", SetSpec("selmatch", 5, Knobs(5, alpha=0.5, beta=0.3)), 0, "dsa")]
    cov = coverage_rows(cells, {"cov-mtt": record, "cov-sel": record}, method)
    assert [r["method"] for r in cov] == [method, "selmatch"]
    assert f"| {method} | 5 | 0.500 | 0.600 | 0.400 |" in coverage_markdown(cov)


def test_bad_barely_distilled_threshold_is_refused():
    from autoselmatch.config import apply_overrides

    with pytest.raises(InvalidArgument, match="reproduce.barely_distilled must be > 0"):
        apply_overrides(load_preset("digits"), {"reproduce.barely_distilled": 0})
    with pytest.raises(InvalidArgument, match="reproduce.barely_moved must be a finite pixel change >= 0.*-0.1"):
        apply_overrides(load_preset("digits"), {"reproduce.barely_moved": -0.1})
    with pytest.raises(InvalidArgument, match="reproduce.barely_moved must be a finite number, got nan"):
        apply_overrides(load_preset("digits"), {"reproduce.barely_moved": float("nan")})


def test_cell_keys_tell_augmentations_and_budget_fractions_apart():
    """A DSA cell never reuses a crop + flip number; budget_fraction 1 keys as before the setting existed."""
    import dataclasses

    from autoselmatch.config import apply_overrides
    from autoselmatch.reproduce._cells import cell_key
    from autoselmatch.reproduce._plan import Cell

    cfg = apply_overrides(load_preset("digits"), {"evaluate.budget_fraction": 1.0})
    spec = SetSpec("random", 7)
    dsa = Cell("random-ipc7-dsa-s0", "eval", spec, 0, "dsa")
    combined = Cell("random-ipc7-s0", "eval", spec, 0, "combined")
    assert cell_key(dsa, cfg) != cell_key(combined, cfg)
    quarter = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, budget_fraction=0.25))
    assert cell_key(dsa, quarter) != cell_key(dsa, cfg)
    from autoselmatch.config import to_dict
    from autoselmatch.fileio import stable_hash

    before = {k: v for k, v in to_dict(cfg.evaluate).items() if k not in ("runs", "stack_runs", "budget_fraction")}
    assert cell_key(dsa, cfg) == stable_hash({"set": set_key(spec, cfg), "kind": "eval", "seed": 0, "augment": "dsa",
                                              "evaluate": before, "split": "test"})  # the key's layout until now


def test_coverage_page_plots_coverage_over_iterations_when_recorded():
    from autoselmatch.reproduce._tables import coverage_activities, coverage_html

    points = [{"iteration": i, "loss_ratio": None if i == 0 else 0.9, "eta": 0.01, "pixel_change": i / 100,
               "coverage": 0.5, "coverage_easy": 0.6 + i / 100, "coverage_hard": 0.3 + i / 100} for i in (0, 5, 10)]
    records = {"mtt-ipc5-s0": {"accuracy": 0.5, "seed": 0, "set": {"activity": points, "loss_ratio": 0.9}},
               "window-ipc5-dsa-s0": {"accuracy": 0.6, "seed": 0, "set": {"method": "window"}},
               "merge-ipc5-s0": {"accuracy": 0.6, "seed": 0, "set": {"activity": [dict(points[0])]}}}
    for p in records["merge-ipc5-s0"]["set"]["activity"]:
        del p["coverage_easy"], p["coverage_hard"], p["coverage"]  # distilled without distill.coverage_every
    rows = [{"method": c.split("-")[0], "ipc": 5, "cells": [c]} for c in records] + \
        [{"method": "selmatch", "ipc": 5, "cells": ["selmatch-ipc5-s0"]}]  # not finished
    found = coverage_activities(rows, records)
    assert found == [("mtt, IPC 5", points)]
    page = coverage_html([{"method": "mtt", "ipc": 5, "coverage": 0.5, "easy": 0.7, "hard": 0.4}], "digits", found)
    assert 'id="coverage-iterations"' in page and 'id="coverage-ipc5"' in page
    assert "mtt, IPC 5: easy half" in page and "mtt, IPC 5: hard half" in page
    assert 'id="coverage-iterations"' not in coverage_html([], "digits")


def test_one_seed_shows_the_value_alone_and_two_seeds_their_spread():
    from autoselmatch.reproduce._plan import Cell
    from autoselmatch.reproduce._tables import main_rows, table_markdown

    cfg = load_preset("digits")
    random = SetSpec("random", 5)
    cells = [Cell(f"random-ipc5-dsa-s{seed}", "eval", random, seed, "dsa") for seed in (0, 1)]
    records = {"random-ipc5-dsa-s0": {"accuracy": 0.5, "seed": 0, "set": {"method": "random"}},
               "random-ipc5-dsa-s1": {"accuracy": 0.7, "seed": 1, "set": {"method": "random"}}}
    one = main_rows(cfg, ["random"], [5], cells[:1], records)
    two = main_rows(cfg, ["random"], [5], cells, records)
    assert "| **50.00** |" in table_markdown(one, [5], {}, dataset="digits", runs=1)
    assert "| **60.00 ± 10.00** |" in table_markdown(two, [5], {}, dataset="digits", runs=2)


def test_cross_architecture_table_scores_every_set_with_each_network(tmp_path):
    """Paper Table 2 layout: sets x networks; the evaluation model's column is the main table's cells.

    Eight networks of 10 steps (two seeds x two sets x two networks; no distillation): ~8 s of CPU."""
    out = tmp_path / "out"
    args = ["-d", "digits", "--cache-dir", str(tmp_path / "cache"), *TINY, "--ipc", "5%", "--methods", "random,hardest",
            "--runs", "2", "--no-ablation", "--no-coverage", "--models", "convnet,convnetd4", "--out", str(out)]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    cross = (out / "cross_arch.md").read_text()
    assert cross in result.output and "convnet (the evaluation model, depth=2" in cross
    lines = cross.splitlines()
    assert "| method | IPC | augmentation | convnet | convnetd4 |" in lines
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines if line.startswith(("| random", "| hardest"))}
    assert set(rows) == {"random", "hardest"} and rows["random"][1:3] == ["7", "dsa"] == rows["hardest"][1:3]
    assert all("±" in row[3] and "±" in row[4] for row in rows.values())  # two seeds per network
    assert cross.count("**") == 2 * 2  # one best set per network at the one IPC

    # The convnet column is the main table's numbers; convnetd4 has cells of its own, built with its defaults.
    main = {r["method"]: r for r in json.loads((out / "results.json").read_text())["table"]}
    results = json.loads((out / "results.json").read_text())
    assert results["cross_arch"]["models"] == ["convnet", "convnetd4"]
    for row in results["cross_arch"]["rows"]:
        assert row["models"]["convnet"]["cells"] == main[row["method"]]["cells"]
        assert row["models"]["convnet"]["mean"] == main[row["method"]]["mean"]
        assert len(row["models"]["convnetd4"]["accuracies"]) == 2
    cell = json.loads((out / "cells" / "random-ipc7-dsa-convnetd4-s1.json").read_text())
    assert cell["evaluation"]["model"] == "convnetd4" and cell["seed"] == 1
    assert "--models convnet,convnetd4" in cell["command"]
    assert cell["command"].endswith("--only random-ipc7-dsa-convnetd4-s1")
    assert not list((out / "cells").glob("*-convnet-s*.json"))
    assert "convnetd4" not in (out / "table.md").read_text()
    assert len((out / "cross_arch.csv").read_text().splitlines()) == 1 + 2 * 2

    again = invoke(args)  # cells resume like the main table's
    assert again.exit_code == 0 and "0 cell(s) computed, 8 reused" in again.output


def test_a_cross_architecture_cell_keys_its_network():
    from autoselmatch.reproduce._cells import cell_key, plan_cells
    from autoselmatch.reproduce._plan import Cell

    cfg = load_preset("digits")
    spec = SetSpec("random", 7)
    main = Cell("random-ipc7-dsa-s0", "eval", spec, 0, "dsa")
    assert cell_key(main, cfg) != cell_key(Cell("random-ipc7-dsa-vgg11-s0", "eval", spec, 0, "dsa", "vgg11"), cfg)
    cells = plan_cells(cfg, ["random"], [7], {}, runs=1, ablation_ipc=None, coverage=False,
                       models=("vgg11", "convnet"))
    assert [(c.id, c.model) for c in cells] == [("random-ipc7-dsa-s0", None), ("random-ipc7-dsa-vgg11-s0", "vgg11")]
    assert plan_cells(cfg, ["random"], [7], {}, runs=1, ablation_ipc=None, coverage=False) == cells[:1]


# --------------------------------------------------------------------------------------------
# --method dsa | sre2l: the paper's Tables 7 and 8
# --------------------------------------------------------------------------------------------

BASE_TINY = [
    "--set", "distill.iterations=2", "--set", "distill.eval_every=0", "--set", "distill.checkpoint_every=0",
    "--set", "distill.gm_outer_loop=1", "--set", "distill.gm_inner_loop=0", "--set", "distill.gm_batch_real=8",
    "--set", "distill.sre2l_teacher_epochs=1", "--set", "distill.sre2l_batch=20",
    "--set", 'experts.model={name="convnet", depth=1, width=8, norm="batch"}', "--set", "scores.epochs=1",
    "--set", "scores.networks=1", "--set", "evaluate.steps=5", "--set", "evaluate.model.width=8",
]


@pytest.mark.parametrize("method, table, rows, protocol", [
    ("dsa", 7, ["DSA baseline (random real init, alpha 1)"], "hard labels"),
    ("sre2l", 8, ["SRe2L baseline (noise init, alpha 1)", "SRe2L baseline (random real init, alpha 1)"],
     "KD at temperature 4"),
])
def test_a_base_method_gets_its_paper_table(tmp_path, method, table, rows, protocol):
    args = ["-d", "digits", "--cache-dir", str(tmp_path / "cache"), *BASE_TINY, "--ipc", "2,3", "--runs", "1",
            "--alpha", "0.5", "--beta", "0.1", "--no-ablation", "--no-coverage", "--method", method,
            "--out", str(tmp_path / "out")]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    table_md = (tmp_path / "out" / "table.md").read_text()
    lines = table_md.splitlines()
    assert lines[0].startswith(f"Paper Table {table} layout: base method ") and protocol in lines[0]
    assert "| IPC 2 | IPC 3 |" in table_md
    body = [line.split(" | ")[0].lstrip("| ") for line in lines if line.startswith("| ") and "augmentation" not in line]
    assert body == [*rows, "select init (window at beta, alpha 1)",
                    "SelMatch (window at beta, partial update of alpha)"]
    assert "—" not in table_md and table_md in result.output
    assert not (tmp_path / "cache" / "experts").exists()  # neither base method needs experts
    cell = json.loads((tmp_path / "out" / "cells" / "selmatch-ipc3-s0.json").read_text())
    assert ("+kd(" in cell["evaluation"]["augment"]) == (method == "sre2l")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["base"]["method"] == method and results["base"]["paper_table"] == table
    assert f"--method {method} " in cell["command"] and "distill.method" not in cell["command"]
    saved = sorted((tmp_path / "out" / "sets").glob("distilled-ipc3-*.pt"))[0]
    scored = RUNNER.invoke(cli, ["--device", "cpu", "--quiet", "evaluate", str(saved), "--cache-dir",
                                 str(tmp_path / "cache"), "--steps", "5", "--output", "json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["protocol"] == ("teacher-kd" if method == "sre2l" else "hard-labels")


def test_a_bad_base_method_is_a_one_line_error(tmp_path):
    for extra, message in ((["--method", "kip"], "--method must be one of mtt, dsa, sre2l (the base distillation "
                                                 "method), got 'kip'"),
                           (["--method", "dsa", "--methods", "random"], "--methods picks rows of MTT's table; "
                                                                        "under --method dsa the rows are those of "
                                                                        "the paper's Table 7")):
        result = invoke(["-d", "digits", "--ipc", "3", "--out", str(tmp_path / "out"), *extra])
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.strip().count("\n") == 0
        assert not (tmp_path / "out").exists()


def test_a_set_another_process_is_building_is_waited_for_and_loaded_not_built_again(digits, tmp_path, monkeypatch):
    """Two runs on one OUT (the same command started twice): the second waits on the set's lock, then loads
    the set the first saved, instead of distilling it beside it from the same checkpoints."""
    import threading

    import torch

    from autoselmatch.config import load_preset
    from autoselmatch.fileio import file_lock
    from autoselmatch.reproduce import _sets
    from autoselmatch.synset import SyntheticSet

    cfg = dataclasses.replace(load_preset("digits"), cache_dir=str(tmp_path / "cache"))
    spec, sets_dir = SetSpec("random", 3), tmp_path / "sets"
    path = _sets.set_path(spec, cfg, sets_dir)
    monkeypatch.setattr(_sets, "_builder", lambda name: pytest.fail(f"{name} built again"))
    sets_dir.mkdir()
    loaded = []
    with file_lock(sets_dir / f".{path.stem}.lock"):  # "the other process" holds the set while it builds
        waiter = threading.Thread(target=lambda: loaded.append(_sets.load_or_build(_sets._Inputs(digits, cfg), spec,
                                                                                     sets_dir)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not loaded  # waits for the lock
        images, labels = digits.split("train")
        SyntheticSet(images[:30].cpu(), labels[:30].cpu(), torch.zeros(30, dtype=torch.bool),
                     settings={"method": "random"}).save(path)  # what the other process saved
    waiter.join(timeout=60)
    assert len(loaded) == 1 and len(loaded[0].labels) == 30 and loaded[0].settings["method"] == "random"


@pytest.mark.parametrize("other_saves_it", [False, True])
def test_runs_on_one_out_share_the_cells_a_held_cell_is_skipped_and_then_waited_for(tmp_path, monkeypatch,
                                                                                      other_saves_it):
    """Two runs started on one OUT: a cell another run holds is left for last; once its lock is free it is
    loaded when that run saved it, computed here when it did not (a run killed mid-cell)."""
    import shutil
    import threading

    from autoselmatch.reproduce import _run

    args = ["-d", "digits", "--cache-dir", str(tmp_path / "cache"), *TINY, "--ipc", "3", "--methods", "random",
            "--runs", "3", "--no-ablation", "--no-coverage"]
    assert invoke([*args, "--out", str(tmp_path / "first")]).exit_code == 0
    first = sorted(p.stem for p in (tmp_path / "first" / "cells").glob("*.json"))
    held = first[0]  # the first cell of the run's order: met while still held
    cells = tmp_path / "out" / "cells"
    cells.mkdir(parents=True)
    computed, another_computed = [], threading.Event()
    real = _run.run_eval_cell

    def counted(inputs, cell, built, device):
        computed.append(cell.id)
        another_computed.set()
        return real(inputs, cell, built, device)

    def then():  # the other run saves the cell it held, or dies before it could
        if other_saves_it:
            shutil.copy(tmp_path / "first" / "cells" / f"{held}.json", cells / f"{held}.json")

    monkeypatch.setattr(_run, "run_eval_cell", counted)
    _beside_another_run(cells / f".{held}.lock", another_computed, [*args, "--out", str(tmp_path / "out")], then)
    assert sorted(p.stem for p in cells.glob("*.json")) == first and not list(cells.glob(".*.lock"))
    assert len(computed) == len(set(computed))  # no cell computed twice
    if other_saves_it:
        assert held not in computed and sorted(computed) == first[1:]
    else:
        assert computed[-1] == held and sorted(computed) == first  # skipped first, computed last


def test_a_run_evaluates_other_sets_while_another_run_on_its_out_makes_one(tmp_path, monkeypatch):
    """Two runs on one OUT: while the other run is making a set (its set lock held, no file yet), this run
    takes the cells of the sets it can have now, and comes back to the waiting set's cells after them."""
    import threading

    from autoselmatch.reproduce import _run

    args = ["-d", "digits", "--cache-dir", str(tmp_path / "cache"), *TINY, "--ipc", "3", "--methods",
            "random,window", "--runs", "2", "--no-ablation", "--no-coverage"]
    assert invoke([*args, "--out", str(tmp_path / "first")]).exit_code == 0
    random_set = next((tmp_path / "first" / "sets").glob("random-*.pt"))
    sets = tmp_path / "out" / "sets"
    sets.mkdir(parents=True)
    computed, window_done = [], threading.Event()
    real = _run.run_eval_cell

    def counted(inputs, cell, built, device):
        computed.append(cell.id)
        if cell.id.startswith("window"):
            window_done.set()
        return real(inputs, cell, built, device)

    monkeypatch.setattr(_run, "run_eval_cell", counted)  # the other run makes the random set and dies unsaved
    _beside_another_run(sets / f".{random_set.stem}.lock", window_done, [*args, "--out", str(tmp_path / "out")])
    assert [c.split("-")[0] for c in computed] == ["window", "window", "random", "random"]
    made = sorted(p.name for p in sets.glob("*.pt"))
    assert made == sorted(p.name for p in (tmp_path / "first" / "sets").glob("*.pt"))  # the random set too
    assert not list(sets.glob(".*.lock")) and not list((tmp_path / "out" / "cells").glob(".*.lock"))


def _beside_another_run(lock, release, args, then=lambda: None):
    """``invoke(args)`` while a thread, standing for another run on the same OUT, holds the lock file ``lock``
    until the event ``release`` is set; ``then`` runs before it lets go. The command must succeed."""
    import threading

    from autoselmatch.fileio import file_lock

    holding = threading.Event()

    def other_run():
        with file_lock(lock):
            holding.set()
            release.wait(timeout=120)
            then()

    other = threading.Thread(target=other_run)
    other.start()
    assert holding.wait(timeout=30)
    result = invoke(args)
    other.join(timeout=120)
    assert result.exit_code == 0, result.output
