"""The HTML report: content, escaping, offline rendering in headless Chromium."""

import base64
import json
import re
import shutil
import subprocess

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from autoselmatch.cli import cli
from autoselmatch.errors import DataError
from autoselmatch.export import upload_trial_artifacts
from autoselmatch.report import activity_figure, build_report
from autoselmatch.synset import SyntheticSet

optuna.logging.set_verbosity(optuna.logging.WARNING)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND",
                  "--virtual-time-budget=5000", "--dump-dom"]


def small_result(ipc: int) -> dict:
    """A result dict of ``ipc`` random 8x8 grey images per class (5 classes), half of them distilled."""
    n = 5 * ipc
    generator = torch.Generator().manual_seed(ipc)
    return {"uint8": torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=generator),
            "labels": torch.arange(n) % 5, "distill_mask": torch.arange(n) < n // 2, "dataset": "digits",
            "classes": ["a", "b", "c", "d", "e"], "mean": [0.5], "std": [0.25], "eta": 0.01, "settings": {}}


def activity_set(path, alpha, *, coverage=False):
    """A set file at ``path`` with an activity record of iterations 10 and 20 (coverage too when asked)."""
    points = [{"iteration": i, "loss_ratio": 1 - alpha * i / 40, "eta": 0.01 + i / 1000,
               "pixel_change": alpha * i / 100} for i in (10, 20)]
    for p in points if coverage else []:
        p.update(coverage=0.5, coverage_easy=0.6, coverage_hard=0.4)
    blob = small_result(2)
    SyntheticSet.from_dict({**blob, "images": blob.pop("uint8"), "activity": points}).save(path)
    return path


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """digits studies for IPC 2 (both stages, one pruned trial, a grid, accuracies) and IPC 4 (stage 1 only)."""
    tmp_path = tmp_path_factory.mktemp("studies")
    log = tmp_path / "digits.log"
    storage = JournalStorage(JournalFileBackend(str(log)))
    (tmp_path / "digits-artifacts").mkdir()
    store = FileSystemArtifactStore(str(tmp_path / "digits-artifacts"))
    for ipc in (2, 4):
        beta = optuna.create_study(study_name=f"digits-ipc{ipc}-beta", storage=storage, direction="maximize")
        for b, acc in ((0.0, 0.5), (0.2, 0.6), (0.4, 0.55)):
            beta.enqueue_trial({"beta": b})
            trial = beta.ask({"beta": optuna.distributions.FloatDistribution(0.0, 0.9)})
            beta.tell(trial, acc)
    alpha = optuna.create_study(study_name="digits-ipc2-alpha", storage=storage, direction="maximize")
    for a, acc, state in ((0.5, 0.7, TrialState.COMPLETE), (0.3, 0.66, TrialState.COMPLETE),
                          (0.1, 0.4, TrialState.PRUNED)):
        alpha.enqueue_trial({"alpha": a})
        trial = alpha.ask({"alpha": optuna.distributions.FloatDistribution(0.0, 1.0)})
        for step in (10, 20):
            trial.report(acc * step / 20, step)
        if state == TrialState.COMPLETE:  # the pruned trial's set file is gone: it has no activity curve
            trial.set_user_attr("result_path", str(activity_set(tmp_path / f"alpha-{a}.pt", a, coverage=a == 0.5)))
        alpha.tell(trial, acc if state == TrialState.COMPLETE else None, state=state)
    upload_trial_artifacts(alpha, store, small_result(2), include_set=False)
    alpha.set_user_attr("test_accuracy", {"mean": 0.8, "std": 0.02})
    alpha.set_user_attr("final", {"alpha": 0.5, "beta": 0.2, "result_path": str(tmp_path / "alpha-0.5.pt")})
    alpha.set_user_attr("settings", {"ipc": 2, "note": "<script>alert(1)</script>"})
    optuna.create_study(study_name="cifar10-ipc2-beta", storage=storage)
    return {"url": f"journal:///{log}", "dir": tmp_path}


@pytest.fixture(scope="module")
def report(studies):
    out = studies["dir"] / "report.html"
    summary = build_report(studies["url"], "digits", out)
    return summary, out.read_text()


def test_report_has_every_section(report):
    summary, page = report
    assert summary["ipcs"] == [2, 4]
    # overview + IPC 2 (beta, alpha, steps, activity, test) + IPC 4 (beta)
    assert summary["figures"] == 7 and page.count('class="plotly-graph-div"') == 7
    for div in ("optimum", "ipc2-beta", "ipc2-alpha", "ipc2-steps", "ipc2-activity", "ipc2-test", "ipc4-beta"):
        assert f'id="{div}"' in page
    assert "not run" in page  # IPC 4 has no stage 2
    assert "(pruned)" in page and "pruned (last report)" in page
    assert "best alpha = 0.5" in page and "best beta = 0.2" in page
    assert "80.00 ± 2.00 %" in page  # accuracies as percentages, as everywhere


def test_report_plots_each_distillations_activity(report):
    _, page = report
    figure = json.loads(re.search(r'Plotly.newPlot\(\s*"ipc2-activity",\s*(\[.*?\]),\s*\{', page, re.S)[1])
    names = {(t["name"], t["yaxis"]) for t in figure}
    # three activity panels for each set with a file; the coverage panels (y4, y5) only for the one that has them
    for label in ("trial 0, alpha=0.5", "trial 1, alpha=0.3", "final set, alpha=0.5"):
        assert {(label, "y"), (label, "y2"), (label, "y3")} <= names
    assert ("trial 0, alpha=0.5", "y5") in names and ("trial 1, alpha=0.3", "y4") not in names
    assert not any(name.startswith("trial 2") for name, _ in names)  # pruned, its file is gone
    trial1 = next(t for t in figure if t["name"] == "trial 1, alpha=0.3" and t["yaxis"] == "y")
    assert trial1["x"] == [10, 20] and trial1["y"] == pytest.approx([1 - 0.3 / 4, 1 - 0.3 / 2])
    for title in ("loss ratio (end", "pixel change (std units)", "coverage, easy half", "coverage, hard half"):
        assert title in page  # the subplot titles ("/" is written as "\\/" in the page's JSON)


def test_activity_figure_without_coverage_has_three_panels():
    points = [{"iteration": 5, "loss_ratio": 0.9, "eta": 0.01, "pixel_change": 0.1}]
    fig = activity_figure([("set", points)], "title")
    assert [a.text for a in fig.layout.annotations] == ["loss ratio (end / start)", "eta", "pixel change (std units)"]
    assert [t.y[0] for t in fig.data] == [0.9, 0.01, 0.1]


def test_report_is_self_contained(report):
    _, page = report
    assert re.search(r"<script[^>]+src=", page) is None and re.search(r"<link[^>]+href=", page) is None
    assert "Plotly.newPlot" in page and len(page) > 3_000_000  # plotly.js is inlined
    grid = re.search(r'<img alt="image grid, IPC 2" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert grid is not None and base64.b64decode(grid[1]).startswith(b"\x89PNG")
    assert "No image grid artifact found" in page  # IPC 4: no stage 2, no grid


def test_report_escapes_study_text(report):
    _, page = report
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_report_ignores_other_datasets(report):
    _, page = report
    assert "cifar10-ipc2" not in page


def test_report_without_studies_is_refused(studies, tmp_path):
    with pytest.raises(DataError, match="holds no study named mnist-ipc<N>-beta.*it holds: .*digits-ipc2-alpha"):
        build_report(studies["url"], "mnist", tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_report_with_a_study_prefix(studies, tmp_path):
    summary = build_report(studies["url"], "cifar10", tmp_path / "r.html", prefix="digits")
    assert summary["ipcs"] == [2, 4] and "autoselmatch report: cifar10" in (tmp_path / "r.html").read_text()


def test_report_of_a_missing_storage_is_refused(tmp_path):
    with pytest.raises(DataError, match="no study storage"):
        build_report(f"sqlite:///{tmp_path / 'none.db'}", "digits", tmp_path / "r.html")


def test_cli_report(studies):
    out = studies["dir"] / "cli.html"
    result = CliRunner().invoke(cli, ["report", "--dataset", "digits", "--storage", studies["url"], "--out", str(out),
                                      "--output", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ipcs"] == [2, 4] and out.stat().st_size > 1_000_000  # plotly.js inside


def test_report_renders_offline_in_headless_chromium(report, studies, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    summary, _ = report
    profile = tmp_path / "profile"
    page = (studies["dir"] / "report.html").resolve()
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    # plotly draws each figure into <svg class="main-svg"> elements once plotly.js has run
    assert dom.count('class="main-svg"') >= summary["figures"]
    assert dom.count('class="plot-container plotly"') == summary["figures"]


def test_report_renders_the_baselines_of_a_tuned_study(tmp_path):
    """A study that tune made (synthetic objectives): the final record's comparison with the baselines."""
    from test_tune_pipeline import MttWins, run  # the tests folder is on sys.path, as in test_tune_processes

    final = run(tmp_path, objectives=MttWins).ipcs[0].final
    out = tmp_path / "report.html"
    build_report(f"sqlite:///{tmp_path / 'studies.db'}", "digits", out)
    page = out.read_text()
    table = page[page.index('id="ipc10-baselines"'):]
    table = table[:table.index("</table>")]
    assert re.search(r"<td>MTT \(alpha 1, random init\)</td><td>125\.00 %</td><td>70\.00 %</td><td>exported</td>", table)
    assert re.search(r"<td>random selection \(class-balanced\)</td><td>50\.00 %</td><td>40\.00 %</td><td></td>", table)
    assert re.search(r"<td>SelMatch \(best grid point: alpha 0\.6, beta 0\.5\)</td><td>99\.99 %</td>"
                     r"<td>not evaluated \(not chosen\)</td>", table)
    assert f"<p>{final['summary']}</p>" in page and "test accuracy vs baselines" in page
    assert "best alpha = 0.6" in page  # the grid's best, not the baseline that beat it
