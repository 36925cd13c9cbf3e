"""How work runs: in this process, or on a Dask client. Knows nothing about segmentation.

One :class:`Engine` offers three things, the same in both modes:

``map``     run ``fn(batch, *args)`` for every batch of block indices; results come back as they
            complete, with at most ``window`` tasks in flight (the client never holds a future per
            block of a huge volume); tasks that need a resource (the GPU, ``model``) ask for it when
            some worker offers it. A batch can be two tasks: a first step holding a resource (predict
            on the GPU) whose result stays in worker memory for the second (cluster on CPU threads).
``reduce``  combine the leaf results of ``leaf(batch, *args)`` as a tree of tasks (fan-in 8).
``call``    run one function (on a worker with Dask); its result stays there as a :data:`Ref` that
            later calls and maps take; ``result`` fetches it. ``everywhere``: run a function on all.

With Dask, a worker lost mid-run has its tasks recomputed by the scheduler (a result reported twice
is taken once). Tasks carry their (small) arguments instead of scattering them: scattered data lost
with a worker cannot be recomputed.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any

from .progress import ProgressLog
from .signals import POLL_S, REQUEST, check_stop, completed
from .tasks import Guarded, Local, Ref, Refused, items_in, progress_of, spread

logger = logging.getLogger(__name__)

Batch = Sequence[int]


class Engine:
    """Runs tasks serially (``client=None``) or on a ``distributed.Client``."""

    def __init__(self, client: Any = None, progress: bool = False, fan_in: int = 8,
                 memory_per_worker: int = 2 << 30, abort: Callable[[], None] | None = None) -> None:
        self.client, self.progress, self.fan_in = client, progress, fan_in
        self.abort = abort  # raises the error that stopped the cluster (its workers lost), if any
        self.memory_per_worker = memory_per_worker  # for intermediate results in flight
        self.checks: list[Callable[[], None]] = []

    # ------------------------------------------------------------ shared helpers

    def _bar(self, total: int, desc: str, unit: str = "task", item_voxels: int = 0) -> Any:
        """A tqdm bar on a terminal; elsewhere (SLURM logs, redirected output) or without
        ``progress``, a log line every 30 s and one at the end."""
        if self.progress and sys.stderr.isatty():
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit=unit, leave=True)
        return ProgressLog(total, desc, unit=unit, item_voxels=item_voxels)

    def _threads(self) -> dict[str, int]:
        """Threads per worker; waits for the first worker (batch jobs may still be queued)."""
        threads = self.client.nthreads()
        if not threads:
            logger.info("waiting for the first Dask worker")
        while not threads:
            self._check()
            check_stop()
            try:
                self.client.wait_for_workers(1, timeout=2)
            except TimeoutError:
                pass
            threads = self.client.nthreads()
        return dict(threads)

    def _check(self) -> None:
        if self.abort is not None:
            self.abort()
        for check in self.checks:
            check()

    def also_check(self, check: Callable[[], None]) -> None:
        """Call ``check`` (it raises to stop the run, e.g. the output's lock lost) as results come in."""
        self.checks.append(check)

    def _get(self, fut: Any) -> Any:
        """``fut.result()`` (a failure because the cluster stopped: why); a stop request is honoured."""
        try:
            while not fut.done():  # (no timed result(): each would leave a gather behind)
                check_stop(draining=True)
                self._check()
                time.sleep(POLL_S)
            return fut.result()
        except BaseException:
            self._check()
            raise

    def _window(self, batch_bytes: int = 0) -> int:
        """Tasks in flight: enough to keep every thread busy, no more than the workers'
        memory budget holds of results waiting for their next step (at least 2 per worker)."""
        threads = self._threads()
        window = max(16, 4 * sum(threads.values()))
        if batch_bytes:
            fit = sum(budget // batch_bytes for budget in self._budgets())
            window = min(window, max(2 * len(threads), fit))
        return window

    def _budgets(self) -> list[int]:
        """Bytes each worker may hold of results waiting for their next step: half its memory
        limit where the scheduler knows it, else ``memory_per_worker``. A GPU worker's blocks are
        large (sized to the GPU); a fixed budget let it hold 2 of them, one predicting and one
        clustering, however many threads it has to cluster with."""
        workers = self.client.scheduler_info()["workers"].values()
        return [w["memory_limit"] // 2 if w.get("memory_limit") else self.memory_per_worker for w in workers]

    def _resources(self, resources: dict[str, float] | None) -> dict[str, float] | None:
        """``resources`` when some worker offers them, else None (e.g. a cluster of plain workers)."""
        if not resources:
            return None
        self._threads()
        workers = self.client.scheduler_info()["workers"].values()
        offered = any(all(r in w.get("resources", {}) for r in resources) for w in workers)
        return resources if offered else None

    def _offering(self, resources: dict[str, float] | None) -> list[str]:
        """Addresses of the workers that offer ``resources`` (all of them without), sorted."""
        self._threads()
        workers = self.client.scheduler_info()["workers"]
        return sorted(a for a, w in workers.items() if all(r in w.get("resources", {}) for r in resources or {}))

    @staticmethod
    def _value(arg: Any) -> Any:
        return arg.value if isinstance(arg, Local) else arg

    # ------------------------------------------------------------ the three operations

    def call(self, fn: Callable[..., Any], *args: Any) -> Ref:
        if self.client is None:
            return Local(fn(*map(self._value, args)))
        return self.client.submit(Guarded(fn), *args, pure=False)

    def everywhere(self, fn: Callable[[], Any]) -> None:
        """``fn()`` here and on every worker connected now (e.g. to drop a per-process cache)."""
        fn()
        if self.client is not None:
            self.client.run(fn, on_error="ignore")

    def result(self, ref: Ref) -> Any:
        if isinstance(ref, Local):
            return ref.value
        result = self._get(ref)
        if isinstance(result, Refused):
            raise result.error
        return result

    def map(
        self,
        fn: Callable[..., Any],
        batches: Sequence[Batch],
        *args: Any,
        desc: str,
        resources: dict[str, float] | None = None,
        per_batch: Callable[[Batch], tuple[Any, ...]] | None = None,
        first: tuple[Callable[[Batch], Any], dict[str, float] | None] | None = None,
        window: int | None = None,
        batch_bytes: int = 0,
        unit: str = "task",
        item_voxels: int = 0,
        spans: bool = False,
    ) -> Iterator[Any]:
        """``fn(batch, *args, *per_batch(batch))`` for every batch; results as they complete.

        With ``first = (load, load_resources)`` every batch runs as two tasks:
        ``fn(batch, load(batch), *args, ...)``, where ``load`` holds ``load_resources``
        (e.g. the GPU) and ``fn`` runs on any thread, preferably of the worker that holds
        ``load``'s result (which never leaves worker memory). ``batch_bytes``, the size of
        that result, caps the window so that results waiting for ``fn`` fit in memory.
        Progress counts tasks, or with a ``unit`` other than ``task`` the items of the batches
        (``item_voxels`` each, for a rate in voxels). ``spans``: consecutive batches share data
        (the input chunks of neighbouring blocks), so each worker is given a contiguous span of
        them (:func:`~pipeline.runtime.tasks.spans_of`, a loose restriction), the spans submitted in turn."""
        items = unit != "task"
        bar = self._bar(items_in(batches) if items else len(batches), desc, unit, item_voxels)
        try:
            total = len(batches)
            REQUEST.where = f"{desc} (0 of {total} tasks done)"
            if self.client is None:
                for k, batch in enumerate(batches):
                    self._check()
                    REQUEST.where = f"{desc} ({k} of {total} tasks done)"
                    check_stop()
                    extra = per_batch(batch) if per_batch else ()
                    loaded = (first[0](batch),) if first else ()
                    yield fn(batch, *loaded, *map(self._value, (*args, *extra)))
                    bar.update(len(batch) if items else 1)
                return
            from distributed import as_completed

            res = self._resources(resources)
            first_res = self._resources(first[1]) if first else None

            sizes: dict[str, int] = {}  # task key -> items in its batch

            # the worker whose span holds each batch (one worker so far, e.g. batch jobs still queued: any may join)
            batches, place = spread(batches, self._offering(first_res if first else res) if spans else [])

            def submit(batch: Batch) -> Any:
                extra = per_batch(batch) if per_batch else ()
                where = next(place)
                near = {"workers": [where], "allow_other_workers": True} if where else {}
                if first is None:
                    fut = self.client.submit(Guarded(fn), batch, *args, *extra, pure=False, resources=res, **near)
                else:
                    loaded = self.client.submit(Guarded(first[0]), batch, pure=False, resources=first_res, **near)
                    fut = self.client.submit(Guarded(fn), batch, loaded, *args, *extra, pure=False, resources=res)
                    loaded.release()  # the scheduler keeps it until `fut` has run
                sizes[fut.key] = len(batch)
                return fut

            it = iter(batches)
            pending = as_completed([submit(b) for b in islice(it, window or self._window(batch_bytes))])
            seen: set[str] = set()
            for fut in completed(pending, check=self._check):
                if fut.key in seen:  # recomputed after a worker was lost and reported again
                    continue
                seen.add(fut.key)
                result = self._get(fut)
                fut.release()
                if isinstance(result, Refused):
                    raise result.error
                self._check()
                if not REQUEST.requested():  # a signal asked to stop: running tasks finish, no new ones
                    for batch in islice(it, 1):
                        pending.add(submit(batch))
                bar.update(sizes.pop(fut.key) if items else 1)
                REQUEST.where = f"{desc} ({len(seen)} of {total} tasks done)"
                yield result
            if REQUEST.requested() and len(seen) < total:
                raise REQUEST.stop()
        finally:
            bar.close()

    def reduce(
        self,
        leaf: Callable[..., Any],
        combine: Callable[[Sequence[Any]], Any],
        batches: Sequence[Batch],
        *args: Any,
        desc: str,
    ) -> Ref:
        """``combine`` over ``leaf(batch, *args)`` for every batch, as a tree of tasks."""
        fan_in = self.fan_in
        REQUEST.where = desc
        if self.client is None:
            level = [leaf(b, *map(self._value, args)) for b in progress_of(batches, self._bar(len(batches), desc))
                     if check_stop() is None]
            while len(level) > 1:
                level = [combine(level[i : i + fan_in]) for i in range(0, len(level), fan_in)]
            return Local(level[0] if level else combine([]))
        from distributed import as_completed

        def _combine(*parts: Any) -> Any:
            return combine(parts)

        guarded_leaf, guarded_combine = Guarded(leaf), Guarded(_combine)

        it = iter(batches)
        depth: dict[str, int] = {}
        buckets: dict[int, list[Any]] = {}

        def submit_leaf(batch: Batch) -> Any:
            fut = self.client.submit(guarded_leaf, batch, *args, pure=False)
            depth[fut.key] = 0
            return fut

        bar = self._bar(len(batches), desc)
        pending = as_completed([submit_leaf(b) for b in islice(it, self._window())])
        for fut in completed(pending, drain=False, check=self._check):  # nothing of a reduction is kept: stop at once
            if fut.key not in depth:  # reported twice (recomputed after a worker was lost)
                continue
            self._check()
            d = depth.pop(fut.key)
            if d == 0:
                bar.update(1)
                for b in islice(it, 1):
                    pending.add(submit_leaf(b))
            bucket = buckets.setdefault(d, [])
            bucket.append(fut)
            if len(bucket) == fan_in:
                parent = self.client.submit(guarded_combine, *bucket, pure=False)
                depth[parent.key] = d + 1
                buckets[d] = []
                pending.add(parent)
        bar.close()
        rest = [f for d in sorted(buckets) for f in buckets[d]]
        return rest[0] if len(rest) == 1 else self.client.submit(guarded_combine, *rest, pure=False)
