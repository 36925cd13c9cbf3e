"""The README's demo command, end to end with the bundled model (small volume)."""

from __future__ import annotations

import re

from pipeline.cli import main
from pipeline.volume.io import open_array


def test_demo_command(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--size", "24", "96", "96", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    ap50 = float(re.search(r"AP@0.5 ([0-9.]+)", text).group(1))
    seg = open_array(out / "result.zarr" / "segmentation")[...]
    assert seg.shape == (24, 96, 96) and seg.max() > 5
    # the shipped model scores 0.952 here (benchmarks/RESULTS.md: 0.940 on held-out volumes);
    # a broken model, normalisation, stitching or clustering default falls far below
    assert ap50 > 0.85, text
    assert main(["-q", "demo", "--out", str(out)]) == 2  # never overwrites silently
