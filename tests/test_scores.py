"""Difficulty scores: published files, the C-score download, EL2N, scores from the experts' records, the cache."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from autoselmatch import scores as score_module
from autoselmatch.config import ScoreConfig
from autoselmatch.data import ImageDataset
from autoselmatch.errors import DataError, InvalidArgument
from autoselmatch.models import ModelSpec
from autoselmatch.registry import UnknownNameError
from autoselmatch.scores import (
    cache_path,
    check_score_file,
    forgetting_counts,
    get_scores,
    learning_speed,
    load_score_file,
    predict_proba,
    train_pool_network,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "scores"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/scores is not available")


def placeholder_dataset(name: str, labels: np.ndarray) -> ImageDataset:
    """A dataset of 1x1 blank images whose labels come from a score file (CIFAR cannot be downloaded here)."""
    n = len(labels)
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(
        name=name,
        train_images=torch.zeros(n, 1, 1, 1, dtype=torch.uint8),
        train_labels=y,
        test_images=torch.zeros(1, 1, 1, 1, dtype=torch.uint8),
        test_labels=torch.zeros(1, dtype=torch.long),
        classes=tuple(str(c) for c in range(int(y.max()) + 1)),
        mean=(0.5,),
        std=(0.25,),
        train_index=torch.arange(n),
        val_index=torch.zeros(0, dtype=torch.long),
    )


def npz(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(SHARED / name, allow_pickle=False) as f:
        return f["scores"], f["labels"]


@pytest.fixture(scope="module")
def cifar10():
    return placeholder_dataset("cifar10", npz("cscores_cifar10.npz")[1]) if SHARED.is_dir() else None


@pytest.fixture(scope="module")
def cifar100():
    return placeholder_dataset("cifar100", npz("cscores_cifar100.npz")[1]) if SHARED.is_dir() else None


# --------------------------------------------------------------------------------------------
# Published files
# --------------------------------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_published_cscores_load_and_are_negated(which, request):
    ds = request.getfixturevalue(which)
    raw, _ = npz(f"cscores_{which}.npz")
    scores = get_scores(ds, ScoreConfig(name="cscore", file=str(SHARED / f"cscores_{which}.npz")),
                        cache_dir=Path("unused"), seed=0)
    assert scores.shape == (50000,) and scores.dtype == torch.float32
    assert torch.allclose(scores, -torch.from_numpy(raw).float())
    assert int(scores.argmax()) == int(np.argmin(raw))  # the lowest C-score is the hardest sample


@needs_shared
def test_cifar10_cscores_fail_against_cifar100(cifar100):
    with pytest.raises(DataError, match=r"does not belong to cifar100: \d+ of 50000 labels differ"):
        load_score_file(SHARED / "cscores_cifar10.npz", cifar100, name="cscore")


@needs_shared
def test_cifar100_cscores_fail_against_cifar10(cifar10):
    with pytest.raises(DataError, match="does not belong to cifar10"):
        load_score_file(SHARED / "cscores_cifar100.npz", cifar10, name="cscore")


@needs_shared
def test_first_labels_match_the_published_files():
    assert npz("cscores_cifar10.npz")[1][:5].tolist() == [6, 9, 9, 4, 1]
    assert npz("cscores_cifar100.npz")[1][:5].tolist() == [19, 29, 0, 11, 1]


@needs_shared
def test_forgetting_file_keeps_orientation(cifar10):
    raw = np.load(SHARED / "forgetting_cifar10.npy", allow_pickle=False)
    scores = get_scores(cifar10, ScoreConfig(name="forgetting", file=str(SHARED / "forgetting_cifar10.npy")),
                        cache_dir=Path("unused"), seed=0)
    assert torch.equal(scores, torch.from_numpy(raw).float())


@needs_shared
def test_score_file_of_wrong_length_fails(cifar10):
    with pytest.raises(DataError, match=r"shape \(100000,\); cifar10 has 50000 training samples"):
        load_score_file(SHARED / "forgetting_tinyimagenet.npy", cifar10, name="forgetting")


@needs_shared
def test_cscore_download_is_checked_and_cached(cifar10, cache_dir, monkeypatch):
    monkeypatch.setattr(score_module, "CSCORE_URL", SHARED.as_uri() + "/cscores_{file}")
    monkeypatch.setitem(score_module.CSCORE_FILES, "cifar10",
                        ("cifar10.npz", score_module.CSCORE_FILES["cifar10"][1]))
    scores = get_scores(cifar10, ScoreConfig(name="cscore"), cache_dir=cache_dir, seed=0)
    assert (cache_dir / "scores" / "cifar10.npz").is_file()
    assert torch.allclose(scores, -torch.from_numpy(npz("cscores_cifar10.npz")[0]).float())
    monkeypatch.setattr(score_module, "CSCORE_URL", "file:///nonexistent/{file}")  # the cached copy is used
    assert torch.equal(get_scores(cifar10, ScoreConfig(name="cscore"), cache_dir=cache_dir, seed=0), scores)


@needs_shared
def test_cscore_download_with_wrong_checksum_fails(cifar10, cache_dir, monkeypatch):
    monkeypatch.setattr(score_module, "CSCORE_URL", SHARED.as_uri() + "/cscores_{file}")
    monkeypatch.setitem(score_module.CSCORE_FILES, "cifar10", ("cifar10.npz", "0" * 64))
    with pytest.raises(DataError, match="has sha256 0f8b3e21.*expected 0000"):
        get_scores(cifar10, ScoreConfig(name="cscore"), cache_dir=cache_dir, seed=0)
    assert not (cache_dir / "scores" / "cifar10.npz").exists()


def test_cscore_for_other_datasets_raises(digits, cache_dir):
    with pytest.raises(InvalidArgument, match="cscore is published only for cifar10, cifar100, not 'digits'"):
        get_scores(digits, ScoreConfig(name="cscore"), cache_dir=cache_dir, seed=0)


def test_nan_in_score_file_fails(digits, tmp_path):
    values = np.zeros(len(digits.train_labels))
    values[5] = np.nan
    np.save(tmp_path / "s.npy", values)
    with pytest.raises(DataError, match="1 NaN scores"):
        load_score_file(tmp_path / "s.npy", digits, name="el2n")


def test_score_file_without_scores_key_fails(digits, tmp_path):
    np.savez(tmp_path / "s.npz", values=np.zeros(len(digits.train_labels)))
    with pytest.raises(DataError, match="no 'scores' array .*values"):
        load_score_file(tmp_path / "s.npz", digits, name="el2n")


def test_pickled_score_file_is_refused(digits, tmp_path):
    np.save(tmp_path / "s.npy", np.array([{"a": 1}] * len(digits.train_labels), dtype=object))
    with pytest.raises(DataError, match="cannot read score file"):
        load_score_file(tmp_path / "s.npy", digits, name="el2n")


def test_missing_score_file_fails(digits, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_score_file(tmp_path / "nope.npy", digits, name="el2n")


def test_check_score_file_rejects_label_shape(digits):
    n = len(digits.train_labels)
    with pytest.raises(DataError, match="labels of shape"):
        check_score_file(np.zeros(n), np.zeros(n - 1, dtype=np.int64), digits)


def test_unknown_score_raises(digits, cache_dir):
    with pytest.raises(UnknownNameError, match="choose one of: cscore, el2n, forgetting, learning-speed"):
        get_scores(digits, ScoreConfig(name="margin"), cache_dir=cache_dir, seed=0)


def test_score_config_rejects_bad_values():
    with pytest.raises(InvalidArgument, match="scores.epochs must be >= 1, got 0"):
        ScoreConfig(epochs=0)
    with pytest.raises(InvalidArgument, match="scores.networks must be >= 1, got 0"):
        ScoreConfig(networks=0)


# --------------------------------------------------------------------------------------------
# Computed scores
# --------------------------------------------------------------------------------------------

FAST = dict(epochs=4, networks=2, lr=0.05, batch_size=64, model=ModelSpec("convnet", {"depth": 2, "width": 16}))


def test_el2n_ranks_misclassified_samples_higher(digits, cache_dir):
    cfg = ScoreConfig(name="el2n", **FAST)
    scores = get_scores(digits, cfg, cache_dir=cache_dir, seed=0)
    assert scores.shape == (len(digits.train_labels),) and torch.isfinite(scores).all()
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 2 ** 0.5
    # an independent network (another seed) decides which samples are hard
    judge = train_pool_network(digits, cfg, seed=123, device=torch.device("cpu"))
    wrong = predict_proba(judge, digits).argmax(1) != digits.train_labels
    assert 0 < int(wrong.sum()) < len(wrong)
    assert float(scores[wrong].mean()) > 1.5 * float(scores[~wrong].mean())


def test_computed_scores_are_cached_and_reused(digits, cache_dir, monkeypatch):
    cfg = ScoreConfig(name="el2n", epochs=1, networks=1)
    first = get_scores(digits, cfg, cache_dir=cache_dir, seed=0)
    assert cache_path(digits, cfg, cache_dir, 0).is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("scores were recomputed")

    monkeypatch.setattr(score_module, "train_pool_network", no_training)
    assert torch.equal(get_scores(digits, cfg, cache_dir=cache_dir, seed=0), first)
    with pytest.raises(AssertionError, match="recomputed"):  # another seed is another cache entry
        get_scores(digits, cfg, cache_dir=cache_dir, seed=1)
    with pytest.raises(AssertionError, match="recomputed"):  # so are other settings
        get_scores(digits, ScoreConfig(name="el2n", epochs=2, networks=1), cache_dir=cache_dir, seed=0)


def test_processes_sharing_a_cache_compute_each_score_once(digits, cache_dir, monkeypatch):
    """Two requests at once (threads lock like processes: each opens its own lock file): one computes, one waits."""
    import threading
    import time

    cfg = ScoreConfig(name="el2n", epochs=1, networks=1)
    computed = []

    def slow_compute(*args):
        computed.append(1)
        time.sleep(0.5)  # the other request arrives while this one computes
        return torch.arange(len(digits.train_labels), dtype=torch.float32)

    monkeypatch.setattr(score_module, "_compute", slow_compute)
    results = [None, None]

    def request(slot):
        results[slot] = get_scores(digits, cfg, cache_dir=cache_dir, seed=0)

    threads = [threading.Thread(target=request, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(computed) == 1 and torch.equal(results[0], results[1])
    assert [p.name for p in (cache_dir / "scores").iterdir()] == [cache_path(digits, cfg, cache_dir, 0).name]


def test_cache_key_depends_on_the_validation_split(digits, cache_dir):
    cfg = ScoreConfig(name="el2n", epochs=1, networks=1)
    other_split = replace(digits, val_index=digits.val_index[1:])
    assert cache_path(digits, cfg, cache_dir, 0) != cache_path(other_split, cfg, cache_dir, 0)


# --------------------------------------------------------------------------------------------
# Scores from the experts' correctness records
# --------------------------------------------------------------------------------------------

# epochs x samples: whether each sample's training forward pass was correct
RECORD = np.array([
    [1, 0, 1, 0, 0, 1],
    [0, 0, 1, 1, 1, 1],
    [1, 0, 1, 0, 0, 1],
    [0, 0, 1, 0, 1, 1],
], dtype=np.uint8)


def test_forgetting_counts_of_a_hand_made_record():
    # sample 0: 1->0 twice; 1: never learned = 4 epochs; 2: never forgotten; 3: once; 4: once; 5: never
    assert forgetting_counts(RECORD).tolist() == [2.0, 4.0, 0.0, 1.0, 1.0, 0.0]
    assert forgetting_counts(torch.from_numpy(RECORD).bool()).dtype == torch.float32
    assert forgetting_counts(RECORD[:1]).tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]  # one epoch: learned or not


def test_learning_speed_of_a_hand_made_record():
    assert learning_speed(RECORD).tolist() == [0.5, 0.0, 1.0, 0.25, 0.5, 1.0]


def tiny_run(cache_dir: Path, **overrides):
    """2 experts x 3 epochs of a width-8 ConvNet on digits, on the CPU."""
    from autoselmatch.config import apply_overrides, load_preset

    values = {"cache_dir": str(cache_dir), "device": "cpu", "experts.num_experts": 2, "experts.epochs": 3,
              "experts.model.width": 8, "data.val_fraction": 0.1}
    values.update(overrides)
    return apply_overrides(load_preset("digits"), values)


@pytest.mark.parametrize("name", ["forgetting", "learning-speed"])
def test_expert_scores_come_from_the_expert_run_without_training(digits, cache_dir, monkeypatch, name):
    from autoselmatch import experts as experts_module
    from autoselmatch.experts import _train as train_module

    run = tiny_run(cache_dir, **{"scores.name": name})
    store = experts_module.train_experts(digits, run)
    monkeypatch.setattr(train_module, "_train_epoch", lambda *a, **k: pytest.fail("an expert was trained"))
    monkeypatch.setattr(score_module, "train_pool_network", lambda *a, **k: pytest.fail("a network was trained"))
    scores = get_scores(digits, run.scores, cache_dir=run.cache_path, seed=run.seed, run=run)
    records = [store.correctness(i) for i in range(2)]
    pool = digits.train_index
    if name == "forgetting":
        expected = (forgetting_counts(records[0]) + forgetting_counts(records[1])) / 2
    else:  # negated: a sample learned late or never is hard
        expected = -(learning_speed(records[0]) + learning_speed(records[1])) / 2
    assert torch.equal(scores[pool], expected)
    assert torch.isnan(scores[digits.val_index]).all()  # never seen by the experts
    assert len(set(scores[pool].tolist())) > 3  # samples differ
    # both orientations put the same samples at the hard end: never-learned samples are the hardest
    never = torch.from_numpy(~(records[0].any(0) | records[1].any(0)))
    if never.any():
        assert bool((scores[pool][never] == scores[pool].max()).all())


def test_expert_scores_train_missing_experts_once(digits, cache_dir, monkeypatch):
    from autoselmatch import experts as experts_module
    from autoselmatch.experts import _train as train_module

    run = tiny_run(cache_dir, **{"scores.name": "forgetting", "experts.num_experts": 1})
    real_epoch, calls = train_module._train_epoch, []
    monkeypatch.setattr(train_module, "_train_epoch", lambda *a, **k: calls.append(1) or real_epoch(*a, **k))
    first = get_scores(digits, run.scores, cache_dir=run.cache_path, seed=run.seed, run=run)
    assert len(calls) == 3  # one expert x 3 epochs
    assert experts_module.load_experts(digits, run).num_experts == 1
    learning = get_scores(digits, replace(run.scores, name="learning-speed"), cache_dir=run.cache_path, seed=run.seed,
                          run=run)
    again = get_scores(digits, run.scores, cache_dir=run.cache_path, seed=0, run=run)
    assert len(calls) == 3 and torch.equal(again.nan_to_num(-1.0), first.nan_to_num(-1.0))  # NaN: validation samples
    pool = digits.train_index
    assert float(first[pool].max()) <= 3.0 and float(learning[pool].min()) >= -1.0


def test_expert_scores_need_the_run(digits, cache_dir):
    with pytest.raises(InvalidArgument, match="scores.name='forgetting' is derived from expert trajectories; pass"):
        get_scores(digits, ScoreConfig(name="forgetting"), cache_dir=cache_dir, seed=0)


def test_experts_without_correctness_records_are_a_clear_error(digits, cache_dir):
    import shutil

    from autoselmatch.experts import expert_cache_dir, expert_manifest

    run = tiny_run(cache_dir, **{"experts.num_experts": 1, "experts.epochs": 2, "experts.momentum": 0.9})
    old = Path(__file__).parent / "fixtures" / "experts-v0.1.0" / "digits-84aafc887a60791b"
    shutil.copytree(old, expert_cache_dir(run, expert_manifest(digits, run)))
    with pytest.raises(DataError, match="trained without a correctness record"):
        get_scores(digits, ScoreConfig(name="learning-speed"), cache_dir=cache_dir, seed=0, run=run)


def test_a_learning_speed_file_is_negated(digits, tmp_path):
    speeds = np.linspace(0.0, 1.0, len(digits.train_labels))
    np.save(tmp_path / "speed.npy", speeds)
    scores = get_scores(digits, ScoreConfig(name="learning-speed", file=str(tmp_path / "speed.npy")),
                        cache_dir=tmp_path, seed=0)
    assert np.allclose(scores.numpy(), -speeds)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("scores-cli"))


def invoke(*args):
    import json

    from click.testing import CliRunner

    from autoselmatch.cli import cli

    result = CliRunner().invoke(cli, ["--quiet", "--device", "cpu", "scores", "--dataset", "digits", *args])
    data = json.loads(result.output) if result.exit_code == 0 and "--output" in args else None
    return result, data


FAST_ARGS = ("--set", "scores.epochs=1", "--set", "scores.networks=1")


def test_cli_shows_per_class_summary(cli_cache):
    result, data = invoke("--cache-dir", cli_cache, *FAST_ARGS, "--output", "json")
    assert result.exit_code == 0, result.output
    assert data["score"] == "el2n" and data["n_train"] == 1438
    assert [row["class"] for row in data["per_class"]] == list(range(10))
    assert all(row["min"] <= row["mean"] <= row["max"] for row in data["per_class"])
    text, _ = invoke("--cache-dir", cli_cache, *FAST_ARGS)
    assert text.exit_code == 0 and "higher = harder" in text.output and "mean" in text.output


def test_cli_derives_forgetting_from_the_experts(cli_cache):
    tiny = ("--set", "experts.num_experts=1", "--set", "experts.epochs=2", "--set", "experts.model.width=8")
    result, data = invoke("--cache-dir", cli_cache, "--score", "forgetting", *tiny, "--output", "json")
    assert result.exit_code == 0, result.output
    assert data["score"] == "forgetting" and "experts' correctness records" in data["source"]
    assert all(0.0 <= row["min"] <= row["max"] <= 2.0 for row in data["per_class"])
    assert list((Path(cli_cache) / "experts").glob("digits-*/expert_000.correct.npy"))


def test_cli_sweep_prints_the_curve_and_saves_it(cli_cache, tmp_path):
    import json

    tiny = ("--set", "evaluate.model.width=8", "--set", "evaluate.model.depth=1", "--set", "evaluate.batch_size=64")
    result, data = invoke("--cache-dir", cli_cache, *FAST_ARGS, *tiny, "--sweep-beta", "0:0.5:0.25", "--ipc", "3",
                          "--epochs", "1", "--seeds", "1", "--output", "json", "--save", str(tmp_path / "s.json"))
    assert result.exit_code == 0, result.output
    assert [p["beta"] for p in data["sweep"]["curve"]] == [0.0, 0.25, 0.5]
    assert data["sweep"]["best_beta"] in (0.0, 0.25, 0.5)
    assert data["sweep"]["augment"] == "dsa"  # the windows train like the beta stage's (tune.beta_augment)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["sweep"] == data["sweep"] and saved["settings"]["scores"]["epochs"] == 1


def test_cli_sweep_trains_the_windows_with_the_beta_stage_augmentation(cli_cache, monkeypatch):
    import autoselmatch.evaluate as evaluate

    seen = []
    real = evaluate.evaluate_set

    def spy(*args, **kwargs):
        seen.append(kwargs["cfg"].augment)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_set", spy)
    tiny = ("--set", "evaluate.model.width=8", "--set", "evaluate.model.depth=1", "--set", "evaluate.batch_size=64")
    for augment in ("dsa", "simple"):
        seen.clear()
        result, data = invoke("--cache-dir", cli_cache, *FAST_ARGS, *tiny, "--sweep-beta", "0:0.25:0.25", "--ipc", "3",
                              "--epochs", "1", "--seeds", "1", "--set", f"tune.beta_augment={augment}",
                              "--output", "json")
        assert result.exit_code == 0, result.output
        assert seen == [augment, augment] and data["sweep"]["augment"] == augment


def test_cli_sweep_needs_ipc(cli_cache):
    result, _ = invoke("--cache-dir", cli_cache, "--sweep-beta", "0:0.5:0.1")
    assert result.exit_code == 2 and "--sweep-beta needs --ipc" in result.output


def test_cli_rejects_bad_beta_grid(cli_cache):
    result, _ = invoke("--cache-dir", cli_cache, "--sweep-beta", "0:0.5", "--ipc", "3")
    assert result.exit_code == 2 and "START:STOP:STEP" in result.output


def test_cli_rejects_beta_past_the_class_end(cli_cache):
    result, _ = invoke("--cache-dir", cli_cache, *FAST_ARGS, "--sweep-beta", "0.99", "--ipc", "3")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "beta must be in [0, 0.97" in result.output


def test_cli_rejects_score_file_of_another_dataset(cli_cache, tmp_path):
    np.save(tmp_path / "s.npy", np.zeros(50))
    result, _ = invoke("--cache-dir", cli_cache, "--scores-file", str(tmp_path / "s.npy"))
    assert result.exit_code == 2 and "digits has 1438 training samples" in result.output


def test_cli_rejects_unknown_score(cli_cache):
    result, _ = invoke("--cache-dir", cli_cache, "--score", "margin")
    assert result.exit_code == 2 and "unknown score 'margin'" in result.output


def test_parse_betas():
    from autoselmatch.cli.scores import parse_betas

    assert parse_betas("0:0.9:0.1") == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert parse_betas("0.2,0.5") == [0.2, 0.5]
