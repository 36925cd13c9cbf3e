"""The stitching experiments of Rumberger et al. (ICCV 2021, supplementary) on synthetic nuclei.

(a) tiles cropped to n * f**l (aligned) vs naive tiles of another size (52 for f**l = 16):
    max embedding difference from one pass over the whole volume, the seam / inside gradient
    ratio (:mod:`pipeline.qc.seams`, supplementary Fig. 1c) and AP of the instance result
    (clustered in one piece with the demo model's calibrated method, so only the embeddings
    differ); for the bundled demo model (step (2, 4, 4)) and a randomly initialised l = 4,
    f = (1, 2, 2) net (step (1, 16, 16); untrained, so no AP);
(b) the same on inputs with gaussian noise and with an elastic deformation (the supplementary
    trained with these augmentations, Fig. 3c/d; here they are applied to the input of the
    same networks: does the input change the seams?);
(c) a constant image through the random net with valid convolutions vs the same weights with
    zero padding ('same' convolutions), tiled and whole: location awareness (Fig. 2).

    python benchmarks/paper_stitching.py [--shape 48 160 160] [--figures benchmarks/figures]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, synthetic_volume
from pipeline.clustering import make_method, remove_small, resolve_params
from pipeline.config import ClusteringConfig
from pipeline.geometry import Box
from pipeline.network.checkpoint import load_checkpoint
from pipeline.network.metadata import CheckpointInfo
from pipeline.network.model import ModelSpec, Normalisation, init_model
from pipeline.network.predict import NormStats, Predictor
from pipeline.plan.blocks import reflect_indices
from pipeline.qc.metrics import evaluate
from pipeline.qc.seams import gradient_profile, predict_tiles, seam_planes, seam_ratios


def reader(volume: np.ndarray):
    """Boxes of an in-memory (C, *S) volume, reflected outside it like the pipeline's input."""
    def read(box: Box) -> np.ndarray:
        idx = [np.asarray(reflect_indices(o, o + n, s)) for o, n, s in zip(box.offset, box.shape, volume.shape[1:])]
        return volume[(slice(None), *np.ix_(*idx))]
    return read


def noisy(raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    lo, hi = np.percentile(raw, [1, 99.8])
    return raw + rng.normal(0, 0.1 * (hi - lo), raw.shape).astype(np.float32)


def elastic(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator, alpha: float = 4.0, sigma: float = 8.0):
    """A smooth random in-plane displacement (up to ~alpha voxels), raw linear, labels nearest."""
    grid = list(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in raw.shape], indexing="ij"))
    for ax in (1, 2):
        d = ndimage.gaussian_filter(rng.normal(size=raw.shape).astype(np.float32), sigma)
        grid[ax] += d / np.abs(d).max() * alpha
    return (ndimage.map_coordinates(raw, grid, order=1, mode="reflect").astype(np.float32),
            ndimage.map_coordinates(labels, grid, order=0, mode="reflect").astype(labels.dtype))


def seams_vs_whole(y: np.ndarray, whole: np.ndarray, tile) -> float:
    """Gradient across the seam planes of the stitched output / the whole pass's across the
    same planes (content-free: 1.0 exactly when the stitched output is the whole pass)."""
    num = den = 0.0
    for axis, t in enumerate(tile):
        for s in seam_planes(y.shape[axis + 1], t):
            num += gradient_profile(y, axis)[s - 1]
            den += gradient_profile(whole, axis)[s - 1]
    return num / den if den else float("nan")


def init_he(model: torch.nn.Module) -> torch.nn.Module:
    """He initialisation (zero biases): the signal keeps its scale through the ReLU layers
    (torch's default initialisation shrinks it ~3x per convolution, so an untrained l = 4 net
    outputs nearly its biases and shows neither content nor seams)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    return model


def instance_ap(y: np.ndarray, labels: np.ndarray, method, min_size: int) -> float:
    seg = remove_small(method.fragments(y[:-1].astype(np.float32), y[-1].astype(np.float32)), min_size)
    return evaluate(seg, labels).at(0.5)["ap"]


def experiment(name, predictor, stats, raw, labels, tiles, method, min_size, rows, keep):
    vol = raw[None].astype(np.float32)
    read, spec = reader(vol), predictor.spec
    region = Box.from_shape(raw.shape)
    predict = lambda x: predictor(x, stats)  # noqa: E731
    whole_tile = tuple(-(-n // s) * s for n, s in zip(raw.shape, spec.step))
    t0 = time.perf_counter()
    whole = predict_tiles(predict, read, region, whole_tile, spec.step, spec.context)
    ap_whole = instance_ap(whole, labels, method, min_size) if method else None
    rows.append({"model": name[0], "input": name[1], "tiles": "whole volume", "max_diff": 0.0, "ratio": None, "vs_whole": None,
                 "ap": ap_whole, "s": time.perf_counter() - t0})
    for kind, tile in tiles:
        t0 = time.perf_counter()
        y = predict_tiles(predict, read, region, tile, spec.step, spec.context)
        seams = seam_ratios(y[:-1], tile, spec.step)
        rows.append({"model": name[0], "input": name[1], "tiles": f"{kind} {list(tile)}",
                     "max_diff": float(np.abs(y[:-1] - whole[:-1]).max()), "ratio": seams["ratio"],
                     "vs_whole": seams_vs_whole(y[:-1], whole[:-1], tile),
                     "ap": instance_ap(y, labels, method, min_size) if method else None, "s": time.perf_counter() - t0})
        keep[(name, kind)] = (y[:-1], tile)
        print(rows[-1], flush=True)


def same_forward(model, x: torch.Tensor) -> torch.Tensor:
    """The U-Net's forward with zero-padded ('same') convolutions: no crops."""
    skips = []
    for j in range(model.spec.levels):
        x = model.down[j](x)
        skips.append(x)
        x = model.pool[j](x)
    x = model.down[-1](x)
    for j in reversed(range(model.spec.levels)):
        x = model.up[j](x)
        x = model.right[j](torch.cat([skips[j], x], dim=1))
    return model.head(x)


def aperiodicity(y: np.ndarray, step) -> float:
    """Location awareness beyond the step phase: max |y(x) - y(x + step)| over the image (0 for
    a shift-equivariant net on a constant image: its output is periodic with period step)."""
    out = 0.0
    for a, s in enumerate(step):
        n = y.shape[a + 1]
        if n > s:
            out = max(out, float(np.abs(y.take(range(s, n), axis=a + 1) - y.take(range(n - s), axis=a + 1)).max()))
    return out


def padding_experiment(model, shape=(8, 128, 128), tile=(8, 64, 64)):
    """Constant image: valid convolutions (tiled with context) vs zero padding (tiles without
    halo, as 'same'-padding networks are tiled), and the zero-padded net on the whole image."""
    spec = model.spec
    const = np.full((1, *shape), 0.5, np.float32)
    pred = Predictor(model, "cpu", "float32", False)
    stats = NormStats(0.0, 1.0)
    valid = predict_tiles(lambda x: pred(x, stats), reader(const), Box.from_shape(shape), tile, spec.step, spec.context)
    padded = copy.deepcopy(model).eval()
    for m in padded.modules():
        if isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3):
            m.padding = (1, 1, 1)
    with torch.inference_mode():
        whole_zero = same_forward(padded, torch.from_numpy(const[None])).numpy()[0]
        tiled_zero = np.zeros_like(whole_zero)
        for y0 in range(0, shape[1], tile[1]):
            for x0 in range(0, shape[2], tile[2]):
                sl = (slice(None), slice(None), slice(y0, y0 + tile[1]), slice(x0, x0 + tile[2]))
                tiled_zero[sl] = same_forward(padded, torch.from_numpy(const[None][(slice(None), *sl)])).numpy()[0]
    emb = slice(0, spec.embed_dim)
    out = {"valid, tiled": valid[emb], "zero padding, whole": whole_zero[emb], "zero padding, tiled": tiled_zero[emb]}
    table = [{"net": k, "aperiodicity": aperiodicity(v, spec.step),
              "max diff from the whole-image pass": float(np.abs(v - (valid[emb] if k.startswith("valid") else whole_zero[emb])).max()),
              "seam ratio": seam_ratios(v, tile, (1, 16, 16))["ratio"] if "tiled" in k else None} for k, v in out.items()]
    return table, out


def figures(keep, padding, folder: Path, shape) -> None:
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(12, 7.2))
    cols = [(("demo model", "clean"), "aligned"), (("demo model", "clean"), "naive"),
            (("random l=4", "clean"), "aligned"), (("random l=4", "clean"), "naive")]
    for i, (key, kind) in enumerate(cols):
        emb, tile = keep[(key, kind)]
        plane = emb[:, shape[0] // 2]
        mag = np.zeros(plane.shape[1:])
        for a in range(2):
            d = (np.diff(plane, axis=a + 1) ** 2).sum(0)
            mag[tuple(slice(0, -1) if j == a else slice(None) for j in range(2))] += d
        ax = fig.add_subplot(2, 4, i + 1)
        ax.imshow(np.sqrt(mag), cmap="magma", vmax=np.percentile(np.sqrt(mag), 99.5))
        ax.set_title(f"{key[0]}, {kind} tiles {tile[1]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax = fig.add_subplot(2, 4, i + 5)
        prof = np.sqrt((np.diff(emb, axis=3) ** 2).sum(0)).mean(axis=(0, 1))
        ax.plot(prof, lw=0.8)
        for s in range(tile[2], shape[2], tile[2]):
            ax.axvline(s - 1, color="red", lw=0.6, ls=":")
        ax.set_xlabel("x (red: tile borders)", fontsize=8)
        ax.set_ylabel("mean |d emb / dx|", fontsize=8)
    fig.suptitle("Embedding gradient magnitude (top: one z plane; bottom: mean per x position)", fontsize=10)
    fig.savefig(folder / "paper_stitching.png", dpi=50, bbox_inches="tight")
    fig = Figure(figsize=(10, 3.2))
    for i, (name, v) in enumerate(padding.items()):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(v[0, v.shape[1] // 2], cmap="coolwarm")
        ax.set_title(f"constant image, {name}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(folder / "padding.png", dpi=50, bbox_inches="tight")


def fmt(v, digits=3):
    return "-" if v is None else (f"{v:.2e}" if isinstance(v, float) and 0 < abs(v) < 1e-2 else f"{v:.{digits}f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 160, 160])
    parser.add_argument("--figures", type=Path, default=Path(__file__).parent / "figures")
    args = parser.parse_args()
    torch.set_num_threads(2)
    shape = tuple(args.shape)
    raw, labels = synthetic_volume(shape, seed=11)
    raw = raw.astype(np.float32)
    rng = np.random.default_rng(5)
    inputs = {"clean": (raw, labels), "gaussian noise": (noisy(raw, rng), labels), "elastic": elastic(raw, labels, rng)}
    demo, info = load_checkpoint("demo")
    params = resolve_params(ClusteringConfig(), CheckpointInfo.model_validate(info))  # the demo model's calibration
    method = make_method(params)
    random_net = init_he(init_model(ModelSpec(downsample=[[1, 2, 2]] * 4, base_features=4, embed_dim=6,
                                      normalisation=Normalisation(kind="percentile")), seed=0))
    nets = [("demo model", Predictor(demo, "cpu", "float32", False), [("aligned", (24, 48, 48)), ("naive", (25, 50, 50))], method),
            ("random l=4", Predictor(random_net, "cpu", "float32", False), [("aligned", (48, 48, 48)), ("naive", (48, 52, 52))], None)]
    rows, keep = [], {}
    for net_name, pred, tiles, meth in nets:
        for input_name, (r, lab) in inputs.items():
            lo, hi = np.percentile(r, [1, 99.8])
            experiment((net_name, input_name), pred, NormStats(float(lo), float(hi - lo)), r, lab, tiles, meth,
                       params.min_size, rows, keep)
    table, padding = padding_experiment(random_net)
    figures(keep, padding, args.figures, shape)
    print(f"\n{machine()}; volume {list(shape)} (synthetic nuclei, seed 11)\n")
    print("| model | input | tiles | max \\|stitched - whole\\| | seam/inside gradient | seam gradient / whole pass's | AP@0.5 | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['input']} | {r['tiles']} | {fmt(r['max_diff'])} | {fmt(r['ratio'])} | {fmt(r['vs_whole'])} | "
              f"{fmt(r['ap'])} | {r['s']:.1f} |")
    print("\n| constant image | max \\|y(x) - y(x + step)\\| | max diff from the whole pass | seam/inside gradient |\n|---|---|---|---|")
    for r in table:
        print(f"| {r['net']} | {fmt(r['aperiodicity'])} | {fmt(r['max diff from the whole-image pass'])} | {fmt(r['seam ratio'])} |")


if __name__ == "__main__":
    main()
