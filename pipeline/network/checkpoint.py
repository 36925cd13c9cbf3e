"""The checkpoint file format, read and written, its metadata validated.

``model.checkpoint`` also reads a bioimage.io package this project exported (its
``rdf.yaml``, written by :mod:`pipeline.network.modelzoo`; :func:`read_bioimageio`).

A checkpoint is a single ``torch.save`` file holding only tensors and JSON strings:
the architecture (:class:`~pipeline.network.model.ModelSpec`), the weights, and the metadata
(``extra``) that training and calibration record, typed as
:class:`~pipeline.network.metadata.CheckpointInfo`. Files are read with
``torch.load(weights_only=True)``, which cannot execute code from the file.

:func:`open_checkpoint` reads a file once and returns the model, its metadata and the
digest of the same bytes. :func:`load_checkpoint` is the older ``(model, dict)`` view.
Unknown top-level metadata keys are kept (other tools and newer versions may record
more); unknown keys in the ``clustering`` section are errors, because a misspelt
parameter would silently fall back to a default and change every segmentation.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from torch import nn

from ..config.validation import describe_errors
from ..errors import UsageError
from .metadata import CheckpointInfo
from .model import ModelSpec, UNet

logger = logging.getLogger(__name__)

FORMAT = "pipeline-unet"
FORMAT_VERSION = 1

DEMO_CHECKPOINT = Path(__file__).parents[1] / "data" / "demo.pt"
# the bundled models by name: the default (trained on one look of nuclei) and the CPU-trained generalist
# (every generated look and BBBC050-8; opt-in until it is at least as good on every look and on BBBC050-16,
# benchmarks/RESULTS.md)
BUNDLED = {"demo": DEMO_CHECKPOINT, "generalist": DEMO_CHECKPOINT.with_name("generalist.pt")}
_FIX_METADATA = "correct it in the checkpoint's 'extra' JSON, or re-create the checkpoint with 'pipeline train'"


class CheckpointError(UsageError):
    """A checkpoint that cannot be read or does not fit the data."""


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint read once: the file is read once and hashed from the same bytes."""

    path: Path  # resolved, absolute ("demo": the bundled file)
    model: UNet
    info: CheckpointInfo
    digest: str  # the same value as checkpoint_digest(path)

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec


DEMO_AUTHORS = ("the pipeline's developers",)  # the bundled demo model records none


def checkpoint_authors(ck: Checkpoint) -> tuple[str, ...]:
    """The authors a checkpoint records (a bundled model: :data:`DEMO_AUTHORS`); () if none."""
    return ck.info.authors or (DEMO_AUTHORS if ck.path in BUNDLED.values() else ())


def resolve_checkpoint(path: str | Path) -> Path:
    """``demo`` and ``generalist`` name the bundled models (:data:`BUNDLED`); anything else is a file path."""
    return BUNDLED.get(str(path), Path(path))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 of the checkpoint file (first 16 hex digits), for provenance and resume; of a
    bioimage.io package: of its description and weights."""
    if is_package(path):
        return open_checkpoint(path).digest
    h = hashlib.sha256()
    with open(resolve_checkpoint(path), "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _validate_info(extra: CheckpointInfo | dict[str, Any], where: str, fix: str) -> CheckpointInfo:
    """``extra`` as :class:`CheckpointInfo`, or a one-line :class:`CheckpointError`."""
    if isinstance(extra, CheckpointInfo):
        return extra
    try:
        return CheckpointInfo.model_validate(extra)
    except ValidationError as exc:
        raise CheckpointError(f"{where} has invalid metadata: {describe_errors(CheckpointInfo, exc)} ({fix})") from None


def save_checkpoint(model: UNet, path: str | Path, extra: CheckpointInfo | dict[str, Any] | None = None) -> Path:
    """Write weights, spec and metadata (as JSON) to one file readable with ``weights_only``.

    ``extra`` is validated as :class:`CheckpointInfo`; a dict is written as given (its keys
    in its own order), a :class:`CheckpointInfo` as the fields that were set.
    """
    path = Path(path)
    if extra is None:
        extra = {}
    info = _validate_info(extra, f"checkpoint '{path}'", "fix the metadata given to save_checkpoint")
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "spec": model.spec.model_dump_json(),
        "extra": info.to_json() if isinstance(extra, CheckpointInfo) else json.dumps(extra),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _read(path: str | Path) -> tuple[Path, bytes, UNet, dict[str, Any]]:
    """Resolved path, file bytes, model (eval mode) and raw metadata of a checkpoint."""
    p = resolve_checkpoint(path)
    if not p.is_file():
        raise CheckpointError(
            f"model.checkpoint: no file at '{p}' (give the path of a .pt file made by "
            "'pipeline model init' or 'pipeline train', a bioimage.io package's rdf.yaml, or 'demo' or "
            "'generalist' for a bundled model)"
        )
    if is_package(p):
        data, model, extra = read_bioimageio(p)
        return p, data, model, extra
    data = p.read_bytes()
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means a bad file
        raise CheckpointError(
            f"model.checkpoint '{p}' is not a readable checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); recreate it with 'pipeline model init' or 'pipeline train'"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"model.checkpoint '{p}' is not a {FORMAT} checkpoint (missing 'format' entry)"
        )
    if payload.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"model.checkpoint '{p}' has format version {payload.get('version')}, this "
            f"package reads version {FORMAT_VERSION}"
        )
    try:
        spec = ModelSpec.model_validate_json(payload["spec"])
        model = UNet(spec)
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"model.checkpoint '{p}': spec and weights do not fit ({str(exc).splitlines()[0][:200]})"
        ) from None
    model.eval()
    try:
        extra = json.loads(payload.get("extra", "{}"))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"model.checkpoint '{p}': its metadata ('extra') is not JSON ({exc}); "
                              "recreate it with 'pipeline model init' or 'pipeline train'") from None
    if not isinstance(extra, dict):
        raise CheckpointError(f"model.checkpoint '{p}': its metadata ('extra') must be a JSON object, "
                              f"got {type(extra).__name__}; recreate it with 'pipeline model init' or 'pipeline train'")
    return p, data, model, extra


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint once: model (eval mode), typed metadata and digest of the same bytes."""
    p, data, model, extra = _read(path)
    info = _validate_info(extra, f"model.checkpoint '{p}'", _FIX_METADATA)
    ckpt = Checkpoint(path=p.resolve(), model=model, info=info, digest=_digest(data))
    logger.debug("opened checkpoint %s (digest %s)", ckpt.path, ckpt.digest)
    return ckpt


def load_checkpoint(path: str | Path) -> tuple[UNet, dict[str, Any]]:
    """Load a checkpoint without executing code from it. Returns ``(model, extra)``, the
    metadata as the dict stored in the file (validated as :class:`CheckpointInfo`)."""
    p, _, model, extra = _read(path)
    _validate_info(extra, f"model.checkpoint '{p}'", _FIX_METADATA)
    return model, extra


class ExportNet(nn.Module):
    """The exported network: normalised input ``(B, C, *S)`` -> ``(embeddings, foreground
    probability)``, the U-Net's last channel through a sigmoid. A bioimage.io package's
    weights are its state dict (:func:`read_bioimageio`)."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.net(x)
        return y[:, :-1], torch.sigmoid(y[:, -1:])


def is_package(path: str | Path) -> bool:
    """Whether ``model.checkpoint`` names a bioimage.io package description (``rdf.yaml``, ``*.bioimageio.yaml``)."""
    return str(path).endswith((".yaml", ".yml"))


def read_bioimageio(path: Path) -> tuple[bytes, UNet, dict[str, Any]]:
    """``(digest bytes, model, metadata)`` of a package :func:`~pipeline.network.modelzoo.export_bioimageio` wrote (or any
    package describing this project's network in ``config.pipeline``); one-line errors otherwise."""
    where = f"model.checkpoint '{path}'"
    try:
        rdf = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{where} is not a readable bioimage.io description ({exc})") from None
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise CheckpointError(f"{where} is not a bioimage.io model description (type: model)")
    ours = (rdf.get("config") or {}).get("pipeline")
    weights = (rdf.get("weights") or {}).get("pytorch_state_dict")
    if not isinstance(ours, dict) or ours.get("format") != "pipeline-unet" or not isinstance(weights, dict):
        raise CheckpointError(
            f"{where} describes a network that is not this project's valid-convolution U-Net (no config.pipeline "
            "section with pytorch_state_dict weights); export one with 'pipeline model export CHECKPOINT --format "
            "bioimageio'")
    source = path.parent / str(weights.get("source", ""))
    if not source.is_file():
        raise CheckpointError(f"{where}: its weights file '{source}' is missing")
    data = source.read_bytes()
    if weights.get("sha256") and hashlib.sha256(data).hexdigest() != weights["sha256"]:
        raise CheckpointError(f"{where}: the weights file '{source}' does not match its sha256 in the description "
                              "(changed or truncated); export the package again")
    try:
        spec = ModelSpec.model_validate(ours["spec"])
        net = ExportNet(UNet(spec))
        net.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 - any failure here means a package that does not fit
        raise CheckpointError(f"{where}: spec and weights do not fit ({str(exc).splitlines()[0][:200]})") from None
    model = net.net.eval()
    return path.read_bytes() + data, model, dict(ours.get("info") or {})


__all__ = [
    "BUNDLED",
    "DEMO_AUTHORS",
    "DEMO_CHECKPOINT",
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "ExportNet",
    "checkpoint_authors",
    "checkpoint_digest",
    "is_package",
    "load_checkpoint",
    "open_checkpoint",
    "read_bioimageio",
    "resolve_checkpoint",
    "save_checkpoint",
]
