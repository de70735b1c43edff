"""The benchmark scripts in bench/ still run (tiny geometries, CPU)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_distill_speed_profile_reports_where_an_iteration_goes(tmp_path):
    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, str(BENCH / "distill_speed.py"), "--width", "8", "--image-size", "8",
                           "--classes", "3", "--ipc", "2", "--batch", "3", "--syn-steps", "2",
                           "--profile", "exact/fp32", "--json", str(out)],
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["variant"] == "exact/fp32" and result["syn_steps"] == 2
    assert result["wall_s"] > 0
    assert result["kernel_s"] is None  # no CUDA kernels on a CPU
    assert "convolution" in result["table"]  # the student's convolutions appear among the operators


@pytest.mark.slow  # three subprocesses, a torch start-up each
def test_method_speed_times_every_base_method(tmp_path):
    out = tmp_path / "methods.json"
    done = subprocess.run([sys.executable, str(BENCH / "method_speed.py"), "--geometry", "fashion-mnist", "--ipc", "2",
                           "--iterations", "1", "--warmup", "0", "--set", "distill.batch_syn=10",
                           "--set", "distill.syn_steps=2", "--set", "distill.gm_outer_loop=1",
                           "--set", "distill.gm_batch_real=4", "--set", "distill.sre2l_batch=10",
                           "--set", 'experts.model={name="convnet", depth=1, width=8, norm="batch"}',
                           "--json", str(out)], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["mtt", "dsa", "sre2l"]
    assert all(r["s_per_iteration"] > 0 and r["images"] == 20 for r in rows)


def _tune_regret():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tune_regret", BENCH / "tune_regret.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tune_regret_merges_table_shares_and_refuses_tables_that_disagree(tmp_path):
    regret = _tune_regret()
    common = {"beta": {"0.2": [[0.5, 1.0, [0.5]]]}, "alpha": {"0.2,1.0": [[0.6, 9.0, 0.7]]}}
    a = {**common, "alpha": {"0.2,1.0": [[0.6, 9.0, 0.7], [0.61, 9.0, 0.71]], "0.4,1.0": [[0.5, 8.0, 0.6]]}}
    for name, table in (("a", a), ("b", common)):
        (tmp_path / f"{name}.json").write_text(json.dumps(table))
    regret.merge_tables(tmp_path, [tmp_path / "b.json", tmp_path / "a.json"])
    merged = json.loads((tmp_path / "table.json").read_text())
    assert merged["alpha"] == a["alpha"] and merged["beta"] == common["beta"]  # the longer rows, the union of points
    (tmp_path / "c.json").write_text(json.dumps({"alpha": {"0.2,1.0": [[0.1, 9.0, 0.2]]}}))
    with pytest.raises(SystemExit, match="0.2,1.0 differs"):
        regret.merge_tables(tmp_path, [tmp_path / "a.json", tmp_path / "c.json"])


def test_tune_regret_seeds_read_every_order_of_the_replicates_the_same_at_every_point():
    regret = _tune_regret()

    class Trial:
        def __init__(self, r):
            self.user_attrs = {"replicate": r}

    rows = [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [2.0, 1.0, 0.0]]  # value = the replicate's index
    orders = []
    for seed in range(6):
        objs = regret.TableObjectives({}, seed, 3, {}, None)
        orders.append(tuple(int(objs._row(rows, Trial(r))[0]) for r in range(3)))
        assert objs._row(rows[:1], Trial(2))[0] == 0.0  # a point with one replicate reads it
        assert objs.spent == 4.0
    assert sorted(orders) == sorted(set(orders)) and len(orders) == 6  # 3! orders, each once


def test_score_correlation_compares_each_scores_best_window_with_random_draws(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "score_correlation.py"), "--dataset", "digits",
                           "--cache-dir", str(tmp_path), "--set", "experts.num_experts=1", "--set", "experts.epochs=2",
                           "--set", "scores.networks=1", "--set", "scores.epochs=1", "--set", "evaluate.steps=4",
                           "--set", 'evaluate.model={name="convnet", depth=1, width=8, norm="batch"}',
                           "--ipc", "3", "--betas", "0,0.5", "--seeds", "2", "--fraction", "1"],
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert set(report["spearman"]) == {"forgetting vs learning-speed", "forgetting vs el2n", "learning-speed vs el2n"}
    windows = report["windows"]
    assert (windows["ipc"], windows["steps"], windows["augment"], windows["split"]) == (3, 4, "dsa", "val")
    random = windows["random"]["mean"]
    assert 0.0 <= random <= 1.0
    assert set(windows["scores"]) == {"forgetting", "learning-speed", "el2n"}
    for score in windows["scores"].values():
        assert list(score["curve"]) == ["0", "0.5"]
        assert score["best"] == max(score["curve"].values()) and score["best_beta"] in (0.0, 0.5)
        assert score["best_minus_random"] == pytest.approx(score["best"] - random, abs=2e-4)


@pytest.mark.slow  # five autoselmatch commands, a torch start-up each
def test_fidelity_script_scores_every_set_with_extra_settings(tmp_path):
    """bench/fidelity.sh (the GPU check of issue 15) on digits: SETS reaches every command, every set is
    made and scored, and the table names each one."""
    import os

    tiny = ("experts.epochs=2 distill.max_start_epoch=1 distill.expert_epochs=1 distill.syn_steps=2 "
            "evaluate.steps=5 scores.epochs=1 scores.networks=1")
    env = {**os.environ, "DATASET": "digits", "PRESET": str(BENCH.parent / "configs" / "digits.toml"), "IPCS": "3",
           "ITERS": "2", "ALPHAS": "0.5", "EXPERTS": "1", "RUNS": "1", "BETA": "0.2", "SETS": tiny}
    done = subprocess.run(["bash", str(BENCH / "fidelity.sh"), str(tmp_path / "out"), "--device", "cpu"], env=env,
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| 3 |")]
    assert sorted(row[1] for row in rows) == ["mtt", "random", "selmatch0.5", "window"]
    assert all(row[4].endswith("(1 run) |") for row in rows)
    from autoselmatch.synset import SyntheticSet

    config = SyntheticSet.load(tmp_path / "out" / "mtt-3" / "result.pt").settings["config"]
    assert config["experts"]["epochs"] == 2 and config["distill"]["max_start_epoch"] == 1  # SETS reached the command
    assert "settings experts.epochs=2" in (tmp_path / "out" / "settings.txt").read_text()


@pytest.mark.slow  # one bench reproduce on digits
def test_reproduce_active_script_makes_a_table_per_ratio_with_extra_settings(tmp_path):
    """bench/reproduce_active.sh (issue 15's active-preset tables) on digits: one table per ratio, with the
    selection-only rows scored with DSA, and SETS and ITERS reaching the distillations."""
    import os

    tiny = ("experts.num_experts=1 distill.max_start_epoch=2 distill.expert_epochs=1 distill.syn_steps=2 "
            "evaluate.steps=5 scores.epochs=1 scores.networks=1 reproduce.full_epochs=1")
    env = {**os.environ, "DATASET": "digits", "PRESET": str(BENCH.parent / "configs" / "digits.toml"), "ITERS": "2",
           "RUNS": "1", "METHODS": "random,mtt,selmatch", "SETS": tiny}
    done = subprocess.run(["bash", str(BENCH / "reproduce_active.sh"), str(tmp_path / "out"), "10"], env=env,
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "out" / "r10" / "table.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in table.splitlines()
            if line.startswith("| ") and "IPC 14" not in line and "---" not in line}
    assert rows == {"random": "dsa", "mtt": "combined", "selmatch": "combined"}
    from autoselmatch.synset import SyntheticSet

    sets = map(SyntheticSet.load, (tmp_path / "out" / "r10" / "sets").glob("*.pt"))
    made = {s.settings["method"]: s.settings for s in sets if "method" in s.settings}  # random has no method
    assert (made["selmatch"]["alpha"], made["selmatch"]["beta"], made["selmatch"]["init"]) == (0.2, 0.4, "window")
    assert made["selmatch"]["iterations"] == made["mtt"]["iterations"] == 2  # ITERS
    assert made["mtt"]["init"] == "random" and made["selmatch"]["activity"][-1]["pixel_change"] > 0
    (experts,) = (tmp_path / "out" / "cache" / "experts").iterdir()  # the script's CACHE default
    assert len(list(experts.glob("expert_*[0-9].npy"))) == 1  # SETS reached the command: experts.num_experts=1


@pytest.mark.slow  # four bench reproduce runs and two combines on digits
def test_bases_script_makes_each_methods_paper_table_per_seed_and_combines_the_seeds(tmp_path):
    """bench/bases_fashion.sh (issue 17's Table 7 / 8 layouts) on digits: one table per method and seed, the
    methods' reduced settings reach their distillations, and the seeds combine into one table per method."""
    import os

    tiny = ("experts.num_experts=1 experts.epochs=2 distill.max_start_epoch=1 distill.expert_epochs=1 "
            "distill.sre2l_batch=20 evaluate.steps=5 scores.epochs=1 scores.networks=1")
    env = {**os.environ, "DATASET": "digits", "PRESET": str(BENCH.parent / "configs" / "digits.toml"), "IPCS": "15",
           "SEEDS": "0 1", "RUNS": "1", "ITERS_SRE2L": "2", "ITERS_DSA": "1", "SETS": tiny}
    done = subprocess.run(["bash", str(BENCH / "bases_fashion.sh"), str(tmp_path / "out"), "sre2l", "dsa"], env=env,
                          capture_output=True, text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    for method, table, rows in (("sre2l", 8, 4), ("dsa", 7, 3)):
        for seed in (0, 1):
            results = json.loads((out / f"{method}-s{seed}" / "results.json").read_text())
            assert results["base"]["paper_table"] == table and len(results["table"]) == rows
            assert results["config"]["seed"] == seed and results["config"]["distill"]["method"] == method
            assert results["ipcs"] == [15]  # IPCS, absolute images per class, replaces RATIOS
        combined = (out / f"{method}-seeds" / "seeds.md").read_text()
        assert f"Paper Table {table} layout, base method {method}" in combined and "over 2 pipeline seeds" in combined
        assert "| SelMatch (window at beta, partial update of alpha) | combined |" in combined  # the layout's names
    sre2l = json.loads((out / "sre2l-s0" / "results.json").read_text())["config"]["distill"]
    dsa = json.loads((out / "dsa-s0" / "results.json").read_text())["config"]["distill"]
    assert sre2l["sre2l_teacher"] == "expert" and sre2l["iterations"] == 2  # the method's reduced settings
    assert (dsa["iterations"], dsa["gm_outer_loop"], dsa["gm_inner_loop"]) == (1, 2, 1)
    assert not (out / "cache" / "teachers").exists() or not any((out / "cache" / "teachers").iterdir())  # no teacher trained
