"""N5 inputs (BigStitcher-Spark / exaSPIM ``fused.n5``, n5-spark pyramids, BigDataViewer N5),
read through tensorstore's ``n5`` driver (zarr-python 3 has no N5 store).

A container is a folder with ``attributes.json`` files: a dataset's holds ``dimensions``,
``blockSize``, ``dataType`` and ``compression``, listed fastest axis first (x, y, z[, c]), and
tensorstore keeps that order; :class:`N5Array` presents the reverse, (z, y, x) or (c, z, y, x),
like a zarr array. ``input.dataset`` names a dataset or a multiscale group (``s0``, ``s1``, ...;
``input.scale_level`` picks one). Voxel size from ``pixelResolution`` or ``resolution`` (on the
dataset or a group above it) times the level's ``downsamplingFactors``. Block files live at
``<dataset>/<x>/<y>/<z>``. Compressions: those tensorstore reads (raw, gzip, bzip2, xz, blosc,
zstd); the Java lz4 plugin's is refused when opening."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .formats import select_channel, unit_name
from .input_volume import InputVolume

logger = logging.getLogger(__name__)

DATASET_KEYS = ("dimensions", "blockSize", "dataType")
TIMEPOINT = re.compile(r"timepoint(\d+)")
LEVEL = re.compile(r"^s(\d+)$")
LISTED = 20  # datasets named in a message


def _reason(exc: Exception) -> str:
    """tensorstore's message in one line, without its spec and status code."""
    text = (str(exc).strip().splitlines() or [""])[0].split(" [tensorstore_spec=")[0]
    return re.sub(r"^[A-Z_]+: ", "", text)


def _open_store(path: Path) -> Any:
    """The dataset at ``path`` as a tensorstore, axes reversed to (z, y, x) / (c, z, y, x)."""
    import tensorstore as ts

    spec = {"driver": "n5", "kvstore": {"driver": "file", "path": str(path)}}
    return ts.open(spec, read=True, write=False).result().T


class N5Array:
    """A read-only N5 dataset, opened on first read in the reading process (tensorstore is
    thread-safe). Pickles without its store. Axes are the N5 ones reversed."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype[Any], chunks: tuple[int, ...]) -> None:
        self.path, self.shape, self.dtype, self.chunks = path, shape, dtype, chunks
        self.ndim = len(shape)
        self._lock = threading.Lock()
        self._store: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_store")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _store=None)

    def __getitem__(self, key: Any) -> np.ndarray:
        with self._lock:
            if self._store is None:
                self._store = _open_store(self.path)
        return np.asarray(self._store[key].read().result())

    def block_file(self, coords: Any) -> Path:
        """The file of the block at ``coords`` (chunk indices in our axis order)."""
        return self.path.joinpath(*(str(int(j)) for j in reversed(tuple(coords))))

    def chunk_name(self, coords: Any) -> str:
        """How a message names the block at ``coords`` (chunk indices)."""
        return f"N5 block file '{self.block_file(coords)}'"

    def files_of(self, index: Any) -> list[str]:
        """The files a read of ``index`` depends on: the dataset's attributes and block files."""
        cells = []
        for k, n, c in zip(index, self.shape, self.chunks, strict=True):
            a, b = k.indices(n)[:2] if isinstance(k, slice) else (int(k), int(k) + 1)
            cells.append(range(a // c, (b - 1) // c + 1))
        return [str(self.path / "attributes.json"), *(str(self.block_file(j)) for j in product(*cells))]


def attributes(folder: Path) -> dict[str, Any]:
    """``folder/attributes.json`` ({} when absent); unreadable JSON is an :class:`InputError`."""
    file = folder / "attributes.json"
    if not file.is_file():
        return {}
    try:
        attrs = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"input.path: '{file}' cannot be read as N5 attributes ({exc})") from None
    if not isinstance(attrs, dict):
        raise InputError(f"input.path: '{file}' is not N5 attributes (a JSON object expected)")
    return attrs


def container_root(path: Path) -> Path:
    """The N5 container ``path`` lies in (the nearest folder named ``*.n5`` or whose attributes
    carry the ``n5`` version), else ``path`` itself."""
    for p in (path, *path.parents):
        if p.suffix.lower() == ".n5" or "n5" in attributes(p):
            return p
    return path


def _is_dataset(folder: Path) -> bool:
    return all(k in attributes(folder) for k in DATASET_KEYS)


def _levels(folder: Path) -> list[int]:
    """The scale levels ``s<k>`` of a multiscale group (datasets among its subfolders)."""
    found = [int(m.group(1)) for p in folder.iterdir() if p.is_dir() and (m := LEVEL.match(p.name))]
    return sorted(k for k in found if _is_dataset(folder / f"s{k}"))


def _candidates(root: Path, folder: Path, depth: int = 6) -> Iterator[tuple[str, str]]:
    """What ``input.dataset`` can name below ``folder``, with a note: datasets and multiscale
    groups (never entering a dataset's block folders)."""
    if len(folder.parts) - len(root.parts) >= depth:
        return
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        name = sub.relative_to(root).as_posix()
        if _is_dataset(sub):
            yield name, ""
        elif levels := _levels(sub):
            yield name, f" (levels s0..s{levels[-1]})"
        elif not sub.name.isdigit():
            yield from _candidates(root, sub, depth)


def _listing(root: Path) -> str:
    names = [name + note for name, note in _candidates(root, root)]
    return ", ".join(names[:LISTED]) + (", ..." if len(names) > LISTED else "") or "none"


def find_dataset(root: Path, dataset: str | None, scale_level: int) -> Path:
    """The dataset folder ``input.dataset`` and ``input.scale_level`` name in the container ``root``."""
    name = (dataset or "").strip("/")
    target = root / name if name else root
    if not target.is_dir():
        raise InputError(f"input.dataset: no dataset '{name}' in N5 '{root}' (available: {_listing(root)})")
    if _is_dataset(target):
        if scale_level:
            raise InputError(f"input.scale_level {scale_level}: N5 dataset '{target}' is one level (0); set "
                             "input.dataset to its multiscale group, or remove input.scale_level")
        return target
    levels = _levels(target)
    if not levels and not name:
        found = list(_candidates(root, root))
        if len(found) == 1:  # the only dataset or multiscale group
            return find_dataset(root, found[0][0], scale_level)
    if not levels:
        what = f"group '{name}' in N5 '{root}'" if name else f"N5 '{root}'"
        raise InputError(f"input.dataset: {what} is not a dataset and has no scale levels s0, s1, ...; set "
                         f"input.dataset to one of: {_listing(root)}")
    if scale_level not in levels:
        raise InputError(f"input.scale_level {scale_level} does not exist in N5 '{target}': it has {len(levels)} "
                         f"levels (0..{levels[-1]})")
    return target / f"s{scale_level}"


def _numbers(value: Any) -> list[float] | None:
    if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
        return [float(v) for v in value]
    return None


def _factors(chain: list[dict[str, Any]], level: int) -> list[float] | None:
    """The level's ``downsamplingFactors`` (its own; else the group's per level, as BDV N5 and
    n5-viewer's ``scales`` record them), x first."""
    own = _numbers(chain[0].get("downsamplingFactors"))
    if own is not None:
        return own
    for attrs in chain[1:]:
        for key in ("downsamplingFactors", "scales"):
            table = attrs.get(key)
            if isinstance(table, list) and level < len(table) and _numbers(table[level]) is not None:
                return _numbers(table[level])
    return None


def voxel_of(chain: list[dict[str, Any]], level: int, spatial: int) -> tuple[tuple[float, ...] | None,
                                                                           tuple[str | None, ...] | None]:
    """(z, y, x) voxel size and units from the attributes of the dataset and the groups above it
    (``chain``, nearest first)."""
    for attrs in chain:
        res = attrs.get("pixelResolution", attrs.get("resolution"))
        unit = attrs.get("unit", attrs.get("units"))
        if isinstance(res, dict):
            res, unit = res.get("dimensions"), res.get("unit", unit)
        size = _numbers(res)
        if size is None:
            continue
        factors = _factors(chain, level) or [1.0] * len(size)
        if len(size) < spatial or len(factors) < spatial:
            logger.warning("N5 resolution %s does not cover the %d spatial axes; voxel size ignored", size, spatial)
            return None, None
        voxel = tuple(s * f for s, f in zip(size[:spatial], factors[:spatial], strict=True))[::-1]  # xyz -> zyx
        units = unit[:spatial][::-1] if isinstance(unit, list) else [unit] * spatial
        return voxel, tuple(unit_name(u) for u in units)
    return None, None


def time_groups(folder: Path) -> list[str]:
    """The ``timepoint<k>`` multiscale groups of a BigDataViewer N5 setup (``setup0/timepoint0/s0``), by k."""
    if not folder.is_dir() or _is_dataset(folder) or _levels(folder):
        return []
    found = [(int(m.group(1)), p.name) for p in folder.iterdir() if p.is_dir() and (m := TIMEPOINT.fullmatch(p.name))]
    return [name for _, name in sorted(found) if _levels(folder / name)]


def open_n5(path: Path, dataset: str | None, scale_level: int, channel: int | None,
            timepoint: int | None = None) -> InputVolume:
    """An N5 dataset (or level of a multiscale group) as a lazily read array; a BigDataViewer
    setup group (``input.dataset: setup0``) holds time points ``timepoint<k>``: ``timepoint``
    (None: the first) is read, ``timepoints`` says how many there are."""
    if not path.is_dir():
        raise InputError(f"input.path: '{path}' does not exist (give an existing N5 container)")
    setup = path / (dataset or "").strip("/")
    times = time_groups(setup)
    if times:
        if (timepoint or 0) >= len(times):
            raise InputError(f"input.timepoint {timepoint} is out of range: N5 '{setup}' holds {len(times)} time "
                             f"point(s) ({times[0]}..{times[-1]}); set input.timepoint to one of 0..{len(times) - 1}")
        dataset = f"{(dataset or '').strip('/')}/{times[timepoint or 0]}".strip("/")
    found = find_dataset(path, dataset, scale_level)
    where = f"'{path}'" + (f" dataset '{found.relative_to(path).as_posix()}'" if found != path else "")
    try:
        store = _open_store(found)
    except Exception as exc:  # noqa: BLE001 - tensorstore's errors: one line naming the dataset
        raise InputError(f"input {where} cannot be opened as an N5 dataset ({_reason(exc)})") from None
    shape = tuple(int(n) for n in store.shape)
    if len(shape) not in (2, 3, 4):
        raise InputError(f"input {where} has {len(shape)} dimensions {list(shape)}; expected 2D (yx), 3D (zyx) or "
                         "4D (czyx)")
    axes = {2: "yx", 3: "zyx", 4: "czyx"}[len(shape)]
    chunks = tuple(int(c) for c in store.chunk_layout.read_chunk.shape)
    array = N5Array(found, shape, np.dtype(store.dtype.numpy_dtype), chunks)
    top = container_root(path)
    chain = [attributes(p) for p in (found, *found.parents) if p == top or top in p.parents]
    m = LEVEL.match(found.name)
    voxel, units = voxel_of(chain, int(m.group(1)) if m else 0, min(len(shape), 3))
    logger.debug("N5 %s: axes %s shape %s blocks %s voxel %s", where, axes, shape, chunks, voxel)
    vol = InputVolume(str(path), array, axes, voxel, units, timepoint=(timepoint or 0) if times else 0,
                      timepoints=max(1, len(times)))
    return select_channel(vol, channel, where)
