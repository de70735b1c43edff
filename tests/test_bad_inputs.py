"""The bad-input matrix: every command refuses wrong types, out-of-range values, unknown names,
unreadable or corrupt files and missing odd-named paths with exit code 2, one ``Error:`` line
naming the problem, no traceback, and no change to the studies, caches and sets already on disk.

One digits workspace (scores and experts in a cache, a SQLite study made by a tiny ``tune``,
an exported set, a distillation checkpoint, and a folder of broken files) is built once per
module; every case runs in it and its files are compared (sha256, size, mtime) before and after.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from autoselmatch.cli import COMMANDS, cli

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Tiny budgets, shared by the workspace and by every case that needs the workspace's experts.
TINY = [
    "--cache-dir", "cache",
    "--set", "scores.epochs=1", "--set", "scores.networks=1",
    "--set", "experts.num_experts=1", "--set", "experts.model.width=8",
    "--set", "distill.max_start_epoch=2", "--set", "distill.expert_epochs=1", "--set", "distill.syn_steps=2",
    "--set", "distill.batch_syn=20", "--set", "distill.iterations=2", "--set", "distill.eval_every=2",
    "--set", "distill.checkpoint_every=1",
    "--set", "evaluate.model.width=8", "--set", "evaluate.epochs=2", "--set", "evaluate.runs=1",
    "--set", "tune.trial_iterations=1", "--set", "tune.beta_seeds=1",
    "--set", "tune.beta_grid=[0.2]", "--set", "tune.alpha_grid=[0.5]",
]
DIGITS = ["--dataset", "digits", *TINY]
ODD = "odd dir ü 'q' \"dq\" ;$(touch pwned) `x`"  # a folder name with spaces, unicode, quotes, ; and $()
MISSING_ODD = f"{ODD}/no such ü;$(touch pwned).pt"


def invoke(args: list[str]):
    return CliRunner().invoke(cli, ["--quiet", *args], catch_exceptions=False)


def _ok(args: list[str]) -> None:
    result = invoke(args)
    assert result.exit_code == 0, result.output


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _truncated(src: Path, dst: Path) -> None:
    _write(dst, src.read_bytes()[: src.stat().st_size // 2])


def _build_broken_files(ws: Path, result: Path, checkpoint: Path, scores_cache: Path) -> None:
    bad = ws / "bad"
    _write(bad / "corrupt.pt", b"this is not a torch file\n" * 8)
    _truncated(result, bad / "truncated.pt")
    torch.save([1, 2, 3], bad / "list.pt")
    torch.save({"images": torch.zeros(2, 1, 8, 8)}, bad / "nolabels.pt")
    (bad / "a_dir.pt").mkdir()
    _write(bad / "corrupt.npz", b"PK\x03\x04 not really a zip")
    np.save(bad / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.savez(bad / "object.npz", scores=np.array([{"a": 1}, None], dtype=object))
    np.save(bad / "short.npy", np.zeros(5, dtype=np.float32))
    np.savez(bad / "nokey.npz", values=np.zeros(5, dtype=np.float32))
    _write(bad / "scores.txt", b"0.1\n0.2\n")
    np.save(bad / "negative.npy", np.array([-3, 1, 2]))
    _write(bad / "fractions.txt", b"1.5\n2\n")
    _write(bad / "indices.csv", b"1,2,3\n")
    _write(bad / "not-sqlite.db", b"hello, I am a text file and not a database\n" * 20)
    _truncated(ws / "studies" / "digits.db", bad / "truncated.db")
    _write(bad / "empty.db", b"")
    _write(bad / "empty.pt", b"")
    _write(bad / "empty.npy", b"")
    _write(bad / "text.npy", b"1\n2\n3\n")
    _write(bad / "garbage.log", b"{ not a journal line\n")
    (bad / "a_dir.db").mkdir()
    _write(bad / "file.txt", b"a file where a folder is expected\n")
    for split in ("train", "test"):  # folder datasets: one class; images of two sizes
        for i in range(3):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(_parent(bad / "oneclass" / split / "a" / f"{i}.png"))
        for label in ("a", "b"):
            for i, size in enumerate((8, 9)):
                Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(
                    _parent(bad / "mixed" / split / label / f"{i}.png"))
    _write(bad / "ckpt-corrupt" / "checkpoint.pt", b"garbage" * 50)
    _truncated(checkpoint, bad / "ckpt-truncated" / "checkpoint.pt")
    for name in ("cache-bad-expert", "cache-bad-manifest", "cache-bad-scores"):
        shutil.copytree(ws / "cache", bad / name)
    (expert,) = (bad / "cache-bad-expert").glob("experts/*/expert_000.npy")
    _truncated(Path(shutil.copy(expert, bad / "expert.npy")), expert)
    (manifest,) = (bad / "cache-bad-manifest").glob("experts/*/manifest.json")
    _write(manifest, b"{ not json")
    _write(bad / "cache-bad-scores" / "scores" / scores_cache.name, b"garbage" * 50)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A digits workspace: cache/, studies/digits.db (+ artifacts), exports/best/, runs/d1/, bad/."""
    ws = tmp_path_factory.mktemp("workspace")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws)
        mp.setenv("AUTOSELMATCH_DATA", str(ws / "data"))
        _ok(["tune", *DIGITS, "--ipc", "10"])
        _ok(["export", "--dataset", "digits", "--ipc", "10", "--out", "exports/best", "--format", "pt,npz"])
        _ok(["distill", *DIGITS, "--ipc", "10", "--alpha", "0.5", "--beta", "0.2", "--out", "runs/d1"])
        (scores_cache,) = (ws / "cache" / "scores").glob("*.pt")
        _build_broken_files(ws, ws / "runs/d1/result.pt", ws / "runs/d1/checkpoint.pt", scores_cache)
        odd = ws / ODD
        odd.mkdir()
        shutil.copy(ws / "runs/d1/result.pt", odd / "set ü.pt")
        np.savez(odd / "scores ü.npz", scores=torch.load(scores_cache, weights_only=True)["scores"].numpy())
        shutil.copy(ws / "studies/digits.db", odd / "study ü.db")
    return ws


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """sha256, size and mtime of every file under ``root`` (new and vanished files show as differences)."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            state[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_size,
                                                  stat.st_mtime_ns)
    return state


def case(command: str, args: list[str], needle: str, id: str, *, code: int = 2, marks=()):
    """``autoselmatch [global args] COMMAND ARGS`` must exit ``code`` with one ``Error:`` line containing ``needle``."""
    return pytest.param([command, *args], needle, code, id=id, marks=marks)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
NO_MPS = pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")
HUGE = "99999999999999999999999"


SET = "exports/best/dataset.pt"
RESULT = "runs/d1/result.pt"
STUDY = "sqlite:///studies/digits.db"

CASES = [
    # ---- global options ---------------------------------------------------------------------------------
    case("--seed", ["x", "studies"], "'x' is not a valid integer", "global-seed-not-int"),
    case("--device", ["tpu", "studies"], "'tpu' is not one of", "global-unknown-device"),
    case("--seed", ["1.5", "studies"], "'1.5' is not a valid integer", "global-seed-float"),
    case("nosuchcommand", [], "No such command 'nosuchcommand'", "global-unknown-command"),
    case("--seed", [HUGE, "studies"], f"{HUGE} is not in the range 0<=x<=", "global-seed-too-large"),
    case("--device", ["cuda", "tune", *DIGITS, "--ipc", "10"], "CUDA is not available; use --device cpu",
         "global-device-cuda-without-cuda", marks=NO_CUDA),
    case("studies", ["--device", "tpu"], "'tpu' is not one of", "global-after-command-unknown-device"),
    case("tune", [*DIGITS, "--ipc", "10", "--device", "cuda"], "CUDA is not available; use --device cpu",
         "global-after-command-device-cuda-without-cuda", marks=NO_CUDA),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--device", "mps", "--out", "bad/never"],
         "MPS is not available; use --device cpu", "global-after-command-device-mps-without-mps", marks=NO_MPS),
    case("tune", [*DIGITS, "--seed", HUGE, "--ipc", "10"], f"{HUGE} is not in the range 0<=x<=",
         "global-after-command-seed-too-large"),
    case("tune", [*DIGITS, "--set", f"seed={HUGE}", "--print-config"], f"seed must be in [0, 9223372036854775807], "
         f"got {HUGE}", "set-seed-too-large"),
    case("tune", [*DIGITS, "--set", "device=tpu", "--print-config"],
         "device must be one of auto, cpu, cuda, mps (or cuda:N), got 'tpu'", "set-unknown-device-print-config"),
    case("tune", [*DIGITS, "--set", "device=cuda:x", "--print-config"], "got 'cuda:x'", "set-device-bad-index"),
    # ---- tune ---------------------------------------------------------------------------------------------
    case("tune", [*DIGITS, "--ipc", "ten"], "got 'ten'", "tune-ipc-not-int"),
    case("tune", [*DIGITS, "--ipc", "0"], "got 0", "tune-ipc-zero"),
    case("tune", [*DIGITS, "--ipc", "-5"], "--ipc values must be >= 1, got -5", "tune-ipc-negative"),
    case("tune", [*DIGITS, "--ipc", "500"], "got 500", "tune-ipc-larger-than-class"),
    case("tune", [*DIGITS], "--ipc", "tune-ipc-missing"),
    case("tune", [*DIGITS, "--ipc", "10", "--beta-trials", "0"],
         "tune.beta_trials must be >= 1, got 0", "tune-beta-trials-zero"),
    case("tune", [*DIGITS, "--ipc", "10", "--alpha-trials", "0"],
         "tune.alpha_trials must be >= 1, got 0", "tune-alpha-trials-zero"),
    case("tune", [*DIGITS, "--ipc", "10", "--beta-trials", "x"], "'x' is not a valid integer", "tune-beta-trials-not-int"),
    case("tune", [*DIGITS, "--ipc", "10", "--timeout", "0"], "--timeout must be > 0", "tune-timeout-zero"),
    case("tune", [*DIGITS, "--ipc", "10", "--timeout", "soon"], "'soon' is not a valid float", "tune-timeout-not-float"),
    case("tune", [*DIGITS, "--ipc", "10", "--workers", "0"], "--workers must be >= 1, got 0", "tune-workers-zero"),
    case("tune", [*DIGITS, "--ipc", "10", "--patience", "-1"],
         "tune.patience must be >= 0, got -1", "tune-patience-negative"),
    case("tune", [*DIGITS, "--ipc", "10", "--search", "spiral"], "unknown search strategy 'spiral'", "tune-unknown-search"),
    case("tune", [*DIGITS, "--ipc", "10", "--pruner", "asha"], "unknown pruner 'asha'", "tune-unknown-pruner"),
    case("tune", [*DIGITS, "--ipc", "10", "--score", "vibes"], "unknown score 'vibes'", "tune-unknown-score"),
    case("tune", [*DIGITS, "--ipc", "10", "--budget", "huge"],
         "tune.budget must be one of quick, paper, got 'huge'", "tune-unknown-budget"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "tune.beta_augment=mixup"],
         "tune.beta_augment must be one of none, simple, dsa, combined, got 'mixup'", "tune-unknown-beta-augment"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "tune.alpha_augment=cutmix"],
         "tune.alpha_augment must be one of none, simple, dsa, combined, got 'cutmix'", "tune-unknown-alpha-augment"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "tune.choose_on=test"],
         "tune.choose_on must be one of final, trials, got 'test'", "tune-unknown-choose-on"),
    case("tune", ["--dataset", "imagenet-1k", "--ipc", "10"], "unknown dataset 'imagenet-1k'", "tune-unknown-dataset"),
    case("tune", [*DIGITS, "--ipc", "10", "--preset", "nosuch"], "unknown preset 'nosuch'", "tune-unknown-preset"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "distill.bogus=1"],
         "unknown setting 'distill.bogus'", "tune-set-unknown-key"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "bogus.key=1"],
         "unknown setting 'bogus.key'", "tune-set-unknown-section"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "distill.iterations"], "distill.iterations", "tune-set-without-value"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "distill.iterations=ten"],
         "distill.iterations must be an integer, got 'ten'", "tune-set-wrong-type"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "tune.beta_grid=[1.5]"],
         "tune.beta_grid values must be in [0.0, 1.0], got 1.5", "tune-beta-grid-out-of-range"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "tune.alpha_grid=[-0.1]"],
         "tune.alpha_grid values must be in [0.0, 1.0], got -0.1", "tune-alpha-grid-negative"),
    case("tune", [*DIGITS, "--ipc", "120", "--set", "tune.beta_grid=[0.2, 0.3]"], "no value of tune.beta_grid is a feasible",
         "tune-beta-beyond-window"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "distill.iterations=0"],
         "was made with other settings (distill.iterations",
         "tune-settings-differ-from-the-study"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "tune.trial_iterations=0"],
         "tune.trial_iterations must be >= 1, got 0", "tune-zero-trial-budget"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "tune.alpha_fraction=1.5"],
         "tune.alpha_fraction must be in (0, 1] (a share of the final evaluation budget) or unset, got 1.5",
         "tune-alpha-fraction-above-one"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "tune.refine_beta=maybe"],
         "tune.refine_beta", "tune-refine-beta-not-a-bool"),
    case("tune", [*DIGITS, "--ipc", "10", "--storage", "nosuchdb://h/d"], "does not parse", "tune-storage-unknown-scheme"),
    case("tune", [*DIGITS, "--ipc", "10", "--storage", "sqlite:///bad/not-sqlite.db"],
         "cannot open storage sqlite:///bad/not-sqlite.db: (sqlite3.DatabaseError) file is not a database",
         "tune-storage-not-sqlite"),
    case("tune", [*DIGITS, "--ipc", "10", "--storage", "sqlite:///bad/truncated.db"],
         "cannot open storage sqlite:///bad/truncated.db: (sqlite3.DatabaseError) database disk image is malformed",
         "tune-storage-truncated"),
    case("tune", [*DIGITS, "--ipc", "10", "--storage", "bad/garbage.log"], "bad/garbage.log is not an Optuna journal",
         "tune-storage-journal-garbage"),
    case("tune", [*DIGITS, "--ipc", "10", "--storage", "sqlite:///bad/a_dir.db"], "is a folder", "tune-storage-is-a-folder"),
    case("tune", [*DIGITS, "--ipc", "10", "--cache-dir", "bad/file.txt"], "bad/file.txt", "tune-cache-dir-is-a-file"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "data.val_fraction=0"],
         "data.val_fraction is 0, but tune scores every trial on the validation split", "tune-no-validation-split"),
    case("tune", [*DIGITS, "--ipc", "1"], "distill.batch_syn (20) is larger than the synthetic set (10 images at ipc=1)",
         "tune-batch-syn-larger-than-set"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "distill.mode=merge", "--set", "tune.alpha_grid=[0.1, 0.5]"],
         "distill.batch_syn (20) is larger than D_distill (10 images at ipc=10, alpha=0.1)",
         "tune-batch-syn-larger-than-merge-part"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "distill.lr_img=nan"], "distill.lr_img must be a finite number, got nan",
         "tune-nan-image-lr"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "evaluate.lr=inf"], "evaluate.lr must be a finite number, got inf",
         "tune-infinite-eval-lr"),
    case("tune", [*DIGITS, "--ipc", "10", "--timeout", "nan"], "--timeout must be a finite number, got nan",
         "tune-nan-timeout"),
    case("tune", [*DIGITS, "--ipc", "10", "--set", "tune.grace_period=nan"], "tune.grace_period must be an integer",
         "tune-nan-integer-setting"),
    case("tune", ["--dataset", "folder:bad/oneclass", *TINY, "--ipc", "2"], "train/ has one class (a)",
         "tune-one-class-folder"),
    case("tune", ["--dataset", "folder:bad/mixed", *TINY, "--ipc", "1"], "pass --set data.image_size=N to resize",
         "tune-folder-mixed-image-sizes"),
    # ---- experts ------------------------------------------------------------------------------------------
    case("experts", [*DIGITS, "--num-experts", "0"], "0 is not in the range x>=1", "experts-zero-experts"),
    case("experts", [*DIGITS, "--num-experts", "two"], "'two' is not a valid integer", "experts-num-not-int"),
    case("experts", [*DIGITS, "--epochs", "-3"], "-3 is not in the range x>=1", "experts-negative-epochs"),
    case("experts", [*DIGITS, "--augment", "mixup"], "'mixup' is not one of", "experts-unknown-augment"),
    case("experts", ["--dataset", "imagenet-1k"], "unknown dataset 'imagenet-1k'", "experts-unknown-dataset"),
    case("experts", ["--dataset", "folder:"], "needs a path", "experts-empty-folder-dataset"),
    case("experts", ["--dataset", f"folder:{ODD}/nowhere"], "nowhere", "experts-missing-folder-dataset-odd-path"),
    case("experts", [*DIGITS, "--set", "experts.model.name=resnet9000"],
         "unknown model 'resnet9000'", "experts-unknown-model"),
    case("experts", [*DIGITS, "--set", "experts.lr=-1"], "experts.lr must be > 0, got -1.0", "experts-negative-lr"),
    case("experts", [*DIGITS, "--set", "experts.batch_size=0"],
         "experts.batch_size must be >= 1, got 0", "experts-zero-batch"),
    case("experts", ["--dataset", "digits", "--cache-dir", "bad/cache-bad-manifest", *TINY[2:]],
         "cannot read expert manifest",
         "experts-corrupt-manifest"),
    # ---- scores -------------------------------------------------------------------------------------------
    case("scores", [*DIGITS, "--score", "vibes"], "'vibes'", "scores-unknown-score"),
    case("scores", [*DIGITS, "--scores-file", "bad/nothing.npz"], "bad/nothing.npz", "scores-file-missing"),
    case("scores", [*DIGITS, "--scores-file", MISSING_ODD], "no such ü", "scores-file-missing-odd-path"),
    case("scores", [*DIGITS, "--scores-file", "bad/corrupt.npz"], "cannot read score file", "scores-file-corrupt"),
    case("scores", [*DIGITS, "--scores-file", "bad/object.npy"], "cannot read score file", "scores-file-object-npy"),
    case("scores", [*DIGITS, "--scores-file", "bad/object.npz"], "cannot read score file", "scores-file-object-npz"),
    case("scores", [*DIGITS, "--scores-file", "bad/empty.npy"], "score file bad/empty.npy is not a NumPy array file",
         "scores-file-empty"),
    case("scores", [*DIGITS, "--scores-file", "bad/text.npy"], "score file bad/text.npy is not a NumPy array file "
         "(no .npy header)", "scores-file-text-named-npy"),
    case("scores", [*DIGITS, "--scores-file", "bad/short.npy"], "training samples", "scores-file-wrong-length"),
    case("scores", [*DIGITS, "--scores-file", "bad/nokey.npz"], "has no 'scores' array", "scores-file-no-key"),
    case("scores", [*DIGITS, "--scores-file", "bad/scores.txt"], "must be .npz", "scores-file-wrong-suffix"),
    case("scores", [*DIGITS, "--scores-file", "bad/a_dir.pt"], "is a directory", "scores-file-is-a-folder"),
    case("scores", [*DIGITS, "--scores-file", "bad/corrupt.pt"], "must be .npz", "scores-file-torch"),
    case("scores", ["--dataset", "digits", "--cache-dir", "bad/cache-bad-scores", *TINY[2:]], "cache-bad-scores",
         "scores-corrupt-cache"),
    case("scores", [*DIGITS, "--sweep-beta", "0:x:0.1", "--ipc", "10"], "got '0:x:0.1'", "scores-sweep-not-numbers"),
    case("scores", [*DIGITS, "--sweep-beta", "0.5:0.1:0.1", "--ipc", "10"], "STOP >= START", "scores-sweep-reversed"),
    case("scores", [*DIGITS, "--sweep-beta", "0:0.5:0.1"], "--sweep-beta needs --ipc", "scores-sweep-without-ipc"),
    case("scores", [*DIGITS, "--sweep-beta", "1.5", "--ipc", "10"],
         "beta must be in [0, 0.9200] for ipc=10 (class of 125 samples), got 1.5", "scores-sweep-beta-above-one"),
    case("scores", [*DIGITS, "--sweep-beta", "-0.1", "--ipc", "10"],
         "beta must be in [0, 0.9200] for ipc=10 (class of 125 samples), got -0.1", "scores-sweep-beta-negative"),
    case("scores", [*DIGITS, "--sweep-beta", "0.95", "--ipc", "10"],
         "beta must be in [0, 0.9200] for ipc=10 (class of 125 samples), got 0.95", "scores-sweep-beta-beyond-window"),
    case("scores", [*DIGITS, "--sweep-beta", "0", "--ipc", "500"],
         "ipc must be in [1, 125] (smallest class in the pool), got 500", "scores-sweep-ipc-larger-than-class"),
    case("scores", [*DIGITS, "--ipc", "0"], "0 is not in the range x>=1", "scores-ipc-zero"),
    case("scores", [*DIGITS, "--fraction", "0"], "--fraction", "scores-fraction-zero"),
    case("scores", [*DIGITS, "--fraction", "1.5"], "--fraction", "scores-fraction-above-one"),
    case("scores", [*DIGITS, "--seeds", "0"], "--seeds", "scores-seeds-zero"),
    case("scores", [*DIGITS, "--save", "bad/a_dir.pt"], "bad/a_dir.pt", "scores-save-to-a-folder"),
    case("scores", [*DIGITS, "-o", "bad/file.txt/s.json"], "--out bad/file.txt/s.json cannot be created: bad/file.txt "
         "is a file", "scores-out-under-a-file"),
    case("scores", ["--dataset", "digits", "--cache-dir", "bad/file.txt/cache", *TINY[2:]],
         "--cache-dir bad/file.txt/cache cannot be created: bad/file.txt is a file", "scores-cache-dir-under-a-file"),
    case("scores", ["--dataset", "digits", "--cache-dir", "/proc/autoselmatch-cache", *TINY[2:]],
         "--cache-dir /proc/autoselmatch-cache cannot be created: /proc is not writable", "scores-cache-dir-unwritable"),
    case("scores", [*DIGITS, "--sweep-beta", "0.1", "--ipc", "10", "--set", "data.val_fraction=0"],
         "data.val_fraction is 0, but --sweep-beta scores each beta on the validation split", "scores-sweep-no-validation"),
    case("scores", ["--dataset", "folder:bad/oneclass", *TINY], "train/ has one class (a)", "scores-one-class-folder"),
    # ---- distill ------------------------------------------------------------------------------------------
    case("distill", [*DIGITS, "--ipc", "ten", "--alpha", "0.5"], "'ten' is not a valid integer", "distill-ipc-not-int"),
    case("distill", [*DIGITS, "--ipc", "0", "--alpha", "0.5"], "0 is not in the range x>=1", "distill-ipc-zero"),
    case("distill", [*DIGITS, "--ipc", "-2", "--alpha", "0.5"], "-2 is not in the range x>=1", "distill-ipc-negative"),
    case("distill", [*DIGITS, "--ipc", "500", "--alpha", "0.5"],
         "ipc must be in [1, 125] for digits", "distill-ipc-larger-than-class"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "1.5"],
         "1.5 is not in the range 0.0<=x<=1.0", "distill-alpha-above-one"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "-0.1"], "-0.1 is not in the range", "distill-alpha-negative"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "half"], "'half' is not a valid float", "distill-alpha-not-float"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--beta", "1.5"],
         "1.5 is not in the range", "distill-beta-above-one"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--beta", "0.95"],
         "beta must be in [0, 0.9200] for ipc=10 (class of 125 samples), got 0.95", "distill-beta-beyond-window"),
    case("distill", [*DIGITS, "--ipc", "10"], "--alpha", "distill-alpha-missing"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--iterations", "-1"],
         "-1 is not in the range", "distill-iterations-negative"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--memory", "infinite"],
         "'infinite' is not one of", "distill-unknown-memory"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--init", "magic"],
         "'magic' is not one of", "distill-unknown-init"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--mode", "blend"],
         "'blend' is not one of", "distill-unknown-mode"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--precision", "fp16"],
         "'fp16' is not one of", "distill-unknown-precision"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--set", "distill.precision=fp16"],
         "distill.precision must be one of fp32, tf32, bf16, got 'fp16'", "distill-set-unknown-precision"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--device", "cpu", "--precision", "tf32", "--out",
                     "bad/never"], "distill.precision 'tf32' needs a CUDA GPU of compute capability 8.0 or later",
         "distill-tf32-on-cpu"),
    case("tune", [*DIGITS, "--ipc", "10", "--device", "cpu", "--set", "distill.precision=tf32"],
         "distill.precision 'tf32' needs a CUDA GPU of compute capability 8.0 or later", "tune-tf32-on-cpu"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--set", "scores.name=vibes"],
         "unknown score 'vibes'", "distill-unknown-score"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--set", "distill.syn_steps=0"],
         "distill.syn_steps must be >= 1, got 0",
         "distill-zero-syn-steps"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--set", "experts.model.name=vit"], "unknown model 'vit'",
         "distill-unknown-model"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--set", "distill.lr_img=-100"],
         "distill.lr_img must be > 0, got -100.0",
         "distill-negative-image-lr"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--set", "distill.lr_teacher=0"],
         "distill.lr_teacher must be > 0, got 0.0",
         "distill-zero-teacher-lr"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--set", "distill.batch_syn=0"],
         "distill.batch_syn must be >= 1, got 0",
         "distill-zero-batch"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--resume", "--overwrite"], "exclude each other",
         "distill-resume-and-overwrite"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--beta", "0.2", "--out", "runs/d1"],
         "already holds a distillation checkpoint",
         "distill-existing-checkpoint"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--out", "bad/file.txt"],
         "bad/file.txt", "distill-out-is-a-file"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "-o", "bad/file.txt/run"],
         "--out bad/file.txt/run cannot be created: bad/file.txt is a file", "distill-out-under-a-file"),
    case("distill", [*DIGITS, "--ipc", "1", "--alpha", "1", "--out", "bad/never"],
         "distill.batch_syn (20) is larger than the synthetic set (10 images at ipc=1)", "distill-batch-syn-larger-than-set"),
    case("distill", [*DIGITS, "--ipc", "2", "--alpha", "0.5", "--mode", "merge", "--out", "bad/never"],
         "distill.batch_syn (20) is larger than D_distill (10 images at ipc=2, alpha=0.5)",
         "distill-batch-syn-larger-than-merge-distilled-part"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--set", "distill.lr_lr=nan", "--out", "bad/never"],
         "distill.lr_lr must be a finite number, got nan", "distill-nan-lr-lr"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--beta", "0.2", "--resume", "--out", "bad/ckpt-corrupt"],
         "refusing to load distillation checkpoint bad/ckpt-corrupt/checkpoint.pt", "distill-corrupt-checkpoint"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.5", "--beta", "0.2", "--resume", "--out", "bad/ckpt-truncated"],
         "checkpoint.pt is not a complete torch file", "distill-truncated-checkpoint"),
    case("distill", [*DIGITS, "--ipc", "10", "--alpha", "0.6", "--beta", "0.2", "--resume", "--out", "runs/d1"],
         "was made with other settings", "distill-checkpoint-of-other-settings"),
    case("distill", ["--dataset", "digits", "--cache-dir", "bad/cache-bad-expert", *TINY[2:],
         "--ipc", "10", "--alpha", "0.5",
                     "--out", "bad/never"], "expert file", "distill-truncated-expert"),
    case("distill", ["--dataset", "digits", "--cache-dir", "bad/cache-bad-manifest", *TINY[2:],
         "--ipc", "10", "--alpha", "0.5",
                     "--out", "bad/never"], "cannot read expert manifest", "distill-corrupt-expert-manifest"),
    case("distill", ["--dataset", "digits", "--cache-dir", "bad/cache-bad-scores", *TINY[2:],
         "--ipc", "10", "--alpha", "0.5",
                     "--out", "bad/never"], "cache-bad-scores", "distill-corrupt-score-cache"),
    # ---- evaluate -----------------------------------------------------------------------------------------
    case("evaluate", ["bad/nothing.pt"], "'bad/nothing.pt' does not exist", "evaluate-set-missing"),
    case("evaluate", [MISSING_ODD], "does not exist", "evaluate-set-missing-odd-path"),
    case("evaluate", ["bad/corrupt.pt"], "bad/corrupt.pt is not a complete torch file", "evaluate-set-corrupt"),
    case("evaluate", ["bad/truncated.pt"], "bad/truncated.pt is not a complete torch file", "evaluate-set-truncated"),
    case("evaluate", ["bad/empty.pt"], "bad/empty.pt is not a complete torch file", "evaluate-set-empty-file"),
    case("evaluate", ["bad/list.pt"], "must hold a dict", "evaluate-set-not-a-dict"),
    case("evaluate", ["bad/nolabels.pt", "--dataset", "digits"], "'labels'", "evaluate-set-without-labels"),
    case("evaluate", ["bad/a_dir.pt"], "bad/a_dir.pt is not an autoselmatch export: manifest.json is missing",
         "evaluate-set-is-a-folder"),
    case("evaluate", ["bad/object.npz"], "cannot read set file bad/object.npz: Object arrays cannot be loaded",
         "evaluate-set-npz-of-objects"),
    case("evaluate", ["bad/nokey.npz"], "set file bad/nokey.npz must hold a tensor under 'images'",
         "evaluate-set-npz-without-images"),
    case("evaluate", ["bad/expert.npy"], "refusing to load set file bad/expert.npy: it is not a torch file",
         "evaluate-set-is-an-npy"),
    case("evaluate", [SET, "--dataset", "cifar10"],
         "does not match the set file's dataset digits", "evaluate-dataset-mismatch"),
    case("evaluate", [SET, "--model", "vit"], "unknown model 'vit'", "evaluate-unknown-model"),
    case("evaluate", [SET, "--runs", "0"], "0 is not in the range x>=1", "evaluate-runs-zero"),
    case("evaluate", [SET, "--epochs", "0"], "0 is not in the range x>=1", "evaluate-epochs-zero"),
    case("evaluate", [SET, "--steps", "-1"], "-1 is not in the range x>=1", "evaluate-steps-negative"),
    case("evaluate", [SET, "--split", "train"], "'train' is not one of", "evaluate-unknown-split"),
    case("evaluate", [SET, "--save", "bad/file.txt/e.json"], "--out bad/file.txt/e.json cannot be created: bad/file.txt "
         "is a file", "evaluate-save-under-a-file"),
    case("evaluate", [SET, "-o", "/proc/e.json"], "--out /proc/e.json cannot be created: /proc is not writable",
         "evaluate-out-unwritable-folder"),
    case("evaluate", [SET, "-o", "bad/a_dir.pt"], "'bad/a_dir.pt' is a directory", "evaluate-out-is-a-folder"),
    case("evaluate", [SET, "--augment", "mixup"], "'mixup' is not one of", "evaluate-unknown-augment"),
    case("evaluate", [SET, "--set", "evaluate.lr=-1"], "evaluate.lr must be > 0, got -1", "evaluate-negative-lr"),
    case("evaluate", [SET, "--set", "evaluate.batch_size=0"],
         "evaluate.batch_size must be >= 1, got 0", "evaluate-zero-batch"),
    case("evaluate", [SET, "--set", "evaluate.budget_fraction=1.5"],
         "evaluate.budget_fraction must be in (0, 1] (a share of the paper's budget), got 1.5",
         "evaluate-budget-fraction-above-one"),
    case("evaluate", [SET, "--indices", "bad/negative.npy"], "exactly one", "evaluate-set-and-indices"),
    case("evaluate", [], "exactly one", "evaluate-no-input"),
    case("evaluate", ["--indices", "bad/object.npy", "--dataset", "digits"],
         "cannot read indices", "evaluate-indices-object-array"),
    case("evaluate", ["--indices", "bad/text.npy", "--dataset", "digits"],
         "--indices bad/text.npy is not a NumPy array file (no .npy header)", "evaluate-indices-text-named-npy"),
    case("evaluate", ["--indices", "bad/empty.npy", "--dataset", "digits"], "--indices bad/empty.npy is not a NumPy array",
         "evaluate-indices-empty-file"),
    case("evaluate", ["--indices", "bad/negative.npy", "--dataset", "digits"], "got -3", "evaluate-indices-negative"),
    case("evaluate", ["--indices", "bad/fractions.txt", "--dataset", "digits"],
         "must hold integers", "evaluate-indices-fractions"),
    case("evaluate", ["--indices", "bad/indices.csv", "--dataset", "digits"],
         "must be a .npy or .txt", "evaluate-indices-csv"),
    case("evaluate", ["--indices", "bad/corrupt.npz", "--dataset", "digits"],
         "must be a .npy or .txt", "evaluate-indices-npz"),
    case("evaluate", ["--indices", "bad/file.txt", "--dataset", "digits"], "cannot read indices", "evaluate-indices-text"),
    # ---- export -------------------------------------------------------------------------------------------
    case("export", ["--from", "bad/nothing.pt", "--out", "bad/never"],
         "bad/nothing.pt does not exist", "export-from-missing"),
    case("export", ["--from", MISSING_ODD, "--out", "bad/never"], "does not exist", "export-from-missing-odd-path"),
    case("export", ["--from", "bad/corrupt.pt", "--out", "bad/never"],
         "bad/corrupt.pt is not a complete torch file", "export-from-corrupt"),
    case("export", ["--from", "bad/truncated.pt", "--out", "bad/never"],
         "bad/truncated.pt is not a complete torch file", "export-from-truncated"),
    case("export", ["--from", "bad/empty.pt", "--out", "bad/never"], "bad/empty.pt is not a complete torch file",
         "export-from-empty-file"),
    case("export", ["--from", "bad/list.pt", "--out", "bad/never"], "must hold a dict", "export-from-not-a-dict"),
    case("export", ["--from", "bad/a_dir.pt", "--out", "bad/never"], "is a directory", "export-from-a-folder"),
    case("export", ["--from", "exports/best/dataset.npz", "--out", "bad/never"],
         "exports/best/dataset.npz is a NumPy .npz archive, not a torch file", "export-from-an-npz"),
    case("export", ["--from", RESULT, "--out", "bad/never", "--format", "gif"],
         "unknown export format 'gif'", "export-unknown-format"),
    case("export", ["--from", RESULT, "--out", "exports/best"], "exports/best", "export-into-existing-export"),
    case("export", ["--from", RESULT, "--out", "bad/file.txt"], "bad/file.txt", "export-out-is-a-file"),
    case("export", ["--from", RESULT, "-o", "bad/file.txt/export"],
         "--out bad/file.txt/export cannot be created: bad/file.txt is a file", "export-out-under-a-file"),
    case("export", ["--from", RESULT, "-o", "/proc/export"], "--out /proc/export cannot be created: /proc is not writable",
         "export-out-unwritable-folder"),
    case("export", ["--study", "digits-ipc10-beta", "--storage", STUDY, "--out", "bad/never"],
         "digits-ipc10-beta is a beta study (the window search): its trials train networks and keep no set; "
         "export the alpha study, --study digits-ipc10-alpha", "export-beta-study"),
    case("export", ["--dataset", "Digits", "--ipc", "10", "--trial", "999", "--out", "bad/never"],
         "has no trial 999", "export-dataset-in-another-case"),
    case("export", ["--from", RESULT], "--out", "export-out-missing"),
    case("export", ["--study", "nosuch", "--storage", STUDY, "--out", "bad/never"],
         "unknown study 'nosuch'", "export-unknown-study"),
    case("export", ["--dataset", "digits", "--ipc", "99", "--out", "bad/never"],
         "unknown study 'digits-ipc99-alpha'", "export-study-of-unknown-ipc"),
    case("export", ["--dataset", "digits", "--ipc", "10", "--trial", "999", "--out", "bad/never"],
         "has no trial 999", "export-unknown-trial"),
    case("export", ["--dataset", "digits", "--ipc", "0", "--out", "bad/never"],
         "0 is not in the range x>=1", "export-ipc-zero"),
    case("export", ["--dataset", "digits", "--ipc", "ten", "--out", "bad/never"],
         "'ten' is not a valid integer", "export-ipc-not-int"),
    case("export", ["--dataset", "digits", "--ipc", "10", "--trial", "-1", "--out", "bad/never"],
         "-1 is not in the range", "export-trial-negative"),
    case("export", ["--dataset", "imagenet-1k", "--ipc", "10", "--out", "bad/never"],
         "unknown dataset 'imagenet-1k'", "export-unknown-dataset"),
    case("export", ["--study", "x", "--storage", "sqlite:///bad/not-sqlite.db", "--out", "bad/never"], "bad/not-sqlite.db",
         "export-storage-not-sqlite"),
    case("export", ["--study", "x", "--storage", "sqlite:///bad/truncated.db", "--out", "bad/never"], "bad/truncated.db",
         "export-storage-truncated"),
    case("export", ["--study", "x", "--storage", "sqlite:///bad/empty.db", "--out", "bad/never"],
         "bad/empty.db", "export-storage-empty"),
    case("export", ["--study", "x", "--storage", "sqlite:///bad/nothing.db", "--out", "bad/never"],
         "no study storage at bad/nothing.db",
         "export-storage-missing"),
    case("export", ["--from", RESULT, "--study", "x", "--out", "bad/never"], "exactly one", "export-two-sources"),
    # ---- export-study -------------------------------------------------------------------------------------
    case("export-study", ["--storage", "sqlite:///bad/nothing.db", "--out", "bad/never.db"],
         "no study storage at bad/nothing.db",
         "export-study-storage-missing"),
    case("export-study", ["--storage", f"sqlite:///{MISSING_ODD}.db", "--out", "bad/never.db"], "no such ü",
         "export-study-storage-missing-odd-path"),
    case("export-study", ["--storage", "sqlite:///bad/not-sqlite.db", "--out", "bad/never.db"], "bad/not-sqlite.db",
         "export-study-storage-not-sqlite"),
    case("export-study", ["--storage", "sqlite:///bad/truncated.db", "--out", "bad/never.db"], "bad/truncated.db",
         "export-study-storage-truncated"),
    case("export-study", ["--storage", "sqlite:///bad/empty.db", "--out", "bad/never.db"],
         "bad/empty.db", "export-study-storage-empty"),
    case("export-study", ["--storage", "sqlite:///bad/a_dir.db", "--out", "bad/never.db"],
         "bad/a_dir.db", "export-study-storage-folder"),
    case("export-study", ["--storage", "nosuchdb://h/d", "--out", "bad/never.db"],
         "does not parse", "export-study-unknown-scheme"),
    case("export-study", ["--storage", STUDY, "--out", "studies/digits.db"],
         "output studies/digits.db exists", "export-study-over-existing-file"),
    case("export-study", ["--storage", STUDY, "--out", "bad/a_dir.db"], "bad/a_dir.db", "export-study-out-is-a-folder"),
    case("export-study", ["--storage", STUDY, "--out", "bad/never.db", "--study", "nosuch"],
         "unknown study 'nosuch'", "export-study-unknown-study"),
    case("export-study", ["--out", "bad/never.db"], "--storage", "export-study-storage-missing-option"),
    case("export-study", ["--storage", STUDY, "-o", "bad/file.txt/copy.db"],
         "--out bad/file.txt/copy.db cannot be created: bad/file.txt is a file", "export-study-out-under-a-file"),
    # ---- report -------------------------------------------------------------------------------------------
    case("report", ["--dataset", "imagenet-1k"], "unknown dataset 'imagenet-1k'", "report-unknown-dataset"),
    case("report", ["--dataset", "digits", "--preset", "digits"], "No such option '--preset'", "report-takes-no-preset"),
    case("report", ["--dataset", "digits", "--download"], "No such option '--download'", "report-takes-no-download"),
    case("report", ["--dataset", "digits", "--out", "bad/file.txt/r.html"],
         "--out bad/file.txt/r.html cannot be created: bad/file.txt is a file", "report-out-under-a-file"),
    case("report", ["--dataset", "digits", "-o", "/proc/r.html"], "--out /proc/r.html cannot be created: /proc is not "
         "writable", "report-out-unwritable-folder"),
    case("report", ["--dataset", "digits", "--storage", "sqlite:///bad/nothing.db", "--out", "bad/never.html"],
         "no study storage at bad/nothing.db", "report-storage-missing"),
    case("report", ["--dataset", "digits", "--storage", "sqlite:///bad/not-sqlite.db", "--out", "bad/never.html"],
         "bad/not-sqlite.db", "report-storage-not-sqlite"),
    case("report", ["--dataset", "digits", "--storage", "sqlite:///bad/truncated.db", "--out", "bad/never.html"],
         "bad/truncated.db", "report-storage-truncated"),
    case("report", ["--dataset", "digits", "--storage", "sqlite:///bad/empty.db", "--out", "bad/never.html"],
         "bad/empty.db", "report-storage-empty"),
    case("report", ["--dataset", "digits", "--study-prefix", "nosuch", "--out", "bad/never.html"],
         "holds no study named nosuch-ipc<N>-beta", "report-unknown-prefix"),
    case("report", ["--dataset", "digits", "--out", "bad/a_dir.pt"], "bad/a_dir.pt", "report-out-is-a-folder"),
    case("report", ["--dataset", "digits", "--artifacts", "bad/file.txt", "--out", "bad/never.html"], "bad/file.txt",
         "report-artifacts-is-a-file"),
    # ---- dashboard ----------------------------------------------------------------------------------------
    case("dashboard", ["--port", "0"], "0 is not in the range 1<=x<=65535", "dashboard-port-zero"),
    case("dashboard", ["--port", "70000"], "70000 is not in the range", "dashboard-port-too-large"),
    case("dashboard", ["--port", "http"], "'http' is not a valid integer", "dashboard-port-not-int"),
    case("dashboard", ["--storage", "sqlite:///bad/nothing.db"],
         "no study storage at bad/nothing.db", "dashboard-storage-missing"),
    case("dashboard", ["--storage", "sqlite:///bad/not-sqlite.db"], "bad/not-sqlite.db", "dashboard-storage-not-sqlite"),
    case("dashboard", ["--storage", "sqlite:///bad/truncated.db"], "bad/truncated.db", "dashboard-storage-truncated"),
    case("dashboard", ["--storage", "sqlite:///bad/empty.db"], "bad/empty.db", "dashboard-storage-empty"),
    case("dashboard", ["--artifacts", f"{ODD}/nowhere"], "nowhere does not exist", "dashboard-artifacts-missing-odd-path"),
    case("dashboard", ["--dataset", "imagenet-1k"],
         "no study storage at studies/imagenet-1k.db", "dashboard-unknown-dataset"),
    case("dashboard", ["--dataset", "digits", "--storage", STUDY], "not both", "dashboard-storage-and-dataset"),
    # ---- bench reproduce ----------------------------------------------------------------------------------
    case("bench", ["reproduce", *DIGITS, "--out", "bad/never", "--ipc", "ten"], "got 'ten'", "bench-ipc-not-int"),
    case("bench", ["reproduce", *DIGITS, "--out", "bad/never", "--device", "cpu", "--set", "distill.precision=tf32"],
         "distill.precision 'tf32' needs a CUDA GPU of compute capability 8.0 or later", "bench-tf32-on-cpu"),
    case("bench", ["reproduce", *DIGITS, "--out", "bad/never", "--ipc", "0"],
         "--ipc values must be >= 1, got 0", "bench-ipc-zero"),
    case("bench", ["reproduce", *DIGITS, "--out", "bad/never", "--ipc", "500", "--alpha", "0.5", "--beta", "0.1"],
         "--ipc 500 is 500 images per class",
         "bench-ipc-larger-than-class"),
    case("bench", ["reproduce", *DIGITS, "--out", "bad/never", "--ipc", "150%"],
         "--ipc ratio must be in (0%, 100%], got 150%", "bench-ipc-share-above-100"),
    case("bench", ["reproduce", *DIGITS, "--out", "bad/never", "--ipc", "10", "--methods", "magic"],
         "unknown reproduce method 'magic'",
         "bench-unknown-method"),
    case("bench", ["reproduce", *DIGITS, "--out", "bad/never", "--ipc", "10", "--runs", "0"], "0 is not in the range x>=1",
         "bench-runs-zero"),
    case("bench", ["reproduce", *DIGITS, "--out", "bad/never", "--ipc", "10", "--alpha", "1.5", "--beta", "0.1"],
         "--alpha values must be in [0, 1], got 1.5",
         "bench-alpha-above-one"),
    case("bench", ["reproduce", *DIGITS, "--out", "bad/never", "--ipc", "10", "--alpha", "0.5", "--beta", "0.95"],
         "beta must be in [0, 0.920] for ipc=10",
         "bench-beta-beyond-window"),
    case("bench", ["reproduce", *DIGITS, "--out", "bad/never", "--ipc", "10", "--storage", "sqlite:///bad/not-sqlite.db"],
         "bad/not-sqlite.db", "bench-storage-not-sqlite"),
    case("bench", ["reproduce", *DIGITS, "--out", "bad/never", "--ipc", "10", "--alpha", "0.5", "--beta", "0.1",
                   "--scores-file", "bad/object.npy"],
         "cannot read score file bad/object.npy", "bench-scores-file-object-array"),
    case("bench", ["reproduce", *DIGITS, "--ipc", "10"], "--out", "bench-out-missing"),
    case("bench", ["reproduce", *DIGITS, "--ipc", "10", "--alpha", "0.5", "--beta", "0.1", "-o", "bad/file.txt/b"],
         "--out bad/file.txt/b cannot be created: bad/file.txt is a file", "bench-out-under-a-file"),
    case("bench", ["nosuch"], "No such command 'nosuch'", "bench-unknown-subcommand"),
    # ---- studies ------------------------------------------------------------------------------------------
    case("studies", ["--storage", "sqlite:///bad/nothing.db"],
         "no study storage at bad/nothing.db", "studies-storage-missing"),
    case("studies", ["--storage", f"sqlite:///{MISSING_ODD}.db"], "no such ü", "studies-storage-missing-odd-path"),
    case("studies", ["--storage", "sqlite:///bad/not-sqlite.db"], "bad/not-sqlite.db", "studies-storage-not-sqlite"),
    case("studies", ["--storage", "sqlite:///bad/truncated.db"], "bad/truncated.db", "studies-storage-truncated"),
    case("studies", ["--storage", "sqlite:///bad/empty.db"], "bad/empty.db", "studies-storage-empty"),
    case("studies", ["--storage", "sqlite:///bad/a_dir.db"], "bad/a_dir.db", "studies-storage-folder"),
    case("studies", ["--storage", "bad/file.txt"], "storage must be sqlite:///PATH.db", "studies-storage-plain-file"),
    case("studies", ["--storage", "journal:///bad/not-sqlite.db"], "bad/not-sqlite.db is not an Optuna journal",
         "studies-journal-not-a-journal"),
    case("studies", ["--storage", "bad/garbage.log"], "bad/garbage.log is not an Optuna journal", "studies-journal-garbage"),
    case("studies", ["--storage", "nosuchdb://h/d"], "does not parse", "studies-unknown-scheme"),
    case("studies", ["--dataset", "imagenet-1k"], "no study storage at studies/imagenet-1k.db", "studies-unknown-dataset"),
    case("studies", ["--output", "xml"], "'xml' is not one of", "studies-unknown-output"),
]


@pytest.fixture
def in_workspace(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("AUTOSELMATCH_DATA", str(workspace / "data"))
    return workspace


def test_the_matrix_covers_every_command():
    commands = {p.values[0][0] for p in CASES} | {p.values[0][2] for p in CASES if p.values[0][0].startswith("--")}
    assert set(COMMANDS) <= commands


@pytest.mark.parametrize("argv, needle, code", CASES)
def test_bad_input_is_refused_in_one_line_and_changes_nothing(in_workspace, monkeypatch, argv, needle, code):
    import optuna_dashboard

    def no_server(*args, **kwargs):
        raise AssertionError("the dashboard was started")

    monkeypatch.setattr(optuna_dashboard, "run_server", no_server)
    before = snapshot(in_workspace)
    result = invoke(argv)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output  # the message is one line, and the last
    assert needle in errors[0], result.output
    assert snapshot(in_workspace) == before
    assert not list(in_workspace.rglob("pwned"))


@pytest.mark.parametrize("argv_of", [
    lambda odd, out: ["evaluate", f"{odd}/set ü.pt", "--set", "evaluate.model.width=8", "--set", "evaluate.epochs=1",
                      "--set", "evaluate.runs=1", "--save", f"{out}/eval ü.json"],
    lambda odd, out: ["export", "--from", f"{odd}/set ü.pt", "--out", f"{out}/export ü", "--format", "pt,npz"],
    lambda odd, out: ["scores", *DIGITS, "--scores-file", f"{odd}/scores ü.npz", "--save", f"{out}/scores ü.json"],
    lambda odd, out: ["studies", "--storage", f"sqlite:///{odd}/study ü.db"],
    lambda odd, out: ["export-study", "--storage", f"sqlite:///{odd}/study ü.db", "--out", f"{out}/copy ü.db"],
], ids=["evaluate", "export", "scores", "studies", "export-study"])
def test_paths_with_odd_characters_work(in_workspace, tmp_path, argv_of):
    out = tmp_path / ODD
    out.mkdir()
    result = invoke(argv_of(ODD, out))
    assert result.exit_code == 0, result.output
    assert not list(in_workspace.rglob("pwned")) and not list(tmp_path.rglob("pwned"))
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written or argv_of(ODD, out)[0] == "studies"


@pytest.mark.parametrize("source", ["exports/best", "exports/best/dataset.npz", "exports/best/dataset.pt", RESULT])
def test_evaluate_reads_every_set_the_tool_writes(in_workspace, source):
    result = invoke(["evaluate", source, "--set", "evaluate.model.width=8", "--set", "evaluate.epochs=1",
                     "--set", "evaluate.runs=1"])
    assert result.exit_code == 0, result.output
    assert f"set: {source}: 100 images" in result.output and "(1 run of convnet" in result.output
    assert "±" not in result.output


def test_load_distilled_takes_a_file_of_the_export_for_its_folder(in_workspace):
    from autoselmatch import load_distilled
    from autoselmatch.errors import DataError

    assert len(load_distilled("exports/best/dataset.npz")) == len(load_distilled("exports/best")) == 100
    with pytest.raises(DataError, match="is a file; load_distilled takes an export folder"):
        load_distilled(RESULT)


def test_distill_resume_without_a_checkpoint_says_it_starts_fresh(in_workspace, tmp_path, caplog):
    from autoselmatch.runtime import LOG

    out = tmp_path / "fresh"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LOG, "propagate", True)  # to caplog
        result = CliRunner().invoke(cli, ["distill", *DIGITS, "--ipc", "10", "--alpha", "0.5", "--beta", "0.2",
                                          "--resume", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"--resume: {out} holds no checkpoint.pt yet; starting a new run there" in caplog.text
    assert (out / "result.pt").is_file()
