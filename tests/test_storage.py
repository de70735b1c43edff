"""Storage URLs, opening storages, default names."""

from pathlib import Path

import optuna
import pytest

from autoselmatch import storage as storage_module
from autoselmatch.errors import DataError, InvalidArgument
from autoselmatch.storage import default_artifacts_dir, default_storage_url, open_storage, parse_storage


@pytest.mark.parametrize("url, kind, path", [
    ("sqlite:///studies/digits.db", "sqlite", Path("studies/digits.db")),
    ("sqlite:////tmp/x/y.db", "sqlite", Path("/tmp/x/y.db")),
    ("journal:///studies/digits.log", "journal", Path("studies/digits.log")),
    ("journal:////tmp/j.log", "journal", Path("/tmp/j.log")),
    ("runs/shared.log", "journal", Path("runs/shared.log")),
    ("postgresql://user:secret@db.example:5432/optuna", "server", None),
])
def test_parse_storage_forms(url, kind, path):
    spec = parse_storage(url)
    assert (spec.kind, spec.path) == (kind, path)
    assert spec.shareable == (kind != "sqlite")


def test_server_passwords_are_hidden_in_messages():
    assert parse_storage("postgresql://user:secret@db/optuna").display() == "postgresql://user:***@db/optuna"


def test_default_storage_and_artifacts():
    assert default_storage_url("digits") == "sqlite:///studies/digits.db"
    assert default_storage_url("folder:/data/pets") == "sqlite:///studies/folder-data-pets.db"
    assert default_artifacts_dir(parse_storage("sqlite:///studies/digits.db"), "digits") == Path(
        "studies/digits-artifacts")
    assert default_artifacts_dir(parse_storage("x/run.log"), "digits") == Path("x/run-artifacts")
    assert default_artifacts_dir(parse_storage("postgresql://h/db"), "cifar10") == Path("studies/cifar10-artifacts")


@pytest.mark.parametrize("url, message", [
    ("", "storage URL is empty"),
    ("studies/digits.db", "storage must be sqlite:///PATH.db"),
    ("nosuchdb://host/db", "does not parse"),
    ("journal://x.log", "journal storage must look like journal:///PATH.log"),
    ("journal:///", "journal storage must look like"),
])
def test_bad_storage_urls_are_refused_with_one_line(url, message):
    with pytest.raises(InvalidArgument, match=message) as info:
        parse_storage(url)
    assert "\n" not in str(info.value)


def test_unreachable_server_is_a_data_error_before_any_work():
    with pytest.raises(DataError, match=r"cannot open storage postgresql://u:\*\*\*@127.0.0.1:1/db"):
        open_storage(parse_storage("postgresql://u:pw@127.0.0.1:1/db"))


def test_storage_path_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="is a folder"):
        open_storage(parse_storage(f"sqlite:///{tmp_path}"))


class RacedCreation:
    """Stands in for ``RDBStorage``: the first ``losses`` opens lose the race to create the tables."""

    def __init__(self, losses):
        self.losses, self.opens = losses, 0

    def __call__(self, url, **kwargs):
        from sqlalchemy.exc import IntegrityError

        self.opens += 1
        if self.opens <= self.losses:
            raise IntegrityError("CREATE TABLE studies", {}, Exception('duplicate key value "pg_type_typname_nsp_index"'))
        return ("storage", url)


@pytest.mark.parametrize("losses, opens", [(0, 1), (2, 3), (storage_module.CREATE_TRIES - 1, storage_module.CREATE_TRIES)])
def test_a_worker_that_loses_the_race_to_create_the_tables_opens_again(monkeypatch, losses, opens):
    raced = RacedCreation(losses)
    monkeypatch.setattr(optuna.storages, "RDBStorage", raced)
    monkeypatch.setattr(storage_module.time, "sleep", lambda seconds: None)
    url = "postgresql://u:pw@db.example/asm"
    assert open_storage(parse_storage(url)) == ("storage", url)
    assert raced.opens == opens


def test_a_duplicate_name_on_every_open_is_a_one_line_data_error(monkeypatch):
    raced = RacedCreation(losses=storage_module.CREATE_TRIES)
    monkeypatch.setattr(optuna.storages, "RDBStorage", raced)
    monkeypatch.setattr(storage_module.time, "sleep", lambda seconds: None)
    with pytest.raises(DataError, match=r"cannot open storage postgresql://u:\*\*\*@db.example/asm: .*duplicate key") as info:
        open_storage(parse_storage("postgresql://u:pw@db.example/asm"))
    assert "\n" not in str(info.value) and raced.opens == storage_module.CREATE_TRIES
