"""The shape of the package: engine (serial == Dask), store (one face layout), stages,
pluggable clustering methods, one usage-error class, the public entry points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage

from pipeline.cli import main
from pipeline.plan.blocks import BlockPlan
from pipeline.run import segment
from pipeline.runtime.engine import Engine
from pipeline.runtime.faces import face_axes
from pipeline.runtime.markers import marked_blocks
from pipeline.runtime.store import Store
from pipeline.runtime.tasks import batched
from pipeline.volume.io import open_array, write_zarr

from .helpers import passthrough_checkpoint, same_partition

ROOT = Path(__file__).resolve().parents[1]


def test_public_entry_points():
    out = subprocess.run([sys.executable, "-c", "import pipeline; pipeline.segment; pipeline.predict"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for command in ("plan", "predict", "run", "evaluate", "demo", "model", "train", "calibrate"):
        assert command in out.stdout, (command, out.stdout)


def test_slurm_without_sbatch_exits_2_and_creates_nothing(tmp_path, capsys, monkeypatch):
    write_zarr(tmp_path / "in.zarr", np.zeros((8, 16, 16), np.float32), name="raw")
    cfg = {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
           "output": {"path": str(tmp_path / "out.zarr")},
           "model": {"checkpoint": str(passthrough_checkpoint(tmp_path / "pt.pt"))},
           "blocks": {"write_shape": [4, 8, 8]},
           "cluster": {"kind": "slurm", "log_directory": str(tmp_path / "logs")}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["-q", "run", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sbatch" in err and "Traceback" not in err, err
    assert not (tmp_path / "out.zarr").exists() and not (tmp_path / "logs").exists()


def _leaf(batch, offset):
    return [i + offset for i in batch]


def _concat(parts):
    return sorted(x for p in parts for x in p)


def _scaled(batch, factor):
    return [i * factor for i in batch]


@pytest.mark.parametrize("n", [0, 1, 7, 130])
def test_engine_serial_equals_dask(client2, n):
    """map (with per-batch references computed by call) and the reduction tree give the
    same results serially and on a Dask client; map keeps at most `window` tasks in flight."""
    batches = batched(list(range(n)), 3)
    results = {}
    for name, engine in (("serial", Engine(None)), ("dask", Engine(client2))):
        factor = engine.call(int, "5")
        mapped = sorted(x for r in engine.map(_scaled, batches, desc="m", window=2,
                                              per_batch=lambda b, f=factor: (f,)) for x in r)
        reduced = engine.result(engine.reduce(_leaf, _concat, batches, 100, desc="r"))
        results[name] = (mapped, reduced)
    assert results["serial"] == results["dask"]
    assert results["serial"] == ([5 * i for i in range(n)], [100 + i for i in range(n)])


@pytest.mark.parametrize("shape", [(10, 12, 9), (12, 9)])
def test_faces_of_per_label_evidence_read_as_the_whole_array(tmp_path, shape):
    """The fragments' means on the faces, kept as one column per distinct fragment of each plane
    (PerLabel: kind 1), read back as exactly the planes of the whole ``(E, *S)`` array of means (what
    the faces held per voxel before, kind 0, still written for per-voxel evidence), in far fewer bytes."""
    from pipeline.clustering.base import PerLabel
    from pipeline.clustering.kernels import fragment_means
    from pipeline.runtime.faces import Faces, face_blob, face_layout, write_faces
    from pipeline.runtime.markers import batch_name

    plan = BlockPlan(shape, (4,) * len(shape), (0,) * len(shape), (2,) * len(shape))
    rng, sizes = np.random.default_rng(1), []
    for kind, folder in ((0, tmp_path / "dense"), (1, tmp_path / "table")):
        folder.mkdir()
        blobs, dense = {}, {}
        for block in plan:
            local = rng.integers(0, 7, block.valid.shape)
            emb = rng.random((3, *block.valid.shape)).astype(np.float32)
            means = fragment_means(emb, local)
            dense[block.linear] = (local, means[:, local])
            blobs[block.linear] = face_blob(plan, block, local, PerLabel(means, local) if kind else means[:, local], 1000)
        write_faces(folder, list(range(len(plan))), blobs)
        faces = Faces(folder, [batch_name(list(range(len(plan))))])
        for block in plan:
            local, evidence = dense[block.linear]
            for a, side in face_layout(plan, block):
                pos = 0 if side == 0 else -1
                ids, got = faces.side(plan, block, a, side)
                np.testing.assert_array_equal(got, evidence[(slice(None),) * (a + 1) + (pos,)])
                plane = local[(slice(None),) * a + (pos,)]
                np.testing.assert_array_equal(ids, np.where(plane > 0, block.linear * 1000 + plane, 0))
        sizes.append(sum(map(len, blobs.values())))
    assert sizes[1] < sizes[0]  # (random ids: 7 per 16-voxel plane; real planes hold a few fragments)


def test_store_face_round_trip(tmp_path):
    """What the blocks of a batch write on their faces (one file per batch) is what the merge reads
    across each face; a block that wrote nothing (skipped as empty) reads as background; a batch
    whose marker is rewritten without some of its blocks (forgotten) keeps the others' faces."""
    from pipeline.runtime.faces import face_blob
    from pipeline.runtime.markers import batch_name
    from pipeline.runtime.store import FACES

    plan = BlockPlan((10, 12, 9), (4, 4, 4), (0, 0, 0), (2, 2, 2))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 50, plan.volume).astype(np.uint64)
    evidence = rng.random((2, *plan.volume)).astype(np.float32)
    store, resumed = Store.open(tmp_path / "o.zarr", False, "k", "run")
    assert not resumed
    store.create_faces()
    store.create_markers("fragments")
    skipped = plan.block((1, 0, 1))
    labels[skipped.valid.to_slices()] = 0
    evidence[(slice(None), *skipped.valid.to_slices())] = 0
    batches = [list(range(i, min(i + 5, len(plan)))) for i in range(0, len(plan), 5)]
    for batch in batches:
        blobs = {}
        for i in batch:
            block = plan.block_at(i)
            sl = block.valid.to_slices()
            if block != skipped:
                blobs[i] = face_blob(plan, block, labels[sl], evidence[(slice(None), *sl)], 0)  # stride 0: ids as given
        store.write_faces(batch, blobs)
        store.mark_done("fragments", batch)
    assert sorted(p.name for p in (tmp_path / "o.zarr" / FACES).iterdir()) == sorted(batch_name(b) for b in batches)

    def check(forgotten=()):
        index = store.index("fragments", len(plan))
        for block in plan:
            for axis in face_axes(plan):
                if block.index[axis] == plan.grid[axis] - 1 or block.linear in forgotten:
                    continue
                up = list(block.index)
                up[axis] += 1
                if plan.block(up).linear in forgotten:
                    continue
                files = index.files([block.linear, plan.block(up).linear])[0]
                la, lb, ea, eb = store.faces(files).face(plan, block, axis)
                last = block.valid.offset[axis] + block.valid.shape[axis] - 1
                plane = list(block.valid.to_slices())
                plane[axis] = last
                np.testing.assert_array_equal(la, labels[tuple(plane)])
                np.testing.assert_array_equal(ea, evidence[(slice(None), *plane)])
                plane[axis] = last + 1
                np.testing.assert_array_equal(lb, labels[tuple(plane)])
                np.testing.assert_array_equal(eb, evidence[(slice(None), *plane)])

    check()
    store.forget("fragments", [1, 6], follow=FACES)  # two batches rewritten under new names
    check(forgotten=(1, 6))
    assert batch_name([0, 1, 2, 3, 4]) not in {p.name for p in (tmp_path / "o.zarr" / FACES).iterdir()}


def test_done_markers_one_file_per_batch(tmp_path):
    """A finished batch is one marker file (its name says which blocks when they are
    consecutive); records come back per block; forgetting some blocks of a batch keeps the
    others; files of the earlier one-file-per-block layout and temporary files are ignored."""
    store, _ = Store.open(tmp_path / "o.zarr", False, "k", "run")
    store.create_markers("s")
    folder = tmp_path / "o.zarr" / "scratch" / "done_s"
    (folder / "3").write_text('{"input": "old"}')  # the old layout: not trusted, never a crash
    (folder / ".9-12-2.json.tmp").write_text("half")
    assert store.mark_done("s", [2, 0, 1], [{"r": 2}, {"r": 0}, None]) == "0-2-3.json"
    assert store.mark_done("s", [5, 9, 7], [{"r": 5}, {"r": 9}, {"r": 7}]) == "5-9-3.json"
    assert not store.done("s", 12)[3]
    index = store.index("s", 12)
    np.testing.assert_array_equal(np.flatnonzero(index.owner >= 0), [0, 1, 2, 5, 7, 9])
    assert marked_blocks(folder) == 6
    (files,) = index.files([1, 9])
    assert sorted(files) == ["0-2-3.json", "5-9-3.json"]
    assert store.records("s", [1, 9, 2], files) == {1: {}, 9: {"r": 9}, 2: {"r": 2}}
    assert sorted(map(sorted, index.batches([0, 5, 1, 9, 2, 7], 2))) == [[0, 1, 2], [5, 7, 9]]
    store.forget("s", [7, 1])
    np.testing.assert_array_equal(np.flatnonzero(store.done("s", 12)), [0, 2, 5, 9])
    assert sorted(p.name for p in folder.glob("*.json")) == ["0-2-2.json", "5-9-2.json"]
    assert store.records("s", [5, 9], ["5-9-2.json"]) == {5: {"r": 5}, 9: {"r": 9}}
    store.forget("s", [0, 2])
    assert not (folder / "0-2-2.json").exists() and marked_blocks(folder) == 2


def test_a_new_clustering_method_is_one_class(tmp_path):
    """A method registered from outside the package runs through every stage: here
    foreground components, whose blockwise result must equal scipy.ndimage.label."""
    from pipeline.clustering import Method, register
    from pipeline.clustering import base as registry
    from pipeline.clustering.faces import face_pairs

    class ForegroundComponents(Method):
        name = "foreground-components"
        exact = True

        def fragments(self, emb, fg):
            return ndimage.label(fg > self.params.foreground_threshold)[0].astype(np.int64)

        def face_evidence(self, emb, local):
            return emb

        def accept(self, lab_a, lab_b, ev_a, ev_b):
            return face_pairs(lab_a, lab_b)[0]

    register(ForegroundComponents)
    try:
        rng = np.random.default_rng(3)
        fg = ndimage.gaussian_filter(rng.random((16, 40, 40)), 1.5) > 0.52
        write_zarr(tmp_path / "in.zarr", fg.astype(np.float32), name="raw")
        out = segment({"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
                       "output": {"path": str(tmp_path / "out.zarr")},
                       "model": {"checkpoint": str(passthrough_checkpoint(tmp_path / "pt.pt"))},
                       "blocks": {"write_shape": [4, 8, 8]}, "cluster": {"kind": "serial"},
                       "clustering": {"method": "foreground-components"}})
        seg = open_array(out / "segmentation")[...]
        assert seg.max() > 3 and same_partition(seg, ndimage.label(fg)[0])
    finally:
        registry._REGISTRY.pop("foreground-components")
        registry.METHOD_NAMES.remove("foreground-components")


def test_progress_lines_for_logs(caplog):
    """Outside a terminal the engine logs progress every 30 s and once at the end."""
    from pipeline.runtime.progress import ProgressLog, progress_line

    assert progress_line("fragments", 120, 1000, 60.0) == "fragments: 120/1000 tasks (12%), 2.00 tasks/s, 7.3 min left"
    now = [0.0]
    bar = ProgressLog(10, "merge", clock=lambda: now[0])
    with caplog.at_level("INFO", logger="pipeline.progress"):
        for _ in range(10):
            now[0] += 7.0
            bar.update()
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["merge: 5/10 tasks (50%), 0.14 tasks/s, 0.6 min left", "merge: 10/10 tasks (100%), 0.14 tasks/s"]
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline.progress"):
        assert list(Engine().map(lambda b: b[0], [[1], [2]], desc="d")) == [1, 2]
    assert [r.getMessage() for r in caplog.records] == ["d: 2/2 tasks (100%), " + caplog.records[0].getMessage().split(", ")[1]]
    assert progress_line("fragments", 120, 1000, 60.0, "block", 64**3) == \
        "fragments: 120/1000 blocks (12%), 2.00 blocks/s, 0.5 Mvox/s, 7.3 min left"
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline.progress"):  # blocks of the batches, voxels per block
        assert list(Engine().map(lambda b: b[0], [[1, 2, 3], [4]], desc="d", unit="block", item_voxels=10)) == [1, 4]
    assert caplog.records[0].getMessage().startswith("d: 4/4 blocks (100%), ")
    assert "Mvox/s" in caplog.records[0].getMessage()


def test_the_architecture_page_names_what_exists():
    """docs/architecture.md: its stage table lists exactly the stages of ``pipeline.stages`` (each a
    class with that ``name``), and every ``pipeline/...`` path it names exists."""
    import importlib
    import inspect
    import pkgutil
    import re

    import pipeline.stages

    page = (ROOT / "docs" / "architecture.md").read_text()
    table = page[page.index("## The stages"):page.index("## Where the code is")]
    named = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.M))
    found = set()
    for info in pkgutil.iter_modules(pipeline.stages.__path__):
        module = importlib.import_module(f"pipeline.stages.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and isinstance(cls.__dict__.get("name"), str):
                found.add(cls.__dict__["name"])
    assert named == found, (named, found)
    paths = set(re.findall(r"`(pipeline/[\w/.]*)`", page))
    assert len(paths) > 10
    for path in paths:
        assert (ROOT / path).exists(), f"docs/architecture.md names {path}, which does not exist"
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()


class _Workers:
    """A client stand-in: workers with their threads and memory limits (0: unknown)."""

    def __init__(self, **workers):
        self.workers = workers

    def nthreads(self):
        return {w: t for w, (t, _) in self.workers.items()}

    def scheduler_info(self):
        return {"workers": {w: {"nthreads": t, "memory_limit": m} for w, (t, m) in self.workers.items()}}


def test_window_holds_a_gpu_workers_large_blocks_for_all_its_threads():
    """A GPU worker with 9 threads and 64 GiB predicts blocks sized to its GPU (3.5 GiB of
    embeddings each): the window lets it hold as many as half its memory takes (9), so 8 threads
    cluster while one predicts; a fixed 2 GiB budget allowed 2 in flight (one clustering)."""
    block = 7 * (2 << 30) // 4
    assert Engine(_Workers(gpu=(9, 64 << 30)))._window(block) == 9
    assert Engine(_Workers(gpu=(9, 64 << 30), cpu=(4, 8 << 30)))._window(block) == 10  # 9 + 1 (4 GiB)
    assert Engine(_Workers(gpu=(9, 0)))._window(block) == 2  # limit unknown: memory_per_worker (2 GiB)
    assert Engine(_Workers(gpu=(9, 64 << 30)))._window() == 36  # no results held between steps: 4 per thread


PACKAGE = ROOT / "pipeline"
MAX_LINES = 300
TOP_LEVEL = {"__init__", "__main__", "demo", "errors", "geometry", "run", "version"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports: module-level and function-level imports alike
    (a deferred import is still a circle), not those under ``if TYPE_CHECKING:`` (never executed)."""
    import ast

    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                       for stmt in node.body for n in ast.walk(stmt)}
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in modules else base)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_circles_are_found():
    """The circle finder itself: a three-module circle and a self-contained tail."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_package_layout():
    """The tree shows the architecture: a handful of top-level modules (the public API, errors,
    geometry, the demo), everything else in subpackages named for what they hold; no module over
    300 lines; no import circle between the package's modules."""
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL, f"top-level modules changed: {sorted(top ^ TOP_LEVEL)}; put new code in a subpackage"
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    circles = _circles(_import_graph())
    assert not circles, f"import circles: {circles}"
    for folder in (p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        doc = (folder / "__init__.py").read_text().lstrip()
        assert doc.startswith('"""'), f"{folder.name}/__init__.py says nothing about what the package holds"


def test_project_metadata_builds_without_setuptools_warnings():
    """pyproject.toml as setuptools reads it when building: no deprecation or other setuptools
    warning (a table `project.license` warned that such builds would stop being supported)."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution
    from setuptools.warnings import SetuptoolsWarning

    dist = Distribution()  # (its plugins' own import warnings are theirs, not our metadata's)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SetuptoolsWarning)
        apply_configuration(dist, Path(__file__).resolve().parents[1] / "pyproject.toml")
    assert dist.metadata.license_expression == "MIT"
