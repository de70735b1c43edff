"""Safe loading: no file the tool reads can run code.

A malicious pickle (an object whose ``__reduce__`` opens a marker file for
writing) is planted wherever the tool reads a torch file, a NumPy file or a
CIFAR batch; each loader must refuse it with one line and the marker must
never appear. A static check of the package source keeps it that way.
"""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import autoselmatch
from autoselmatch.cli import cli
from autoselmatch.config import apply_overrides, load_preset
from autoselmatch.data import load_dataset
from autoselmatch.distill import DistillResult, selmatch
from autoselmatch.errors import DataError
from autoselmatch.experts import load_experts, train_experts
from autoselmatch.export import export_set, load_distilled, load_result
from autoselmatch.fileio import load_torch, sha256_file
from autoselmatch.scores import cache_path, get_scores, load_score_file
from autoselmatch.synset import SyntheticSet

PACKAGE = Path(autoselmatch.__file__).parent


class Evil:
    """Unpickling this opens ``marker`` for writing (creating it): arbitrary code run by a loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a loader ran code from a malicious file"


def evil_set(marker: Path) -> dict:
    """A set file that looks right (tensors under the right keys) but carries the payload."""
    return {"images": torch.zeros(10, 1, 8, 8), "labels": torch.arange(10),
            "distill_mask": torch.zeros(10, dtype=torch.bool), "dataset": "digits", "eta": 0.01, "settings": "{}",
            "note": Evil(marker)}


def evil_array(marker: Path) -> np.ndarray:
    return np.array([Evil(marker), 1.0], dtype=object)


def one_line_refusal(exc_info, *needles: str) -> None:
    message = str(exc_info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_the_payload_is_live(tmp_path):
    """The same bytes do run code under a plain unpickler, so the refusals below are real."""
    marker = tmp_path / "PWNED"
    torch.save(evil_set(marker), tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    np.save(tmp_path / "evil.npy", evil_array(marker), allow_pickle=True)
    np.load(tmp_path / "evil.npy", allow_pickle=True)
    assert marker.exists()


@pytest.fixture
def tiny(digits, tmp_path):
    """Digits settings with a tiny budget and a private cache."""
    return apply_overrides(load_preset("digits"), {
        "cache_dir": str(tmp_path / "cache"),
        "experts.num_experts": 1, "experts.model": {"name": "convnet", "depth": 1, "width": 4, "norm": "none"},
        "distill.max_start_epoch": 1, "distill.expert_epochs": 1, "distill.syn_steps": 1, "distill.batch_syn": 10,
        "distill.iterations": 2, "distill.eval_every": 0, "distill.checkpoint_every": 1,
    })


# ---- (a) torch files ---------------------------------------------------------------------------------


def test_load_torch_refuses_a_pickled_object(tmp_path, marker):
    torch.save(evil_set(marker), tmp_path / "evil.pt")
    with pytest.raises(DataError) as exc_info:
        load_torch(tmp_path / "evil.pt")
    one_line_refusal(exc_info, "refusing to load", "evil.pt", "Python object")


@pytest.mark.parametrize("argv", [
    ["evaluate", "{evil}", "--dataset", "digits"],
    ["export", "--from", "{evil}", "--out", "{tmp}/out"],
], ids=["evaluate-set-file", "export-from-result"])
def test_commands_refuse_a_malicious_set_file(tmp_path, marker, argv):
    torch.save(evil_set(marker), tmp_path / "evil.pt")
    args = [a.format(evil=tmp_path / "evil.pt", tmp=tmp_path) for a in argv]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert "refusing to load" in result.output and "Python object" in result.output
    assert not (tmp_path / "out").exists()


def test_result_loaders_refuse_a_malicious_result(tmp_path, marker):
    torch.save(evil_set(marker), tmp_path / "evil.pt")
    with pytest.raises(DataError) as exc_info:
        DistillResult.load(tmp_path / "evil.pt")
    one_line_refusal(exc_info, "refusing to load")
    with pytest.raises(DataError) as exc_info:
        SyntheticSet.load(tmp_path / "evil.pt")
    one_line_refusal(exc_info, "refusing to load set file", "evil.pt", "Python object")
    with pytest.raises(DataError) as exc_info:
        load_result(tmp_path / "evil.pt")
    one_line_refusal(exc_info, "refusing to load")


def _plant_in_export(folder: Path, name: str, write) -> None:
    """Replace ``name`` in an export and fix its manifest checksum, as an attacker controlling the folder would."""
    write(folder / name)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_load_distilled_refuses_a_malicious_dataset_pt(tmp_path, marker, digits):
    raw = {k: v for k, v in evil_set(marker).items() if k != "note"}
    raw.update(classes=list(digits.classes), mean=list(digits.mean), std=list(digits.std))
    export_set(raw, tmp_path / "e", formats=["pt"])
    _plant_in_export(tmp_path / "e", "dataset.pt", lambda p: torch.save(evil_set(marker), p))
    with pytest.raises(DataError) as exc_info:
        load_distilled(tmp_path / "e")
    one_line_refusal(exc_info, "refusing to load", "dataset.pt")


def test_resume_refuses_a_malicious_checkpoint(tiny, digits, tmp_path, marker):
    store = train_experts(digits, tiny)
    (tmp_path / "run").mkdir()
    torch.save({"version": 1, "fingerprint": "x", "pixels": Evil(marker)}, tmp_path / "run" / "checkpoint.pt")
    scores = torch.rand(len(digits.train_labels), generator=torch.Generator().manual_seed(0))
    with pytest.raises(DataError) as exc_info:
        selmatch(digits, tiny, ipc=2, alpha=0.5, scores=scores, experts=store, checkpoint_dir=tmp_path / "run",
                 resume=True)
    one_line_refusal(exc_info, "refusing to load distillation checkpoint", "delete it to start over")


def test_score_cache_refuses_a_malicious_file(tiny, digits, marker):
    path = cache_path(digits, tiny.scores, tiny.cache_path, tiny.seed)
    path.parent.mkdir(parents=True)
    torch.save({"scores": Evil(marker)}, path)
    with pytest.raises(DataError) as exc_info:
        get_scores(digits, tiny.scores, cache_dir=tiny.cache_path, seed=tiny.seed)
    one_line_refusal(exc_info, "refusing to load cached scores", "delete it to recompute")
    assert path.is_file()  # refused, not silently replaced


def test_tinyimagenet_tensor_cache_refuses_a_malicious_file(tmp_path, marker):
    folder = tmp_path / "tiny-imagenet-200"
    (folder / "train").mkdir(parents=True)
    (folder / "val").mkdir()
    (folder / "val" / "val_annotations.txt").write_text("")
    torch.save({"train_images": Evil(marker)}, folder / "autoselmatch-tensors.pt")
    with pytest.raises(DataError) as exc_info:
        load_dataset("tinyimagenet", root=tmp_path)
    one_line_refusal(exc_info, "decoded-tensor cache", "refusing to load")


def test_a_malicious_expert_state_file_is_not_run(tiny, digits, marker):
    """A half-trained expert's state file that holds code is treated as unusable: the expert restarts."""
    first = train_experts(digits, tiny)
    torch.save({"epoch": 1, "model": Evil(marker)}, first.directory / "expert_001.state.pt")
    store = train_experts(digits, apply_overrides(tiny, {"experts.num_experts": 2}))
    assert store.num_experts == 2


# ---- (b) NumPy files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_score_files_refuse_object_arrays(digits, tmp_path, marker, suffix):
    path = tmp_path / f"scores{suffix}"
    if suffix == ".npy":
        np.save(path, evil_array(marker), allow_pickle=True)
    else:
        np.savez(path, scores=evil_array(marker))
    with pytest.raises(DataError) as exc_info:
        load_score_file(path, digits, name="el2n")
    one_line_refusal(exc_info, "cannot read score file", "Object arrays cannot be loaded")


def test_evaluate_indices_refuse_an_object_array(tmp_path, marker):
    np.save(tmp_path / "idx.npy", evil_array(marker), allow_pickle=True)
    result = CliRunner().invoke(cli, ["evaluate", "--indices", str(tmp_path / "idx.npy"), "--dataset", "digits"],
                                catch_exceptions=False)
    assert result.exit_code == 2 and "Object arrays cannot be loaded" in result.output
    assert result.output.strip().splitlines() == [result.output.strip()]


def test_expert_store_refuses_an_object_array_trajectory(tiny, digits, marker):
    store = train_experts(digits, tiny)
    path = store.path(0)
    np.save(path, evil_array(marker), allow_pickle=True)
    manifest = json.loads((store.directory / "manifest.json").read_text())
    manifest["experts"]["0"].update(bytes=path.stat().st_size, sha256=sha256_file(path))
    (store.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError) as exc_info:
        load_experts(digits, tiny).trajectory(0)
    one_line_refusal(exc_info, "expert_000.npy", "dtype object")


def test_load_distilled_refuses_an_object_array_npz(tmp_path, marker, digits):
    raw = {k: v for k, v in evil_set(marker).items() if k != "note"}
    raw.update(classes=list(digits.classes), mean=list(digits.mean), std=list(digits.std))
    export_set(raw, tmp_path / "e", formats=["npz"])
    _plant_in_export(tmp_path / "e", "dataset.npz", lambda p: np.savez(p, pixels=evil_array(marker)))
    with pytest.raises(DataError) as exc_info:
        load_distilled(tmp_path / "e")
    one_line_refusal(exc_info, "dataset.npz", "Object arrays cannot be loaded")


# ---- (c) CIFAR batches ----------------------------------------------------------------------------------


def test_cifar_batches_refuse_a_malicious_pickle(tmp_path, marker):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": Evil(marker), "labels": [0]}, f)
    with pytest.raises(DataError) as exc_info:
        load_dataset("cifar10", root=tmp_path)
    one_line_refusal(exc_info, "cannot read CIFAR file", "data_batch_1", "refusing to load global")


# ---- static: the package source cannot regress -----------------------------------------------------------


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


UNSAFE_CALLS = ("pickle.load", "pickle.loads", "pickle.Unpickler", "torch.serialization.add_safe_globals",
                "marshal.loads", "shelve.open", "yaml.load", "yaml.unsafe_load", "joblib.load", "dill.load")


def unsafe_loads(source: str, rel: str) -> list[str]:
    """What in ``source`` (the file ``rel``, e.g. ``autoselmatch/data.py``) could run code from a file."""
    problems = []
    tree = ast.parse(source)
    for call, name in _calls(tree):
        where = f"{rel}:{call.lineno}: {name}(...)"
        if name == "torch.load" and _keyword(call, "weights_only") is not True:
            problems.append(f"{where} without weights_only=True")
        if name == "torch.load" and rel != "autoselmatch/fileio.py":
            problems.append(f"{where} outside fileio.load_torch")
        if name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") is not False:
            problems.append(f"{where} without allow_pickle=False")
        if name in UNSAFE_CALLS:
            problems.append(f"{where} can run code from a file")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
            vetted = rel == "autoselmatch/data.py" and node.name == "_NumpyOnlyUnpickler"
            if not vetted or "find_class" not in {f.name for f in node.body if isinstance(f, ast.FunctionDef)}:
                problems.append(f"{rel}:{node.lineno}: unpickler {node.name} is not the vetted NumPy-only one")
    if "allow_pickle=True" in source or "weights_only=False" in source:
        problems.append(f"{rel}: mentions allow_pickle=True or weights_only=False")
    return problems


def test_the_package_never_unpickles_unsafely():
    """torch.load only with weights_only=True (in fileio), np.load only with allow_pickle=False,
    no pickle.load(s)/Unpickler except the vetted NumPy-only unpickler, no other deserialiser."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        problems += unsafe_loads(path.read_text(), path.relative_to(PACKAGE.parent).as_posix())
    assert problems == []


@pytest.mark.parametrize("snippet, rel", [
    ("torch.load(p)", "autoselmatch/fileio.py"),
    ("torch.load(p, weights_only=False)", "autoselmatch/fileio.py"),
    ("torch.load(p, weights_only=True)", "autoselmatch/export.py"),
    ("np.load(p)", "autoselmatch/scores.py"),
    ("np.load(p, mmap_mode='r', allow_pickle=True)", "autoselmatch/experts/_store.py"),
    ("pickle.load(f)", "autoselmatch/data.py"),
    ("pickle.loads(blob)", "autoselmatch/data.py"),
    ("class U(pickle.Unpickler):\n    pass", "autoselmatch/data.py"),
    ("class _NumpyOnlyUnpickler(pickle.Unpickler):\n    pass", "autoselmatch/data.py"),
], ids=["torch-load-bare", "torch-load-unsafe", "torch-load-outside-fileio", "np-load-bare", "np-load-pickle",
        "pickle-load", "pickle-loads", "other-unpickler", "unpickler-without-find-class"])
def test_the_static_check_catches_each_unsafe_form(snippet, rel):
    assert unsafe_loads(snippet, rel)


def test_the_numpy_only_unpickler_allows_only_array_rebuilding():
    from autoselmatch.data import _NumpyOnlyUnpickler

    assert {module.split(".")[0] for module, _ in _NumpyOnlyUnpickler.ALLOWED} <= {"numpy", "_codecs"}
    assert all(name in {"_reconstruct", "_frombuffer", "ndarray", "dtype", "encode"}
               for _, name in _NumpyOnlyUnpickler.ALLOWED)
