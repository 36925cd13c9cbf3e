from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from pipeline.cli import main
from pipeline.config import ConfigError, apply_overrides, load_config, validate_config
from pipeline.volume.io import open_array, write_zarr

from .conftest import make_checkpoint, random_volume

BASE = {"input": {"path": "in.zarr", "dataset": "raw"}, "output": {"path": "out.zarr"}}


def test_defaults_and_stable_keys():
    cfg = validate_config({
        "input": {"path": "volume.zarr", "dataset": "raw"},
        "output": {"path": "result.zarr"},
        "model": {"checkpoint": "model.pt"},
        "blocks": {"write_shape": [32, 64, 64]},
        "cluster": {"kind": "local", "n_workers": 2, "threads_per_worker": 1},
    })
    assert cfg.blocks.write_shape == (32, 64, 64)
    assert validate_config(BASE).model.checkpoint == "demo"
    with pytest.raises(ValidationError):
        cfg.blocks.write_shape = (1, 1, 1)  # frozen


@pytest.mark.parametrize("data,match", [
    ({**BASE, "blocks": {"write_shap": [8, 8, 8]}}, "unknown key 'blocks.write_shap': did you mean 'write_shape'"),
    ({**BASE, "clusterr": {}}, "unknown key 'clusterr': did you mean 'cluster'"),
    ({**BASE, "cluster": {"kind": "local", "n_worker": 2}}, "did you mean 'n_workers'"),
    ({**BASE, "blocks": {"write_shape": [8, -8, 8]}}, r"blocks.write_shape.1: Input should be greater than 0 \(got -8\)"),
    ({**BASE, "cluster": {"kind": "cloud"}}, "cluster"),
    ({"output": {"path": "x"}}, "missing required key 'input'"),
])
def test_bad_config_messages(data, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(data)


def test_cli_train_misspelt_key(tmp_path, capsys):
    """The training config gets the run config's one-line did-you-mean errors."""
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump({"synthetic": {"count": 2}, "batchsize": 4, "out": str(tmp_path / "m.pt")}))
    assert main(["-q", "train", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: invalid training config '{p}': unknown key 'batchsize': did you mean 'batch_size'?"
    assert not (tmp_path / "m.pt").exists()


def test_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(BASE))
    cfg = load_config(p, ["blocks.write_shape=[16,32,32]", "cluster.kind=serial", "output.overwrite=true"])
    assert cfg.blocks.write_shape == (16, 32, 32) and cfg.cluster.kind == "serial" and cfg.output.overwrite
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        apply_overrides(BASE, ["blocks.write_shape"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def _setup(tmp_path, shape=(12, 40, 40)):
    make_checkpoint(tmp_path / "m.pt", downsample=[[1, 2, 2], [2, 2, 2]])
    write_zarr(tmp_path / "in.zarr", random_volume(shape), chunks=(4, 16, 16), name="raw")
    cfg = {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
           "output": {"path": str(tmp_path / "out.zarr")},
           "model": {"checkpoint": str(tmp_path / "m.pt")},
           "blocks": {"write_shape": [4, 16, 16]}, "cluster": {"kind": "serial"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "c.yaml"


def test_cli_plan(tmp_path, capsys):
    cfg = _setup(tmp_path)
    assert main(["plan", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "blocks" in out and "[3, 3, 3]" in out and "redundancy" in out and "memory_per_block_mib" in out
    assert "input_over_read" in out
    assert "block_order" in out and "cache_needed_mib" in out
    assert f"label_image           {tmp_path / 'out.zarr' / 'labels' / 'segmentation'} (NGFF 0.5" in out
    assert "voxel_size            unknown" in out and "run_would_refuse      nothing" in out
    assert not (tmp_path / "out.zarr").exists()  # plan computes nothing
    (tmp_path / "out.zarr").mkdir()  # what run would refuse, plan says (and still exits 0)
    assert main(["plan", str(cfg)]) == 0
    assert "out.zarr' already exists; choose another path or pass --overwrite" in capsys.readouterr().out
    (tmp_path / "out.zarr").rmdir()
    assert main(["plan", str(cfg), "--set", "blocks.write_shape=[4,15,16]"]) == 2
    err = capsys.readouterr().err
    assert "axis 1: 15 -> use 12 or 16" in err and "Traceback" not in err


def test_automatic_blocks_sized_for_the_gpu(tmp_path, capsys):
    """Automatic write shapes: the cheapest (pipeline.plan.cost) whose block fits a quarter of a CPU
    worker's memory, or whose batch of blocks fits half the GPU's (here a GPU named by size, as
    when planning on a login node): more memory, larger blocks, never over the limit."""
    from pipeline.plan.prepare import prepare
    from pipeline.plan.sizing import block_bytes

    cfg = yaml.safe_load(_setup(tmp_path, shape=(12, 40, 40)).read_text())
    import zarr

    zarr.open_group(str(tmp_path / "big.zarr"), mode="w").create_array("raw", shape=(2048, 2048, 2048),
                                                                       chunks=(256, 256, 256), dtype="uint16")  # empty: only its shape matters
    cfg["input"] = {"path": str(tmp_path / "big.zarr"), "dataset": "raw"}
    cfg["blocks"] = {}
    cfg["model"]["device"] = "cpu"
    cfg["cluster"] = {"kind": "local", "n_workers": 2, "memory_limit": "4GiB"}
    cpu = prepare(cfg)
    assert block_bytes(cpu.spec, cpu.plan.write_shape) <= 2**30
    assert math.prod(cpu.plan.write_shape) > 64**3
    sizes = {}
    for gib, batch in ((80, 1), (80, 4), (16, 1)):
        run = prepare({**cfg, "model": {**cfg["model"], "batch_size": batch},
                       "blocks": {"gpu_memory_gib": gib}})
        w = run.plan.write_shape
        assert math.prod(w) > math.prod(cpu.plan.write_shape) and block_bytes(run.spec, w) * batch <= gib * 2**30 / 2
        sizes[gib, batch] = math.prod(w)
    assert sizes[80, 1] > sizes[80, 4] and sizes[80, 1] > sizes[16, 1]
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({**cfg, "blocks": {"gpu_memory_gib": 80}}))
    assert main(["plan", str(tmp_path / "g.yaml")]) == 0
    assert "GPU with 80 GiB" in capsys.readouterr().out


def test_cli_predict_and_refuse_overwrite(tmp_path, capsys):
    cfg = _setup(tmp_path)
    assert main(["-q", "predict", str(cfg)]) == 0
    emb = open_array(tmp_path / "out.zarr" / "embeddings")
    assert emb.shape == (3, 12, 40, 40)
    before = emb[...]
    assert main(["-q", "predict", str(cfg)]) == 2
    assert "already exists" in capsys.readouterr().err
    np.testing.assert_array_equal(open_array(tmp_path / "out.zarr" / "embeddings")[...], before)
    assert main(["-q", "predict", str(cfg), "--overwrite"]) == 0


def test_cli_model_init_info(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"ndim": 2, "downsample": [[2, 2]], "base_features": 4, "embed_dim": 4}))
    assert main(["model", "init", str(spec), "--out", str(tmp_path / "m.pt")]) == 0
    capsys.readouterr()
    assert main(["model", "info", str(tmp_path / "m.pt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == [2, 2] and info["context"] == [8, 8] and info["out_channels"] == 5
    assert main(["model", "info", "demo", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ndim"] == 3 and info["trained"] is True
    assert main(["model", "info", str(tmp_path / "nope.pt")]) == 2


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, check=True)
    assert "predict" in out.stdout and "run" in out.stdout and "train" in out.stdout


def test_cli_evaluate(tmp_path, capsys):
    gt = np.zeros((4, 10, 10), np.uint32)
    gt[:, 1:4, 1:4] = 1
    gt[:, 5:9, 5:9] = 2
    pred = gt.copy()
    pred[:, 5:9, 7:9] = 3  # one split
    write_zarr(tmp_path / "gt.zarr", gt, chunks=(2, 10, 10))
    write_zarr(tmp_path / "p.zarr", pred, chunks=(2, 10, 10), name="segmentation")
    assert main(["evaluate", "--pred", str(tmp_path / "p.zarr"), "--gt", str(tmp_path / "gt.zarr"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ap50"] == pytest.approx(2 / 3) and res["false_splits"] == 1 and res["n_pred"] == 3
    assert main(["evaluate", "--pred", str(tmp_path / "p.zarr"), "--gt", str(tmp_path / "gt.zarr")]) == 0
    assert "avAP" in capsys.readouterr().out


def test_shipped_configs_validate():
    """configs/ and deploy/ examples stay true to the config models."""
    from pathlib import Path

    from pipeline.train import load_train_config

    root = Path(__file__).resolve().parents[1]
    assert load_config(root / "configs" / "example.yaml").cluster.kind == "local"
    assert load_config(root / "configs" / "local-cuda.yaml").cluster.kind == "local-cuda"
    section = yaml.safe_load((root / "deploy" / "jobqueue.yaml").read_text())
    assert validate_config({**BASE, **section}).cluster.kind == "slurm"
    assert load_train_config(root / "configs" / "train_demo.yaml").foreground_target == "interior"


def test_clustering_params_precedence():
    """Config value > value calibrated for that method in the checkpoint > loss-margin default;
    values calibrated for another method are not used."""
    from pipeline.run import clustering_params

    base = {"input": {"path": "x.zarr"}, "output": {"path": "y.zarr"}}
    cal = {"delta_v": 0.5, "delta_d": 1.5, "clustering": {
        "method": "agglomeration", "foreground_threshold": 0.7, "threshold": 0.3, "merge_distance": 2.5,
        "min_size": 150}}
    p = clustering_params(validate_config(base), cal)
    assert (p.method, p.foreground_threshold, p.threshold, p.merge_distance, p.min_size) == (
        "agglomeration", 0.7, 0.3, 2.5, 150)
    p = clustering_params(validate_config({**base, "clustering": {"merge_distance": 2.0, "min_size": 0}}), cal)
    assert (p.method, p.merge_distance, p.min_size, p.threshold) == ("agglomeration", 2.0, 0, 0.3)
    # asking for another method: its own defaults, not the agglomeration values
    p = clustering_params(validate_config({**base, "clustering": {"method": "connectivity"}}), cal)
    assert (p.method, p.foreground_threshold, p.threshold, p.min_size) == ("connectivity", 0.5, 1.5, 0)
    # uncalibrated checkpoints (and those calibrated before methods were recorded): connectivity
    p = clustering_params(validate_config(base), {"delta_d": 1.5})
    assert (p.method, p.threshold, p.bandwidth) == ("connectivity", 1.5, 1.0)
    p = clustering_params(validate_config(base), {"clustering": {"threshold": 1.875, "foreground_threshold": 0.6}})
    assert (p.method, p.threshold, p.foreground_threshold) == ("connectivity", 1.875, 0.6)
    p = clustering_params(validate_config({**base, "clustering": {"method": "agglomeration"}}), {"delta_d": 1.5})
    assert (p.threshold, p.merge_distance) == (pytest.approx(0.3), pytest.approx(2.0))
    assert (p.grow_threshold, p.grow_distance) == (0.5, 3.0)
    p = clustering_params(validate_config({**base, "clustering": {"foreground_threshold": 0.4, "grow_distance": 0}}),
                          cal)
    assert (p.grow_threshold, p.grow_distance) == (0.4, 0.0)


def test_automatic_blocks_per_task_batches_small_blocks_within_memory():
    from pipeline.plan.sizing import auto_blocks_per_task

    assert auto_blocks_per_task(100, 2, 1 << 20) == 3  # >= 16 tasks per worker
    assert auto_blocks_per_task(10**5, 2, 1 << 20) == 512  # <= 512 MiB of network output per task
    assert auto_blocks_per_task(10**4, 2, 400 << 20) == 1
    assert auto_blocks_per_task(10, 2, 1 << 20, batch_size=4) == 4  # a forward pass's blocks


def test_version_and_yaml_errors_with_line_and_column(tmp_path, capsys):
    import pipeline

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"pipeline {pipeline.__version__}"
    bad = tmp_path / "bad.yaml"
    bad.write_text("input:\n  path: a.zarr\noutput: {path: [b.zarr\n")
    assert main(["plan", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML: line 4, column 1" in err and len(err.strip().splitlines()) == 1, err


def test_quiet_run_on_a_cluster_logs_progress_not_distributed(tmp_path):
    """What a SLURM log of `pipeline -q run` shows: the run's own lines and a progress line per
    stage, no `distributed` INFO noise (-v brings it back)."""
    import subprocess
    import sys

    cfg = _setup(tmp_path)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "run", str(cfg), "--set", "cluster.kind=local",
                        "--set", "cluster.n_workers=1"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "INFO distributed" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "pipeline.progress: fragments: " in r.stderr and "(100%)" in r.stderr


def test_planned_workers_per_cluster_kind():
    from pipeline.config import validate_config
    from pipeline.plan.sizing import UNKNOWN_WORKERS, planned_workers

    def workers(cluster):
        return planned_workers(validate_config({"input": {"path": "x"}, "output": {"path": "y"}, "cluster": cluster}).cluster)

    assert workers({"kind": "serial"}) == 1 and workers({"kind": "local", "n_workers": 3}) == 3
    assert workers({"kind": "slurm", "n_workers": 8, "processes": 2, "cores": 2}) == 8
    assert workers({"kind": "pbs", "n_workers": 7, "processes": 2, "cores": 4}) == 8  # whole jobs
    assert workers({"kind": "lsf", "adaptive": {"maximum": 10}}) == 10
    assert workers({"kind": "local-cuda", "devices": [0, 1]}) == 2
    assert workers({"kind": "address", "address": "tcp://h:8786"}) == UNKNOWN_WORKERS
