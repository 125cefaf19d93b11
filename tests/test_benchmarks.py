"""The benchmark scripts still run against the library they measure (no timings are asserted)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_every_benchmark_imports_what_it_measures(path):
    assert callable(load(path).main)


def test_the_previous_lap_kept_for_timing_computes_the_current_lap():
    """bench (b) times a copy of the pre-speed-work LAP: it must still be the same function."""
    bench = load(REPO / "benchmarks" / "bench_train_step.py")
    torch.manual_seed(0)
    ours = bench.build_backend("lap_astp", 4, 64).eval()
    previous = bench.previous_lap_astp(4, 64).eval()
    previous.lap.load_state_dict(ours.lap.state_dict())
    x = torch.randn(2, 10, 4, 64)  # [B, T, L, D]
    with torch.no_grad():
        torch.testing.assert_close(previous.lap(x), ours.lap(x), rtol=1e-5, atol=1e-5)
        assert previous(x).shape == (2, 192)


@pytest.mark.slow
def test_phase_benchmark_dry_run_on_cpu_reports_every_phase(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train_step.py"), "--parts", "phases",
                    "--sizes", "tiny", "--micro_batches", "2,2,2", "--reps", "1", "--device", "cpu",
                    "--work_dir", str(tmp_path), "--json", str(out)], check=True, capture_output=True, text=True)
    rows = json.loads(out.read_text())["phases"]
    assert sorted(rows) == ["tiny_phase1", "tiny_phase2", "tiny_phase3"]
    for row in rows.values():
        assert row["crops_per_s"] > 0 and 0 < row["upstream_share"] and row["host_reads"] <= 8
