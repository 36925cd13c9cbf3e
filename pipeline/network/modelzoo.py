"""Models out: bioimage.io model packages (model description format 0.5).

:func:`export_bioimageio` writes a folder that the bioimage.io tools (bioimageio.core,
deepImageJ, ilastik) can read: ``rdf.yaml``, the weights twice (a PyTorch state dict of
:class:`~pipeline.network.checkpoint.ExportNet` and a TorchScript trace of it), a test
input and its outputs, a cover and the documentation. The network maps a raw block to
embeddings and a foreground probability; valid convolutions make each output axis
``2 * context`` shorter than the input (a negative size offset), and inputs grow in steps
of ``step``. What a package cannot say in the format (tiles must start at multiples of
``step`` from one origin to stitch exactly; how embeddings are clustered into instances)
is in the documentation and, machine-readable, in ``config.pipeline``.

:func:`~pipeline.network.checkpoint.read_bioimageio` reads such a package back
(``model.checkpoint: .../rdf.yaml``): the spec and metadata from ``config.pipeline``, the
weights from the state dict, each file checked against its SHA-256, so an exported model
segments exactly as the checkpoint did. Nothing here needs the ``bioimageio.spec`` package
(the tests validate with it).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
import yaml

from .checkpoint import BUNDLED, CheckpointError, ExportNet, checkpoint_authors, open_checkpoint
from .metadata import local_author
from .model import ModelSpec, UNet

logger = logging.getLogger(__name__)

FORMAT_VERSION = "0.5.4"
WEIGHTS = "weights.pt"
TORCHSCRIPT = "weights-torchscript.pt"


def exported_network(spec: dict[str, Any]) -> ExportNet:
    """The architecture callable of a package's state-dict weights (``import_from: pipeline.network.modelzoo``)."""
    return ExportNet(UNet(ModelSpec.model_validate(spec)))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file(path: Path) -> dict[str, str]:
    return {"source": path.name, "sha256": _sha256(path)}


def _tensor(out: Path, key: str) -> dict[str, Any]:
    return {"test_tensor": _file(out / f"test_{key}.npy"), "sample_tensor": _file(out / f"sample_{key}.tif")}


def scale_range(x: np.ndarray, low: float, high: float, eps: float = 1e-6) -> np.ndarray:
    """bioimage.io's ``scale_range`` preprocessing with the given percentiles of one sample."""
    lo, hi = np.percentile(x, [low, high])
    return ((x - lo) / (hi - lo + eps)).astype(np.float32)


def _axes(spec: ModelSpec, channels: list[str], reference: str | None = None) -> list[dict[str, Any]]:
    names = "zyx"[-spec.ndim:]
    axes: list[dict[str, Any]] = [{"type": "batch"}, {"type": "channel", "channel_names": channels}]
    for name, step, ctx, mini in zip(names, spec.step, spec.context, spec.input_shape(spec.step), strict=True):
        size: dict[str, Any] = ({"min": mini, "step": step} if reference is None else
                                {"tensor_id": reference, "axis_id": name, "offset": -2 * ctx})
        axes.append({"type": "space", "id": name, "size": size})
    return axes


def _documentation(spec: ModelSpec, info: dict[str, Any], name: str) -> str:
    clustering = info.get("clustering") or {"method": "connectivity"}
    step, ctx = list(spec.step), list(spec.context)
    return f"""# {name}

A valid-convolution U-Net from `pipeline` (exact tile-and-stitch instance segmentation of large 3D
volumes). It maps a raw volume to {spec.embed_dim} embedding channels (discriminative loss,
De Brabandere et al. 2017; margins delta_v {info.get('delta_v', 0.5)}, delta_d {info.get('delta_d', 1.5)}) and a
foreground probability.

## Inputs and outputs
* input `raw`: one channel, axes {"zyx"[-spec.ndim:]}; its size per axis is `{list(spec.input_shape(spec.step))} + n * {step}`.
  Normalisation: the {spec.normalisation.low} and {spec.normalisation.high} percentiles mapped to 0 and 1
  (`scale_range`). `pipeline` takes these percentiles once over the whole volume, never per tile.
* outputs `embeddings` and `foreground`: each axis `2 * context` = `{[2 * c for c in ctx]}` shorter than
  the input (valid convolutions, no padding).

## Exact tiling
The network is shift-equivariant only to shifts of `step = {step}` (Rumberger et al., ICCV 2021).
Tiles stitch exactly (equal to one pass over the whole volume) when every output tile is a multiple
of `step` wide and starts at a multiple of `step` from one origin, and its input carries the full
context `{ctx}` on each side (reflect the volume at its borders). Tiles off that grid show seams.

## From embeddings to instances
Calibrated clustering: `{json.dumps(clustering)}`. Voxels with foreground above
`foreground_threshold` are grouped by their embeddings and split into spatially connected pieces
(objects `step` apart can share embeddings). `pipeline run` with `model.checkpoint: <this folder>/rdf.yaml`
does all of it blockwise on a Dask cluster, merging fragments across blocks.

# Validation
{_validation(info)}
"""


def _validation(info: dict[str, Any]) -> str:
    metrics = info.get("metrics") or {}
    if "ap50" not in metrics:
        return "No validation was recorded with this model (it was not trained with validation volumes)."
    how = f"fine-tuned from `{info['fine_tuned_from']}`, " if info.get("fine_tuned_from") else ""
    return (f"After {info.get('iterations', 0)} training iterations ({how}discriminative loss), on the validation "
            f"volumes of its training run with the calibrated clustering: AP@0.5 {metrics['ap50']:.3f}, average AP "
            f"(IoU 0.5 to 0.95) {metrics.get('avap', float('nan')):.3f} (AP = TP / (TP + FP + FN)).")


def export_bioimageio(checkpoint: str | Path, out: str | Path, name: str | None = None,
                      authors: tuple[str, ...] = (), overwrite: bool = False) -> Path:
    """Write the bioimage.io package of ``checkpoint`` into the folder ``out``; returns ``rdf.yaml``.
    ``authors``: by default those the checkpoint records, else the person exporting
    (:func:`~pipeline.network.metadata.local_author`); never empty."""
    ckpt = open_checkpoint(checkpoint)
    if not authors:
        authors = checkpoint_authors(ckpt) or (local_author(),)
        logger.info("authors: %s (%s; --author names others)", ", ".join(authors),
                    "recorded in the checkpoint" if checkpoint_authors(ckpt) else "who runs the export")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"--out '{out}' is a folder that is not empty; choose another or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    spec, info = ckpt.spec, ckpt.info.model_dump(mode="json", exclude_unset=True)
    name = name or (f"pipeline {checkpoint} nuclei" if str(checkpoint) in BUNDLED else Path(str(checkpoint)).stem)
    net = ExportNet(ckpt.model.float().eval())
    torch.save(net.state_dict(), out / WEIGHTS)

    test_in = test_input(spec)
    x = torch.from_numpy(scale_range(test_in, spec.normalisation.low, spec.normalisation.high)
                         if spec.normalisation.kind == "percentile"
                         else ((test_in - spec.normalisation.offset) / spec.normalisation.scale).astype(np.float32))
    with torch.inference_mode():
        emb, fg = net(x)
    trace(net, x, out / TORCHSCRIPT)
    tensors = {"input": test_in, "embeddings": emb.numpy(), "foreground": fg.numpy()}
    for key, value in tensors.items():
        np.save(out / f"test_{key}.npy", value)
        tifffile.imwrite(out / f"sample_{key}.tif", value)  # the same, as an image for people (FAIR)
    cover(test_in, fg.numpy(), spec, out / "cover.png")
    (out / "README.md").write_text(_documentation(spec, info, name))

    norm = spec.normalisation
    pre = ([{"id": "scale_range", "kwargs": {"axes": list("zyx"[-spec.ndim:]), "min_percentile": norm.low,
                                             "max_percentile": norm.high}}] if norm.kind == "percentile" else
           [{"id": "scale_linear", "kwargs": {"gain": 1 / norm.scale, "offset": -norm.offset / norm.scale}}])
    rdf = {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": f"{spec.ndim}D valid-convolution U-Net: {spec.embed_dim} instance embeddings and a foreground "
                       f"probability; exact tile-and-stitch on a step {list(spec.step)} grid",
        "authors": [{"name": a} for a in authors],
        "cite": [{"text": "Rumberger et al. How Shift Equivariance Impacts Metric Learning for Instance Segmentation. "
                          "ICCV 2021", "url": "https://arxiv.org/abs/2101.05846"},
                 {"text": "De Brabandere et al. Semantic Instance Segmentation with a Discriminative Loss Function. 2017",
                  "url": "https://arxiv.org/abs/1708.02551"}],
        "license": "MIT",
        "tags": ["instance-segmentation", "nuclei", f"{spec.ndim}d", "pytorch", "embeddings", "valid-convolution"],
        "documentation": "README.md",
        "covers": ["cover.png"],
        "inputs": [{"id": "raw", "axes": _axes(spec, ["raw"]), **_tensor(out, "input"),
                    "data": {"type": "float32"}, "preprocessing": pre}],
        "outputs": [
            {"id": "embeddings", "axes": _axes(spec, [f"e{i}" for i in range(spec.embed_dim)], "raw"),
             **_tensor(out, "embeddings"), "data": {"type": "float32"}},
            {"id": "foreground", "axes": _axes(spec, ["foreground"], "raw"), **_tensor(out, "foreground"),
             "data": {"type": "float32", "range": [0.0, 1.0]}},
        ],
        "weights": {
            "pytorch_state_dict": {**_file(out / WEIGHTS), "pytorch_version": torch.__version__.split("+")[0],
                                   "architecture": {"callable": "exported_network", "import_from": "pipeline.network.modelzoo",
                                                    "kwargs": {"spec": spec.model_dump(mode="json")}}},
            "torchscript": {**_file(out / TORCHSCRIPT), "pytorch_version": torch.__version__.split("+")[0],
                            "parent": "pytorch_state_dict"},
        },
        "config": {"pipeline": {"format": "pipeline-unet", "spec": spec.model_dump(mode="json"), "info": info,
                                "step": list(spec.step), "context": list(spec.context),
                                "checkpoint_digest": ckpt.digest}},
    }
    target = out / "rdf.yaml"
    target.write_text(yaml.safe_dump(rdf, sort_keys=False))
    logger.info("exported %s to %s (bioimage.io model %s)", checkpoint, target, FORMAT_VERSION)
    return target


def test_input(spec: ModelSpec, steps: int = 4) -> np.ndarray:
    """A generated nuclei volume of ``steps * step`` output voxels per axis (the package's test input)."""
    from ..volume.synthetic import generate

    shape = spec.input_shape(tuple(steps * s for s in spec.step))
    image, _ = generate(None, seed=0, shape=shape, radius=(5.0, 9.0), density=0.3)
    return image.astype(np.float32)[None, None].repeat(spec.in_channels, axis=1)


def trace(net: ExportNet, x: torch.Tensor, path: Path) -> None:
    """TorchScript by tracing (shapes stay dynamic: checked on a second input size)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated in favour of torch.export; the model zoo reads it
        traced = torch.jit.trace(net, x, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    bigger = torch.randn(1, x.shape[1], *(s + st for s, st in zip(x.shape[2:], net.net.spec.step, strict=True)))
    with torch.inference_mode():
        want, got = net(bigger), traced(bigger)
    if any(a.shape != b.shape or not torch.allclose(a, b, atol=1e-5) for a, b in zip(want, got, strict=True)):
        raise RuntimeError("the TorchScript trace does not reproduce the network on another input size")
    path.write_bytes(buf.getvalue())


def cover(test_in: np.ndarray, fg: np.ndarray, spec: ModelSpec, path: Path) -> None:
    """Centre plane of the test input beside the foreground probability (the package's cover)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx = spec.context
    raw = test_in[0, 0][tuple(slice(c, -c) for c in ctx)]
    plane = (lambda a: a[a.shape[0] // 2]) if spec.ndim == 3 else (lambda a: a)
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    for ax, img, title in zip(axes, (plane(raw), plane(fg[0, 0])), ("input", "foreground"), strict=True):
        ax.imshow(img, cmap="gray")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
