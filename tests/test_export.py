"""Exported distilled sets, the verified loader, study export and trial artifacts."""

import dataclasses
import json
import os
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import numpy as np
import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

import autoselmatch
from autoselmatch.cli import cli
from autoselmatch.distill import DistillResult
from autoselmatch.errors import DataError, InvalidArgument
from autoselmatch.export import (
    DISTILL_COLOUR,
    SELECT_COLOUR,
    export_set,
    export_study,
    export_trial,
    image_grid,
    load_distilled,
    load_result,
    upload_trial_artifacts,
)

IPC = 3
RUNNER = CliRunner()
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def result(digits):
    """A DistillResult of IPC images per class: the first IPC-1 of each class distilled (float noise added)."""
    x, y = digits.split("train")
    index = torch.cat([torch.nonzero(y == c).flatten()[:IPC] for c in range(10)])
    mask = torch.arange(len(index)) % IPC < IPC - 1  # (n,) D_distill first in each class
    images = digits.normalize(x[index]) + 0.05 * torch.randn(len(index), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return DistillResult(images=images, labels=y[index], distill_mask=mask, dataset="digits", classes=digits.classes, mean=digits.mean,
                         std=digits.std, eta=0.0123, settings={"ipc": IPC, "alpha": 0.6, "beta": 0.1, "seed": 0},
                         loss_history=[0.9, 0.8], evals=[(1, 0.5)], indices=index, iterations=2)


@pytest.fixture
def result_file(result, tmp_path):
    return result.save(tmp_path / "result.pt")


def siblings(path: Path) -> list[str]:
    """Entries of ``path``'s parent other than ``path`` and the test's inputs (temp leftovers)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name not in (path.name, "result.pt"))


# --------------------------------------------------------------------------------------------
# export_set / load_distilled
# --------------------------------------------------------------------------------------------


def test_export_round_trips_pixels_and_labels(result, result_file, tmp_path):
    out = tmp_path / "export"
    manifest = export_set(result_file, out)
    ds = load_distilled(out)
    assert torch.equal(ds.pixels, result.to_pixels())
    assert torch.equal(ds.images, result.images)  # the exact float values, not the quantised pixels
    assert torch.equal(ds.labels, result.labels) and torch.equal(ds.distill_mask, result.distill_mask)
    image, label = ds[4]
    assert torch.equal(image, result.images[4]) and int(label) == int(result.labels[4])
    assert (manifest["dataset"], manifest["ipc"], manifest["alpha"], manifest["beta"]) == ("digits", IPC, 0.6, 0.1)
    assert manifest["eta"] == pytest.approx(0.0123) and manifest["curves"]["loss"] == [0.9, 0.8]
    assert manifest["classes"] == [str(d) for d in range(10)] and manifest["num_distill"] == 20
    on_disk = json.loads((out / "manifest.json").read_text())
    assert set(on_disk["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*")
                                     if p.is_file() and p.name != "manifest.json"}
    assert siblings(out) == []


def test_pt_file_loads_with_weights_only(result_file, tmp_path):
    export_set(result_file, tmp_path / "e", formats=["pt"])
    blob = torch.load(tmp_path / "e" / "dataset.pt", weights_only=True)
    assert blob["pixels"].dtype == torch.uint8 and blob["classes"][3] == "3" and len(blob["mean"]) == 1


def test_npz_only_export_round_trips(result, result_file, tmp_path):
    export_set(result_file, tmp_path / "e", formats=["npz"])
    assert not (tmp_path / "e" / "dataset.pt").exists()
    with np.load(tmp_path / "e" / "dataset.npz", allow_pickle=False) as npz:
        assert list(npz["classes"]) == [str(d) for d in range(10)]
    ds = load_distilled(tmp_path / "e")
    assert torch.equal(ds.pixels, result.to_pixels()) and torch.equal(ds.images, result.images)
    assert torch.equal(ds.labels, result.labels)


def test_pixels_only_result_normalises_on_load(result, tmp_path):
    raw = result.to_dict()
    del raw["images"]
    export_set(raw, tmp_path / "e", formats=["pt"])
    ds = load_distilled(tmp_path / "e")
    expected = (result.to_pixels().float() / 255 - result.mean[0]) / result.std[0]
    assert torch.allclose(ds.images, expected) and not torch.equal(ds.images, result.images)


def test_png_tree_has_ipc_files_per_class(result, result_file, tmp_path):
    from PIL import Image

    export_set(result_file, tmp_path / "e", formats=["png"])
    root = tmp_path / "e" / "png"
    assert sorted(p.name for p in root.iterdir()) == [str(d) for d in range(10)]
    for folder in root.iterdir():
        assert len(list(folder.glob("*.png"))) == IPC
    first = sorted((root / "7").glob("*.png"))[0]
    pixels = np.asarray(Image.open(first))
    assert np.array_equal(pixels, result.to_pixels()[int(first.stem), 0].numpy())


def test_grid_marks_select_and_distill(result):
    grid = np.asarray(image_grid(result.to_pixels(), result.labels, result.distill_mask, [str(d) for d in range(10)]))
    colours = {tuple(c) for c in grid.reshape(-1, 3)}
    assert SELECT_COLOUR in colours and DISTILL_COLOUR in colours
    assert grid.shape[0] > 10 * 32  # ten rows of enlarged 8x8 images


def test_tampered_file_is_refused(result_file, tmp_path):
    out = tmp_path / "e"
    export_set(result_file, out)
    blob = bytearray((out / "dataset.pt").read_bytes())
    blob[-100] ^= 0xFF
    (out / "dataset.pt").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="checksum mismatch for .*dataset.pt"):
        load_distilled(out)


def test_missing_file_is_refused(result_file, tmp_path):
    out = tmp_path / "e"
    export_set(result_file, out)
    next((out / "png" / "2").glob("*.png")).unlink()
    with pytest.raises(DataError, match="missing"):
        load_distilled(out)


def test_manifest_pointing_outside_is_refused(result_file, tmp_path):
    out = tmp_path / "e"
    export_set(result_file, out, formats=["pt"])
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["../result.pt"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="outside the export folder"):
        load_distilled(out)


def test_not_an_export_is_refused(tmp_path):
    with pytest.raises(DataError, match="manifest.json is missing"):
        load_distilled(tmp_path)


def test_non_empty_out_dir_is_refused(result_file, tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InvalidArgument, match="not empty; pass --overwrite"):
        export_set(result_file, out)
    assert (out / "keep.txt").read_text() == "mine"
    export_set(result_file, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    assert siblings(out) == []


def test_empty_out_dir_is_used(result_file, tmp_path):
    (tmp_path / "e").mkdir()
    export_set(result_file, tmp_path / "e", formats=["pt"])
    assert (tmp_path / "e" / "dataset.pt").is_file()


@pytest.mark.parametrize("name", ["../evil", "a/b", "/etc", "..", ".", "", "~root", "a\\b"])
def test_class_name_that_escapes_is_refused(result, tmp_path, name):
    raw = result.to_dict()
    raw["classes"] = [name] + [str(d) for d in range(1, 10)]
    out = tmp_path / "e"
    with pytest.raises(InvalidArgument, match="cannot be a folder name"):
        export_set(raw, out)
    assert not out.exists() and siblings(out) == []


def test_duplicate_class_names_are_refused(result, tmp_path):
    raw = result.to_dict()
    raw["classes"] = ["cat", "Cat"] + [str(d) for d in range(2, 10)]
    with pytest.raises(InvalidArgument, match="unique"):
        export_set(raw, tmp_path / "e")


def test_failure_midway_leaves_nothing(result_file, tmp_path, monkeypatch):
    import autoselmatch.export._set as export_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "_write_png_tree", broken)
    out = tmp_path / "e"
    with pytest.raises(OSError, match="disk full"):
        export_set(result_file, out)
    assert not out.exists() and siblings(out) == []


def test_bad_formats_are_refused(result_file, tmp_path):
    with pytest.raises(InvalidArgument, match="unknown export format 'jpg'"):
        export_set(result_file, tmp_path / "e", formats=["pt", "jpg"])
    with pytest.raises(InvalidArgument, match="at least one"):
        export_set(result_file, tmp_path / "e", formats=[])


def test_bad_grid_size_is_refused(result_file, tmp_path):
    with pytest.raises(InvalidArgument, match="grid_per_class must be >= 1"):
        export_set(result_file, tmp_path / "e", grid_per_class=0)


def test_out_path_that_is_a_file_is_refused(result_file, tmp_path):
    (tmp_path / "e").write_text("x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        export_set(result_file, tmp_path / "e")


def test_missing_result_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_result(tmp_path / "nope.pt")


def test_result_without_labels_is_refused(result):
    raw = result.to_dict()
    del raw["labels"]
    with pytest.raises(DataError, match="no 'labels'"):
        load_result(raw)


def test_result_with_wrong_mask_is_refused(result):
    raw = result.to_dict()
    raw["distill_mask"] = raw["distill_mask"].long()
    with pytest.raises(DataError, match="distill_mask must be bool"):
        load_result(raw)


def test_augmented_samples_change_and_keep_labels(result_file, tmp_path):
    export_set(result_file, tmp_path / "e", formats=["pt"])
    plain = load_distilled(tmp_path / "e")
    augmented = load_distilled(tmp_path / "e", augment=True, generator=torch.Generator().manual_seed(0))
    pairs = [(augmented[i], plain[i]) for i in range(len(plain))]
    assert all(a[0].shape == p[0].shape and int(a[1]) == int(p[1]) for a, p in pairs)
    assert sum(not torch.equal(a[0], p[0]) for a, p in pairs) > len(pairs) // 2


@pytest.mark.parametrize("evaluation, augment, used", [
    (None, True, "combined"),  # no evaluation record (a set exported from a file): SelMatch's protocol
    ({"augment": "combined", "runs": 2}, True, "combined"),  # a SelMatch set scored with combined
    ({"augment": "dsa", "runs": 2}, True, "dsa"),  # a selection tune exported, scored with DSA
    ({"augment": "dsa", "runs": 2}, "simple", "simple"),  # a name given overrides the record
])
def test_augmented_samples_use_the_augmentation_the_test_score_used(result_file, tmp_path, monkeypatch,
                                                                    evaluation, augment, used):
    import autoselmatch.augment as augment_module

    export_set(result_file, tmp_path / "e", formats=["pt"], meta={} if evaluation is None else {"evaluation": evaluation})
    seen = []
    real = augment_module.get_augmentation
    monkeypatch.setattr(augment_module, "get_augmentation", lambda name: seen.append(name) or real(name))
    loaded = load_distilled(tmp_path / "e", augment=augment, generator=torch.Generator().manual_seed(0))
    image, _ = loaded[0]
    assert loaded.augmentation == used and seen == [used] and image.shape == loaded.images[0].shape


def test_an_unknown_augmentation_name_is_refused_in_one_line(result_file, tmp_path):
    export_set(result_file, tmp_path / "e", formats=["pt"])
    with pytest.raises(Exception, match="unknown augmentation 'sharpen'") as caught:
        load_distilled(tmp_path / "e", augment="sharpen")
    assert "\n" not in str(caught.value)


def test_augmented_samples_mirror_only_where_the_study_allowed_it(result_file, tmp_path, monkeypatch):
    import autoselmatch.augment as augment

    seen = []
    real = augment.combined_augment
    monkeypatch.setattr(augment, "combined_augment", lambda *a, **kw: seen.append(kw["flip"]) or real(*a, **kw))
    export_set(result_file, tmp_path / "e", formats=["pt"])
    loaded = load_distilled(tmp_path / "e", augment=True)
    assert loaded.flip  # the export does not say: flips, as before data.flip
    loaded[0]
    loaded.manifest["study_settings"] = {"data": {"name": "digits", "flip": False}}  # as a digits study records
    assert not loaded.flip
    loaded[0]
    assert seen == [True, False]


def test_a_set_exported_from_a_file_keeps_the_flip_setting_of_the_run_that_made_it(result, tmp_path):
    from autoselmatch.config import load_preset, to_dict

    settings = {**result.settings, "config": to_dict(load_preset("digits"))}  # as `distill` stores its run
    assert settings["config"]["data"]["flip"] is False
    made = dataclasses.replace(result, settings=settings).save(tmp_path / "result.pt")
    export_set(made, tmp_path / "e", formats=["pt"])
    assert not load_distilled(tmp_path / "e").flip
    settings["config"]["data"]["flip"] = True
    export_set(dataclasses.replace(result, settings=settings).save(tmp_path / "flips.pt"), tmp_path / "f",
               formats=["pt"])
    assert load_distilled(tmp_path / "f").flip


def test_three_line_training_recipe(result_file, tmp_path):
    export_set(result_file, tmp_path / "e", formats=["pt"])
    train = autoselmatch.load_distilled(tmp_path / "e", augment=True)
    x, y = next(iter(torch.utils.data.DataLoader(train, batch_size=8, shuffle=True)))
    assert x.shape == (8, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64


# --------------------------------------------------------------------------------------------
# Studies: artifacts, study export, trial export
# --------------------------------------------------------------------------------------------


@pytest.fixture
def journal(result, result_file, tmp_path):
    """A journal storage with digits-ipc3-beta (3 trials) and digits-ipc3-alpha (2 finished, 1 pruned),
    each alpha trial carrying its grid, curves and set as artifacts, and the study the best set."""
    log = tmp_path / "studies" / "digits.log"
    log.parent.mkdir()
    storage = JournalStorage(JournalFileBackend(str(log)))
    store_dir = tmp_path / "studies" / "digits-artifacts"
    store_dir.mkdir()
    store = FileSystemArtifactStore(str(store_dir))
    beta = optuna.create_study(study_name="digits-ipc3-beta", storage=storage, direction="maximize")
    for value, acc in ((0.1, 0.6), (0.2, 0.7), (0.3, 0.65)):
        trial = beta.ask({"beta": optuna.distributions.FloatDistribution(0.0, 0.9)})
        beta.tell(trial, acc)
    alpha = optuna.create_study(study_name="digits-ipc3-alpha", storage=storage, direction="maximize")
    for value, acc, pruned in ((0.5, 0.72, False), (0.6, 0.75, False), (0.9, 0.4, True)):
        trial = alpha.ask({"alpha": optuna.distributions.FloatDistribution(0.0, 1.0)})
        trial.set_user_attr("result_path", str(result_file))
        trial.report(acc - 0.1, 1)
        trial.report(acc, 2)
        upload_trial_artifacts(trial, store, result)
        alpha.tell(trial, state=TrialState.PRUNED) if pruned else alpha.tell(trial, acc)
    upload_trial_artifacts(alpha, store, result)
    return {"url": f"journal:///{log}", "log": log, "artifacts": store_dir, "storage": storage}


def wsgi_get(app, path: str) -> tuple[str, bytes]:
    """A GET request to a WSGI app: (status line, body)."""
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, REQUEST_METHOD="GET", QUERY_STRING="")
    status = {}

    def start_response(line, headers, exc_info=None):
        status["line"] = line

    body = b"".join(app(environ, start_response))
    return status["line"], body


def test_upload_trial_artifacts_records_grid_curves_and_set(journal):
    from optuna.artifacts import get_all_artifact_meta

    alpha = optuna.load_study(study_name="digits-ipc3-alpha", storage=journal["storage"])
    names = sorted(m.filename for m in get_all_artifact_meta(alpha.trials[0], storage=journal["storage"]))
    assert names == ["trial-0-curves.json", "trial-0-distilled.pt", "trial-0-grid.png"]
    metas = {m.filename: m for m in get_all_artifact_meta(alpha)}
    assert set(metas) == {"best-curves.json", "best-distilled.pt", "best-grid.png"}
    copy = load_result(journal["artifacts"] / metas["best-distilled.pt"].artifact_id)
    assert copy.classes[0] == "0" and copy.settings["alpha"] == 0.6 and copy.images is not None


def test_upload_trial_artifacts_refuses_a_finished_trial(journal, result):
    alpha = optuna.load_study(study_name="digits-ipc3-alpha", storage=journal["storage"])
    with pytest.raises(InvalidArgument, match="running optuna.Trial or a Study, got FrozenTrial"):
        upload_trial_artifacts(alpha.trials[0], FileSystemArtifactStore(str(journal["artifacts"])), result)


def test_export_study_from_journal_opens_in_optuna_and_dashboard(journal, tmp_path):
    from optuna_dashboard import wsgi

    out = tmp_path / "copy" / "digits.db"
    summary = export_study(journal["url"], out)
    assert summary["studies"] == ["digits-ipc3-beta", "digits-ipc3-alpha"]
    assert (summary["trials"], summary["artifacts"], summary["missing_artifacts"]) == (6, 12, 0)
    url = f"sqlite:///{out}"
    copied = optuna.load_study(study_name="digits-ipc3-alpha", storage=url)
    source = optuna.load_study(study_name="digits-ipc3-alpha", storage=journal["storage"])
    assert [t.state for t in copied.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert copied.best_params == source.best_params and copied.best_value == 0.75
    assert copied.trials[2].intermediate_values == {1: pytest.approx(0.3), 2: 0.4}
    art_out = tmp_path / "copy" / "digits-artifacts"
    for file in journal["artifacts"].iterdir():
        assert (art_out / file.name).read_bytes() == file.read_bytes()

    app = wsgi(url, artifact_store=FileSystemArtifactStore(str(art_out)))
    status, body = wsgi_get(app, "/api/studies")
    assert status.startswith("200")
    studies = {s["study_name"]: s["study_id"] for s in json.loads(body)["study_summaries"]}
    assert set(studies) == {"digits-ipc3-beta", "digits-ipc3-alpha"}
    status, body = wsgi_get(app, f"/api/studies/{studies['digits-ipc3-alpha']}")
    trial = json.loads(body)["trials"][0]
    grid = next(a for a in trial["artifacts"] if a["filename"] == "trial-0-grid.png")
    status, png = wsgi_get(app, f"/artifacts/{studies['digits-ipc3-alpha']}/{trial['trial_id']}/{grid['artifact_id']}")
    assert status.startswith("200") and png.startswith(b"\x89PNG")


def test_export_study_selected_study_and_explicit_artifacts(journal, tmp_path):
    out = tmp_path / "beta.db"
    summary = export_study(journal["url"], out, studies=["digits-ipc3-beta"], artifacts=journal["artifacts"])
    assert summary["studies"] == ["digits-ipc3-beta"] and summary["artifacts"] == 0
    assert optuna.get_all_study_names(f"sqlite:///{out}") == ["digits-ipc3-beta"]


def test_export_study_reports_missing_artifacts(journal, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    summary = export_study(journal["url"], tmp_path / "x.db", artifacts=empty)
    assert (summary["artifacts"], summary["missing_artifacts"]) == (0, 12)


def test_export_study_refuses_an_existing_out_file(journal, tmp_path):
    (tmp_path / "x.db").write_text("")
    with pytest.raises(InvalidArgument, match="exists; pass --overwrite"):
        export_study(journal["url"], tmp_path / "x.db")


def test_export_study_refuses_an_unknown_study(journal, tmp_path):
    with pytest.raises(InvalidArgument, match="unknown study 'nope'; the storage holds: digits-ipc3-beta"):
        export_study(journal["url"], tmp_path / "x.db", studies=["nope"])
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "x-artifacts").exists()


def test_export_study_refuses_a_missing_storage(tmp_path):
    with pytest.raises(DataError, match="no study storage at"):
        export_study(f"sqlite:///{tmp_path / 'none.db'}", tmp_path / "x.db")
    assert not (tmp_path / "none.db").exists()


def test_export_trial_takes_the_best_finished_trial(journal, result, tmp_path):
    best = optuna.load_study(study_name="digits-ipc3-alpha", storage=journal["storage"]).best_trial
    manifest = export_trial(journal["url"], "digits-ipc3-alpha", tmp_path / "e")
    assert (manifest["study"], manifest["trial"], manifest["score"], manifest["alpha"]) == (
        "digits-ipc3-alpha", 1, 0.75, best.params["alpha"])
    assert manifest["val_accuracy"] == 0.75 and manifest["test_accuracy"] is None and manifest["final"] is False
    assert torch.equal(load_distilled(tmp_path / "e").pixels, result.to_pixels())


@pytest.fixture
def final(journal, result, tmp_path):
    """The final set tune records on the alpha study: trial 1's set distilled further (here: other pixels)."""
    further = dataclasses.replace(result, images=result.images.flip(-1), eta=0.02)
    path = further.save(tmp_path / "final.pt")
    alpha = optuna.load_study(study_name="digits-ipc3-alpha", storage=journal["storage"])
    alpha.set_user_attr("final", {"result_path": str(path), "trial": 1, "alpha": 0.6, "beta": 0.1,
                                  "test_accuracy": {"mean": 0.81, "std": 0.01}})
    return further


def test_export_prefers_the_final_set(journal, final, result, tmp_path):
    manifest = export_trial(journal["url"], "digits-ipc3-alpha", tmp_path / "e")
    assert manifest["final"] is True and manifest["trial"] == 1 and manifest["test_accuracy"]["mean"] == 0.81
    assert torch.equal(load_distilled(tmp_path / "e").images, final.images)
    manifest = export_trial(journal["url"], "digits-ipc3-alpha", tmp_path / "t1", trial=1)
    assert manifest["final"] is False and torch.equal(load_distilled(tmp_path / "t1").images, result.images)


def test_export_of_a_lost_final_set_uses_its_artifact(journal, final, result, tmp_path):
    (tmp_path / "final.pt").unlink()
    export_trial(journal["url"], "digits-ipc3-alpha", tmp_path / "e")  # from the study's best-distilled.pt artifact
    assert torch.equal(load_distilled(tmp_path / "e").images, result.images)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="the final set of digits-ipc3-alpha has no readable distilled set.*--artifacts"):
        export_trial(journal["url"], "digits-ipc3-alpha", tmp_path / "e2", artifacts=empty)


def test_export_trial_refuses_pruned_and_unknown_trials(journal, tmp_path):
    with pytest.raises(InvalidArgument, match="trial 2 of 'digits-ipc3-alpha' is PRUNED"):
        export_trial(journal["url"], "digits-ipc3-alpha", tmp_path / "e", trial=2)
    with pytest.raises(InvalidArgument, match="has no trial 9"):
        export_trial(journal["url"], "digits-ipc3-alpha", tmp_path / "e", trial=9)
    with pytest.raises(InvalidArgument, match="unknown study 'digits-ipc4-alpha'"):
        export_trial(journal["url"], "digits-ipc4-alpha", tmp_path / "e")


def test_export_trial_refuses_a_study_without_finished_trials(journal, tmp_path):
    study = optuna.create_study(study_name="digits-ipc5-alpha", storage=journal["storage"])
    study.tell(study.ask(), state=TrialState.PRUNED)
    with pytest.raises(DataError, match="no finished trial"):
        export_trial(journal["url"], "digits-ipc5-alpha", tmp_path / "e")


def test_export_trial_falls_back_to_the_set_artifact(journal, result, tmp_path):
    copy = tmp_path / "copy.db"
    export_study(journal["url"], copy)
    (tmp_path / "result.pt").unlink()  # the trial's result_path is gone, as on another machine
    export_trial(f"sqlite:///{copy}", "digits-ipc3-alpha", tmp_path / "e")
    assert torch.equal(load_distilled(tmp_path / "e").images, result.images)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_export_from_file(result_file, tmp_path):
    out = tmp_path / "e"
    res = RUNNER.invoke(cli, ["export", "--from", str(result_file), "--out", str(out), "--format", "pt,png",
                              "--output", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ipc"] == IPC and not (out / "dataset.npz").exists()


def test_cli_export_from_a_study_by_dataset_and_ipc(journal, tmp_path):
    res = RUNNER.invoke(cli, ["export", "--storage", journal["url"], "--dataset", "digits", "--ipc", "3",
                              "--out", str(tmp_path / "e"), "--output", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["study"] == "digits-ipc3-alpha"


def test_cli_export_refuses_a_non_empty_folder_in_one_line(result_file, tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x").write_text("")
    res = RUNNER.invoke(cli, ["export", "--from", str(result_file), "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0 and "--overwrite" in res.output


def test_cli_export_needs_exactly_one_source(result_file, tmp_path):
    res = RUNNER.invoke(cli, ["export", "--from", str(result_file), "--study", "x", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "exactly one of" in res.output
    res = RUNNER.invoke(cli, ["export", "--dataset", "digits", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "--dataset and --ipc go together" in res.output


def test_cli_export_study(journal, tmp_path):
    res = RUNNER.invoke(cli, ["export-study", "--storage", journal["url"], "--out", str(tmp_path / "s.db"),
                              "--output", "json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["artifacts"] == 12 and summary["dashboard"].startswith("optuna-dashboard sqlite:///")
    assert os.path.isdir(summary["artifact_dir"])
