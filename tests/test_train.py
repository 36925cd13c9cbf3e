from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError
from pipeline.network.checkpoint import load_checkpoint
from pipeline.network.model import ModelSpec, init_model
from pipeline.train import AugmentConfig, CropSampler, SyntheticSource, TrainConfig, train
from pipeline.volume.synthetic import SyntheticSpec, generate


def test_synthetic_is_deterministic_2d_3d():
    a = generate(SyntheticSpec(shape=(16, 48, 48), anisotropy=2.0), seed=3)
    b = generate(SyntheticSpec(shape=(16, 48, 48), anisotropy=2.0), seed=3)
    c = generate(SyntheticSpec(shape=(16, 48, 48), anisotropy=2.0), seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and not np.array_equal(a[1], c[1])
    img, lab = generate(SyntheticSpec(shape=(64, 64), radius=(4.0, 8.0)), seed=1)
    assert img.dtype == np.uint16 and lab.dtype == np.uint32 and lab.max() > 5
    # instances are connected and numbered 1..N
    from scipy import ndimage

    assert set(np.unique(lab)) == set(range(lab.max() + 1))
    for i in range(1, lab.max() + 1):
        assert ndimage.label(lab == i)[1] == 1
    # densely packed: some objects touch
    touching = (lab[:, :-1] != lab[:, 1:]) & (lab[:, :-1] > 0) & (lab[:, 1:] > 0)
    assert touching.any()
    # objects are brighter than background
    assert img[lab > 0].mean() > 2 * img[lab == 0].mean()


def test_crop_sampler_keeps_image_and_labels_aligned():
    """Flips, rotations and elastic deformation move image and labels together."""
    spec = ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2, normalisation={"kind": "scale"})
    lab = np.zeros((40, 40), np.int64)
    lab[5:20, 8:30] = 1
    lab[25:35, 10:15] = 2
    img = (lab > 0).astype(np.float32) * 100
    rng = np.random.default_rng(0)
    sampler = CropSampler([(img, lab)], spec, (8, 8), AugmentConfig(intensity=False, noise=0.0, elastic=1.0), rng)
    ctx = spec.context
    for _ in range(30):
        x, y, fg, w = sampler.sample()
        assert np.array_equal(fg, y > 0) and (w == 1).all()
        assert x.shape == (1, 8 + 2 * ctx[0], 8 + 2 * ctx[1]) and y.shape == (8, 8)
        inner = x[0, ctx[0] : ctx[0] + 8, ctx[1] : ctx[1] + 8]
        assert ((inner > 50) == (y > 0)).mean() > 0.9


def test_training_loss_decreases_and_resumes(tmp_path):
    cfg = TrainConfig(
        model=ModelSpec(ndim=2, downsample=[[2, 2]], base_features=8, embed_dim=3),
        synthetic=SyntheticSource(count=3, shape=(64, 64), radius=(4.0, 7.0)),
        augment=AugmentConfig(elastic=0.0), output_shape=(16, 16), batch_size=4, iterations=60,
        lr=0.01, val_every=60, out=tmp_path / "m.pt", seed=1,
    )
    torch.manual_seed(0)
    from pipeline.train import loop as train_mod

    losses: list[float] = []
    orig = train_mod.discriminative_loss

    def spy(*a, **k):
        loss, parts = orig(*a, **k)
        losses.append(parts["total"])
        return loss, parts

    train_mod.discriminative_loss = spy
    try:
        train(cfg)
    finally:
        train_mod.discriminative_loss = orig
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    _model, extra = load_checkpoint(tmp_path / "m.pt")
    assert extra["iterations"] == 60 and extra["trained"] and "ap50" in extra["metrics"]
    assert (tmp_path / "m.best.pt").exists()
    resumed = train(cfg.model_copy(update={"resume": tmp_path / "m.pt", "iterations": 5, "val_every": 5,
                                           "out": tmp_path / "m2.pt"}))
    assert load_checkpoint(resumed)[1]["iterations"] == 65


@pytest.mark.parametrize("workers", [0, 2])
def test_training_is_deterministic(tmp_path, workers):
    """Same seed and number of data-loading workers: bitwise the same weights; another
    seed: different weights (so the comparison can fail)."""
    kw = dict(model=ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2, embed_dim=2),
              synthetic=SyntheticSource(count=2, shape=(32, 32)), output_shape=(8, 8), iterations=5,
              val_every=5, workers=workers)
    a = train(TrainConfig(**kw, seed=3, out=tmp_path / "a.pt"))
    b = train(TrainConfig(**kw, seed=3, out=tmp_path / "b.pt"))
    c = train(TrainConfig(**kw, seed=4, out=tmp_path / "c.pt"))
    sa, sb, sc = (load_checkpoint(p)[0].state_dict() for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_output_window_must_exceed_step(tmp_path):
    cfg = TrainConfig(model=ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2),
                      synthetic=SyntheticSource(count=2, shape=(32, 32)), output_shape=(2, 4), out=tmp_path / "m.pt")
    with pytest.raises(ConfigError, match="larger than it"):
        train(cfg)


def test_interior_foreground_separates_touching_objects():
    from scipy import ndimage

    from pipeline.train import interior

    lab = np.zeros((6, 10), np.int64)
    lab[1:5, 1:5] = 1
    lab[1:5, 5:9] = 2  # touches 1 along x = 4|5
    fg = interior(lab)
    assert not fg[1:5, 4].any() and not fg[1:5, 5].any()
    assert fg[2, 2] and fg[2, 7] and ndimage.label(fg)[1] == 2
    lab[lab == 2] = 0
    assert np.array_equal(interior(lab), lab > 0)  # lone objects keep every voxel


def test_time_limit_stops_training_and_saves(tmp_path):
    """A walltime-bound run stops at its time budget with a validated checkpoint."""
    cfg = TrainConfig(model=ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2, embed_dim=2),
                      synthetic=SyntheticSource(count=2, shape=(32, 32)), output_shape=(8, 8),
                      iterations=1_000_000, val_every=1_000_000, time_limit_s=1.0, out=tmp_path / "m.pt")
    extra = load_checkpoint(train(cfg))[1]
    assert 0 < extra["iterations"] < 1_000_000 and "ap50" in extra["metrics"]


def test_a_time_limit_cuts_the_calibration_grid_and_records_who_trained(tmp_path, monkeypatch, caplog):
    """The full grid at the end of a time-limited run stops before the limit (the quick candidates'
    keys first, and never cut, even past the limit; progress logged); uncut, the order of scoring does not change the winner (the
    earliest best in grid order); the checkpoint records who trained it."""
    import importlib
    import logging

    calibrate = importlib.import_module("pipeline.train.calibrate")  # the module (the package exports a function so named)
    monkeypatch.setattr("pipeline.train.loop.local_author", lambda: "Ada Lovelace")
    monkeypatch.setattr(calibrate, "EVERY_S", 0.0)
    orig = calibrate.fragments

    def slow(*a, **k):  # 0.2 s per clustering key and volume: the grid's 50 keys take 20 s
        time.sleep(0.2)
        return orig(*a, **k)

    monkeypatch.setattr(calibrate, "fragments", slow)
    spec = ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2, embed_dim=2)
    cfg = TrainConfig(model=spec, synthetic=SyntheticSource(count=2, shape=(32, 32)), output_shape=(8, 8),
                      iterations=1_000_000, val_every=1_000_000, time_limit_s=4.0, out=tmp_path / "m.pt")
    t0 = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="pipeline.train"):
        extra = load_checkpoint(train(cfg))[1]
    took = time.perf_counter() - t0
    assert "calibration cut at the time limit" in caplog.text and "calibrating:" in caplog.text
    assert took < 4.0 + 2.0, took  # the limit holds, give or take one key and the checkpoint
    assert extra["authors"] == ["Ada Lovelace"] and "clustering" in extra
    monkeypatch.setattr(calibrate, "fragments", orig)
    model = load_checkpoint(tmp_path / "m.pt")[0]
    volumes = calibrate.synthetic_volumes(SyntheticSource(count=3, shape=(32, 32)))
    ours = calibrate.validate(model, volumes, 1.5, "cpu")
    timing: dict[str, float] = {}
    late = calibrate.validate(model, volumes, 1.5, "cpu", full=False, timing=timing, deadline=time.perf_counter() - 1)
    assert {"per_key_connectivity", "per_key_agglomeration"} <= set(timing)  # past the limit: both quick keys
    assert late == calibrate.validate(model, volumes, 1.5, "cpu", full=False)
    keyed = calibrate._keyed
    monkeypatch.setattr(calibrate, "_keyed", lambda grid, first: keyed(grid, []))  # plain grid order
    assert calibrate.validate(model, volumes, 1.5, "cpu") == ours


def test_calibrate_stores_the_best_clustering(tmp_path):
    """`pipeline calibrate` scores the clustering grid on the validation volume and stores the
    winner; re-scoring the stored parameters reproduces the stored AP."""
    import yaml

    from pipeline.cli import main
    from pipeline.clustering import METHODS, ClusteringParams, fragments, remove_small
    from pipeline.network.predict import Predictor, predict_whole
    from pipeline.qc.metrics import evaluate
    from pipeline.train import norm_stats, synthetic_volumes

    data = {"model": {"ndim": 2, "downsample": [[2, 2]], "base_features": 4, "embed_dim": 2},
            "synthetic": {"count": 2, "shape": [48, 48], "radius": [4.0, 7.0]}, "output_shape": [8, 8],
            "iterations": 20, "val_every": 20, "out": str(tmp_path / "m.pt")}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(data))
    assert main(["--quiet", "train", str(tmp_path / "t.yaml")]) == 0
    assert main(["calibrate", str(tmp_path / "t.yaml"), "--checkpoint", str(tmp_path / "m.pt"),
                 "--out", str(tmp_path / "c.pt")]) == 0
    model, extra = load_checkpoint(tmp_path / "c.pt")
    c = extra["clustering"]
    assert c["method"] in METHODS and extra["iterations"] == 20
    img, lab, _ = synthetic_volumes(SyntheticSource(count=2, shape=(48, 48), radius=(4.0, 7.0)))[-1]
    out = predict_whole(Predictor(model, device="cpu"), img[None], norm_stats(img, model.spec))
    seg = remove_small(fragments(out[:-1], out[-1], ClusteringParams.from_dict(c)), c["min_size"])
    assert evaluate(seg, lab).at(0.5)["ap"] == pytest.approx(extra["metrics"]["ap50"])


def test_calibration_by_worst_volume_keeps_the_setting_no_volume_fails(monkeypatch):
    """``calibrate_by: worst`` ranks a clustering setting by the volume it does worst on, so a dense
    volume of 20 objects cannot outvote one of 2 (as synthetic looks outvoted the real BBBC050 volume,
    RESULTS.md); ``pooled`` keeps the most objects right overall. A stand-in clustering loses objects by
    foreground threshold: at 0.95 the 2-object volume loses one, at 0.9 the 20-object volume loses 4."""
    import importlib

    from pipeline.train.data import Volume

    calibrate = importlib.import_module("pipeline.train.calibrate")  # the module, not the function
    assert calibrate.ranking(0.95, 0.5, [1.0, 0.5], 0, "worst") < calibrate.ranking(0.8, 0.5, [0.8, 1.0], 1, "worst")
    assert calibrate.ranking(0.95, 0.5, [1.0, 0.5], 0) > calibrate.ranking(0.8, 0.5, [0.8, 1.0], 1)

    def squares(n: int) -> np.ndarray:
        labels = np.zeros((8, 8 * n), np.uint32)
        for i in range(n):
            labels[2:6, 8 * i + 2 : 8 * i + 6] = i + 1
        return labels

    rng = np.random.default_rng(0)
    volumes = [Volume(rng.random((8, 8 * n), np.float32), squares(n)) for n in (20, 2)]
    lost = {0.95: (0, 1), 0.9: (4, 0)}  # objects lost per volume at a threshold; 10 and 1 at any other

    def stand_in(emb, fg, params):
        which = int(fg.shape[-1] == 16)
        keep = squares(len(np.unique(volumes[which].labels)) - 1)
        drop = lost.get(params.foreground_threshold, (10, 1))[which]
        return np.where(keep > keep.max() - drop, 0, keep)

    monkeypatch.setattr(calibrate, "predict_whole", lambda pred, image, stats: np.zeros((2, *image.shape[1:]), np.float32))
    monkeypatch.setattr(calibrate, "fragments", stand_in)
    model = init_model(ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2, embed_dim=2))
    pooled = calibrate.validate(model, volumes, 1.5, "cpu")
    worst = calibrate.validate(model, volumes, 1.5, "cpu", by="worst")
    assert pooled["clustering"]["foreground_threshold"] == 0.95 and pooled["worst_ap50"] == pytest.approx(0.5)
    assert worst["clustering"]["foreground_threshold"] == 0.9 and worst["worst_ap50"] == pytest.approx(0.8)
    assert (worst["ap50"], pooled["ap50"]) == pytest.approx((18 / 22, 21 / 22))  # worst gives up pooled AP


def test_data_loading_workers_use_one_thread():
    """Workers limit numpy's BLAS and torch to one thread each (N workers x all-core pools
    oversubscribe the CPU)."""
    from threadpoolctl import threadpool_info

    from pipeline.train import batches

    class Probe:
        rng = np.random.default_rng(0)

        def sample(self):
            n = max([i["num_threads"] for i in threadpool_info()] + [torch.get_num_threads()])
            return np.array([n]), np.array([0]), np.array([0]), np.array([1.0])

    x, *_ = next(batches(Probe(), 2, 1, seed=0))
    assert x.tolist() == [[1], [1]]


def test_full_calibration_grid_only_at_the_end(tmp_path, monkeypatch):
    from pipeline import train as train_mod
    from pipeline.train import loop

    calls: list[bool] = []
    orig = train_mod.validate

    def spy(*a, full=True, **k):
        calls.append(full)
        return orig(*a, full=full, **k)

    monkeypatch.setattr(loop, "validate", spy)
    train(TrainConfig(model=ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2, embed_dim=2),
                      synthetic=SyntheticSource(count=2, shape=(32, 32)), output_shape=(8, 8), iterations=10,
                      val_every=5, out=tmp_path / "m.pt"))
    assert calls == [False, True]
    calls.clear()  # calibrate: false keeps the quick candidates at the end too
    train(TrainConfig(model=ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2, embed_dim=2),
                      synthetic=SyntheticSource(count=2, shape=(32, 32)), output_shape=(8, 8), iterations=10,
                      val_every=5, calibrate=False, out=tmp_path / "q.pt"))
    assert calls == [False, False]
    assert len(train_mod.clustering_grid(1.5, 100.0, full=False)) == 2
    assert len(train_mod.clustering_grid(1.5, 100.0)) == 5 * (4 + 2 * 3) * 3


# a few seconds on 2 CPU cores: one iteration of a 2-feature net on two small generated volumes
TINY_DEMO = ["iterations=1", "val_every=1", "workers=0", "batch_size=1", "synthetic.count=2",
             "synthetic.shape=[16,40,40]", "model.base_features=2", "output_shape=[4,8,8]"]


def test_train_demo_config_runs_in_a_fresh_folder_and_never_overwrites(tmp_path, monkeypatch, capsys):
    """configs/train_demo.yaml needs nothing outside the project (generated data), writes into the
    current folder, and replaces an existing checkpoint (or writes into the package) only with
    --overwrite: refused with one line, exit 2, before any training."""
    import shutil
    from pathlib import Path

    import pipeline
    from pipeline.cli import main

    shutil.copy(Path(__file__).resolve().parents[1] / "configs" / "train_demo.yaml", tmp_path / "t.yaml")
    monkeypatch.chdir(tmp_path)
    tiny = [a for s in TINY_DEMO for a in ("--set", s)]
    assert main(["-q", "train", "t.yaml", *tiny]) == 0
    out = tmp_path / "pipeline-demo" / "trained.pt"
    first = out.read_bytes()
    assert load_checkpoint(out)[1]["iterations"] == 1
    capsys.readouterr()
    (tmp_path / "pipeline-demo" / "new.best.pt").write_bytes(b"")  # no new.pt, but its .best.pt companion
    for argv in (["train", "t.yaml", *tiny],
                 ["calibrate", "t.yaml", "--checkpoint", str(out), "--out", str(out), *tiny],
                 ["train", "t.yaml", *tiny, "--set", "out=pipeline-demo/new.pt"]):
        assert main(["-q", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "already exists" in err and "--overwrite" in err, err
    assert out.read_bytes() == first and not (tmp_path / "pipeline-demo" / "new.pt").exists()
    package_out = Path(pipeline.__file__).parent / "data" / "never-written.pt"
    assert main(["-q", "train", "t.yaml", "--set", f"out={package_out}", *tiny]) == 2
    assert "inside the installed package" in capsys.readouterr().err and not package_out.exists()
    assert main(["-q", "train", "t.yaml", "--overwrite", "--set", "seed=1", *tiny]) == 0
    assert out.read_bytes() != first
