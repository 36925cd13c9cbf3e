"""Fine-tuning from partly annotated volumes: the loss ignores what was not annotated, crops,
validation and the recorded diameter use only annotated voxels, ``init`` starts from given weights."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError
from pipeline.network.checkpoint import load_checkpoint, open_checkpoint, save_checkpoint
from pipeline.network.loss import LossWeights, discriminative_loss
from pipeline.network.model import ModelSpec, init_model
from pipeline.qc.metrics import evaluate, restrict
from pipeline.train import AugmentConfig, CropSampler, SyntheticSource, TrainConfig, VolumeSource, train
from pipeline.train.config import schedule
from pipeline.train.data import Volume, crop_targets, load_volumes
from pipeline.volume.io import write_zarr

SPEC2D = ModelSpec(ndim=2, downsample=[[2, 2]], base_features=4, embed_dim=3)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(2, 4, 12, 12, generator=g)
    labels = torch.zeros(2, 12, 12, dtype=torch.int64)
    labels[:, 1:5, 1:6] = 1
    labels[:, 6:11, 2:8] = 2
    labels[1, 2:9, 8:11] = 3
    weight = torch.zeros(2, 12, 12)
    weight[:, :, :7] = 1  # the right part was not annotated
    return out, labels, weight


def test_loss_ignores_unannotated_voxels():
    """Labels, foreground targets and network outputs where weight is 0 change neither the loss
    nor its gradient; the same changes where it is 1 do (so the check can fail)."""
    out, labels, weight = _batch()
    fg = (labels > 0).float()

    def loss_and_grad(o, lab, f):
        o = o.clone().requires_grad_(True)
        loss, _ = discriminative_loss(o, lab, LossWeights(), f, weight)
        loss.backward()
        return float(loss.detach()), o.grad

    base, grad = loss_and_grad(out, labels, fg)
    hidden = weight == 0
    out2, labels2, fg2 = out.clone(), labels.clone(), fg.clone()
    out2[hidden.unsqueeze(1).expand_as(out2)] = 7.0
    labels2[hidden] = 9
    fg2[hidden] = 1 - fg2[hidden]
    changed, grad2 = loss_and_grad(out2, labels2, fg2)
    assert changed == pytest.approx(base, abs=1e-6)
    assert torch.all(grad2[hidden.unsqueeze(1).expand_as(grad2)] == 0)
    assert torch.allclose(grad, grad2, atol=1e-6)
    labels3 = labels.clone()
    labels3[~hidden & (labels == 0)] = 9  # an annotated background voxel becomes an object
    assert loss_and_grad(out, labels3, fg)[0] != pytest.approx(base, abs=1e-6)


def test_one_object_split_by_unannotated_voxels_is_not_pushed_apart():
    """A nucleus whose annotated voxels are cut in two by an unannotated band stays one instance:
    its parts are pulled together (variance) and never pushed apart (no distance term)."""
    emb = torch.zeros(1, 3, 4, 12)
    emb[0, 0, :, 6:] = 5.0  # the two parts sit far apart in embedding space
    out = torch.cat([emb, torch.zeros(1, 1, 4, 12)], 1)
    labels = torch.ones(1, 4, 12, dtype=torch.int64)
    weight = torch.ones(1, 4, 12)
    weight[..., 5:7] = 0
    _, parts = discriminative_loss(out, labels, LossWeights(), None, weight)
    assert parts["dist"] == 0 and parts["var"] > 0
    relabelled = labels.clone()
    relabelled[..., 6:] = 2  # as two instances (what connected components of the mask would give)
    _, two = discriminative_loss(out, relabelled, LossWeights(), None, weight)
    assert two["var"] == 0  # each part is tight: only the single-instance view pulls them together


def test_crop_targets_mark_unknown_voxels():
    lab = np.zeros((6, 10), np.int64)
    lab[1:5, 1:5] = 1
    lab[1:5, 5:9] = 2  # touches 1 along x = 4|5
    ann = np.zeros_like(lab, bool)
    ann[:, :5] = True  # object 2 and everything right of x = 4 not annotated
    labels, fg, weight = crop_targets(lab, ann, "interior")
    assert not labels[:, 5:].any() and (labels[:, :5] == lab[:, :5]).all()
    assert not weight[:, 5:].any()
    # object 1's voxels next to the unannotated part: is object 2 there? unknown -> weight 0
    assert not weight[1:5, 4].any() and weight[2, 2] == 1 and weight[0, 4] == 1
    labels, fg, weight = crop_targets(lab, ann, "mask")
    assert (weight[1:5, 4] == 1).all() and fg[1:5, 4].all()


def test_crops_of_partly_annotated_volumes_hold_annotated_voxels():
    spec = ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2, normalisation={"kind": "scale"})
    lab = np.zeros((96, 96), np.int64)
    lab[70:80, 70:82] = 5
    img = (lab > 0).astype(np.float32) * 100
    ann = np.zeros(lab.shape, bool)
    ann[64:90, 64:90] = True  # a small annotated corner of a large volume
    lab[10:20, 10:20] = 7  # outside the annotation: must never reach the loss
    sampler = CropSampler([Volume(img, lab, ann)], spec, (8, 8), AugmentConfig(elastic=1.0), np.random.default_rng(0))
    for _ in range(40):
        _, y, _, w = sampler.sample()
        assert w.any() and 7 not in y


def test_restricted_scores_count_only_annotated_objects():
    gt = np.zeros((20, 20), np.int64)
    gt[2:6, 2:6], gt[10:14, 2:6], gt[2:6, 12:16] = 1, 2, 3
    ann = np.zeros_like(gt, bool)
    ann[:, :9] = True  # objects 1 and 2 annotated; 3 lies outside
    pred = gt.copy()
    pred[2:6, 12:16] = 0
    pred[15:19, 14:18] = 9  # a nucleus nobody annotated: neither right nor wrong
    s = evaluate(pred, gt, annotated=ann)
    assert (s.n_gt, s.n_pred, s.at(0.5)["ap"]) == (2, 2, 1.0)
    pred[10:14, 2:6] = 0  # a missed annotated object counts
    assert evaluate(pred, gt, annotated=ann).at(0.5)["ap"] == pytest.approx(0.5)
    p, g = restrict(pred, gt, None)
    assert p is pred and g is gt


def test_annotated_masks_are_checked(tmp_path):
    img = np.zeros((8, 16, 16), np.uint16)
    write_zarr(tmp_path / "c.zarr", img, name="image")
    write_zarr(tmp_path / "c.zarr", img.astype(np.uint32), name="labels")
    write_zarr(tmp_path / "c.zarr", np.zeros((8, 16, 8), np.uint8), name="narrow")
    write_zarr(tmp_path / "c.zarr", np.zeros((8, 16, 16), np.uint8), name="none")
    src = {"image": tmp_path / "c.zarr", "image_dataset": "image", "labels": tmp_path / "c.zarr",
           "labels_dataset": "labels", "annotated": tmp_path / "c.zarr"}
    with pytest.raises(ConfigError, match="differ in shape"):
        load_volumes((VolumeSource(**src, annotated_dataset="narrow"),))
    with pytest.raises(ConfigError, match="marks no voxel"):
        load_volumes((VolumeSource(**src, annotated_dataset="none"),))


def test_cpu_finetune_schedule():
    cfg = TrainConfig(init="demo", synthetic=SyntheticSource(count=2))
    sch = schedule(cfg, (2, 4, 4), "cpu")
    assert sch.time_limit_s == 600 and sch.output_shape == (16, 48, 48) and sch.batch_size == 2
    assert sch.lr == 5e-4 and sch.val_every == 100
    gpu = schedule(cfg, (2, 4, 4), "cuda")
    assert gpu.time_limit_s is None and gpu.iterations == 1000 and gpu.output_shape == (6, 12, 12)
    fixed = schedule(cfg.model_copy(update={"iterations": 50}), (2, 4, 4), "cpu")
    assert fixed.iterations == 50 and fixed.time_limit_s is None
    scratch = schedule(TrainConfig(synthetic=SyntheticSource(count=2)), (2, 4, 4), "cpu")
    assert (scratch.iterations, scratch.lr, scratch.time_limit_s) == (1000, 1e-3, None)


def test_init_starts_from_the_given_weights(tmp_path):
    """A fine-tune starts from the init checkpoint's weights and architecture, at iteration 0
    (a fresh schedule), and records where it came from; a conflicting `model` is an error."""
    base = init_model(SPEC2D, seed=5)
    save_checkpoint(base, tmp_path / "base.pt", {"trained": True, "iterations": 777})
    common = dict(synthetic=SyntheticSource(count=2, shape=(32, 32)), output_shape=(8, 8), iterations=1,
                  val_every=1, device="cpu")
    out = train(TrainConfig(init=str(tmp_path / "base.pt"), lr=1e-12, out=tmp_path / "ft.pt", **common))
    model, extra = load_checkpoint(out)
    assert model.spec == SPEC2D and extra["iterations"] == 1 and extra["fine_tuned_from"] == str(tmp_path / "base.pt")
    start = base.state_dict()
    assert all(torch.allclose(start[k], v, atol=1e-6) for k, v in model.state_dict().items())
    fresh = init_model(SPEC2D, seed=0).state_dict()
    assert not all(torch.allclose(fresh[k], v, atol=1e-3) for k, v in model.state_dict().items())
    other = ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2, embed_dim=2)
    with pytest.raises(ConfigError, match="remove 'model'"):
        train(TrainConfig(init=str(tmp_path / "base.pt"), model=other, out=tmp_path / "x.pt", **common))
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(init="demo", resume=tmp_path / "base.pt", synthetic=SyntheticSource(count=2))


def test_finetune_on_partly_annotated_files(tmp_path, caplog, monkeypatch):
    """A train config of partly annotated zarr crops: training runs, logs progress lines outside a
    terminal, validates on the annotated voxels and records the diameter of whole annotated objects."""
    from pipeline.volume.synthetic import generate

    model = init_model(SPEC2D, seed=1)
    save_checkpoint(model, tmp_path / "base.pt", {"trained": True})
    data = []
    for k in range(2):
        img, lab = generate(None, seed=k, shape=(64, 64), radius=(4.0, 7.0))
        ann = np.zeros(lab.shape, np.uint8)
        ann[:, :40] = 1
        path = tmp_path / f"crop-{k}.zarr"
        for name, arr in (("image", img), ("labels", lab), ("annotated", ann)):
            write_zarr(path, arr, name=name)
        data.append(VolumeSource(image=path, image_dataset="image", labels=path, labels_dataset="labels",
                                 annotated=path, annotated_dataset="annotated"))
    cfg = TrainConfig(init=str(tmp_path / "base.pt"), data=tuple(data), validation_split=0, output_shape=(8, 8),
                      iterations=6, val_every=3, out=tmp_path / "ft.pt", device="cpu")
    from pipeline.train import loop

    seen: list[object] = []
    orig = loop.validate

    def spy(model, volumes, *a, **k):
        seen.extend(v.annotated for v in volumes)
        return orig(model, volumes, *a, **k)

    monkeypatch.setattr(loop, "EVERY_S", 0.0)
    monkeypatch.setattr(loop, "validate", spy)
    with caplog.at_level(logging.INFO, logger="pipeline.train.loop"):
        train(cfg, progress=True)
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("train: iteration 3 of 6, loss") for m in lines), lines
    assert any(m.startswith("before fine-tuning: validation AP@0.5") for m in lines), lines
    # validated at the start, at iteration 3 and at the end, on both (training) volumes' annotated voxels
    assert all(a is not None and a[:, :40].all() and not a[:, 40:].any() for a in seen) and len(seen) == 6
    info = open_checkpoint(tmp_path / "ft.pt").info
    assert info.iterations == 6 and info.clustering is not None and info.diameter is not None
    assert 6 < info.diameter[1] < 16  # radii 4-7: whole annotated objects, not slivers cut by the mask


def test_finetune_config_example_validates():
    from pathlib import Path

    from pipeline.train import load_train_config

    cfg = load_train_config(Path(__file__).resolve().parents[1] / "configs" / "finetune.yaml")
    assert cfg.init == "demo" and len(cfg.data) == 3 and all(d.annotated is not None for d in cfg.data)
    assert schedule(cfg, (2, 4, 4), "cpu").time_limit_s == 600
