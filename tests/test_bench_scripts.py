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
