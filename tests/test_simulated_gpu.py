"""benchmarks/simulated_gpu.py runs (its --quick mode) and prints its table; no assertion on time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_simulated_gpu_quick_prints_its_table(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "simulated_gpu.py"), "--quick", "--json",
                          str(tmp_path / "rows.json")], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "| device Mvox/s | 1 thread | 2 threads |" in text
    for speed in ("1", "1000"):  # one row per device speed: busy / fragments Mvox/s / end-to-end Mvox/s per thread count
        row = re.search(rf"^\| {speed} \| (.*) \|$", text, re.M)
        assert row is not None, text
        cells = row.group(1).split(" | ")
        assert len(cells) == 2
        for cell in cells:
            busy, fragments, total = cell.split(" / ")
            assert 0 <= int(busy.rstrip("%")) <= 100 and float(fragments) > 0 and float(total) > 0
    assert re.search(r"GPU task alone .*\n  speed 1 Mvox/s: busy \d+\.\d%", text)
    assert "Mvox per CPU second" in text and "cores per GPU for 90% busy" in text
    assert "labels identical in every run: True" in text  # the replayed device output was clustered for real
    assert (tmp_path / "rows.json").exists()
