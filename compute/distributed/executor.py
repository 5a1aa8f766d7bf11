"""Where work items run: the ``Executor`` protocol, the in-process default, and the driver loop that
keeps every finished item in the run's staging folder.

A work item is a module-level function of a ``Worker`` (the model with its trained weights, the
datasets, the device) and small arguments. Executors only decide *where* items run; the items and
the order their results are merged in are fixed by the stage (``compute.distributed.work``), so
every executor, with any number of workers and in any completion order, gives the same floats.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from compute.ablation.engine import AblationEngine
from compute.datasets.sources import ImageSet
from compute.errors import ConfigError
from compute.nets.models import ProbedModel
from compute.progress import bar
from compute.run.stage_store import StageStore
from warehouse.faults import crash_once, crash_point


T = TypeVar("T")


@dataclass(frozen=True)
class Shared:
    """A large argument that every item of a round reads (the firing rule: U x P float64 position
    moments, about 100 MB at ResNet-50), handed to the executor once (``Executor.share``) instead of
    with each item. In process it is the value itself, never copied; an executor of other processes
    subclasses it to hold a reference (``compute.distributed.ray_executor.StoredShared``)."""

    value: Any

    @property
    def key(self) -> str | None:
        """Names a value fetched from elsewhere; None: the value is here."""
        return None

    def fetch(self) -> Any:
        return self.value


@dataclass
class Worker:
    """What every work item reads: the model (trained weights), the datasets by name, the device."""

    model: ProbedModel
    data: dict[str, Any]  # name -> ImageSet, or an object with ``slice(start, stop) -> ImageSet``
    device: str = "cpu"
    _engine: AblationEngine | None = field(default=None, repr=False)
    _shared: tuple[str, Any] | None = field(default=None, repr=False)
    _cache: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    def engine(self) -> AblationEngine:
        """One engine per worker, so each layer is traced and split once for all its items."""
        if self._engine is None:
            self._engine = AblationEngine(self.model, device=self.device)
        return self._engine

    def shard(self, name: str, start: int, stop: int) -> ImageSet:
        """Examples start..stop-1 of a dataset: sliced here, or fetched block by block where the data
        stays in a cluster's object store (``compute.distributed.ray_executor.Blocks``)."""
        data = self.data[name]
        if not isinstance(data, ImageSet):
            return data.slice(start, stop)
        return ImageSet(data.images[start:stop], data.labels[start:stop], data.class_names, data.name)

    def examples(self, name: str, ids: np.ndarray) -> ImageSet:
        """Examples ``ids`` (sorted indices) of a dataset, fetching only the blocks that hold them."""
        data = self.data[name]
        if not isinstance(data, ImageSet):
            return data.take(ids)
        return data.subset(ids)

    def get(self, shared: Shared) -> Any:
        """The value of ``shared``, fetched once per worker (the latest one is kept: a round's items
        all read the same)."""
        key = shared.key
        if key is None:
            return shared.fetch()
        if self._shared is None or self._shared[0] != key:
            self._shared = (key, shared.fetch())
        return self._shared[1]

    def cached(self, key: Hashable, compute: Callable[[], T]) -> T:
        """What every item of this worker may reuse (a layer's receptive-field boxes), computed once."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def __getstate__(self) -> dict[str, Any]:  # what a worker computed for itself is rebuilt where it is used
        return {**self.__dict__, "_engine": None, "_shared": None, "_cache": {}}


@dataclass(frozen=True)
class Item:
    """One unit of work: ``fn(worker, *args)``; ``key`` names its saved result (a file name), ``size``
    is its share of the stage's progress bar (in the bar's unit)."""

    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    size: float = 1.0

    def run(self, worker: Worker) -> Any:
        crash_once(f"item-{self.key}")
        return self.fn(worker, *self.args)


class Executor(Protocol):
    """Runs items on a worker's model and data; yields (key, result) in completion order."""

    name: str

    def map(self, worker: Worker, items: Sequence[Item]) -> Iterator[tuple[str, Any]]: ...

    def share(self, value: Any) -> Shared: ...

    def close(self) -> None: ...


class InProcessExecutor:
    """The embedded default: items run one after another in this process, no cluster needed."""

    name = "in-process"

    def map(self, worker: Worker, items: Sequence[Item]) -> Iterator[tuple[str, Any]]:
        for item in items:
            yield item.key, item.run(worker)

    def share(self, value: Any) -> Shared:
        return Shared(value)

    def close(self) -> None:
        pass


def run_items(executor: Executor, worker: Worker, items: Sequence[Item], store: StageStore,
              desc: str, unit: str = "item") -> list[Any]:
    """Every item's result, in the order of ``items`` (never completion order).

    Results already in ``store`` (a killed driver's finished items) are loaded, the rest computed and
    each saved as it arrives, so ``--resume`` repeats only unfinished items.
    """
    keys = [item.key for item in items]
    assert len(set(keys)) == len(keys), "work item keys must be unique"
    results = {k: v for k in keys if (v := store.load(k)) is not None}
    todo = [item for item in items if item.key not in results]
    sizes = {item.key: item.size for item in items}
    progress = bar(None, desc, unit=unit, total=round(sum(sizes.values())),
                   initial=round(sum(sizes[k] for k in results)))
    done = float(progress.n)
    for key, value in executor.map(worker, todo):
        store.save(key, value)
        results[key] = value
        done += sizes[key]
        progress.update(round(done) - progress.n)
        crash_point(f"{desc}-item-{len(results)}")
    progress.close()
    return [results[k] for k in keys]


def make_executor(kind: str, address: str | None = None, workers: int | None = None,
                  gpus_per_worker: float = 1.0, device: str = "cpu") -> Executor:
    """``in-process`` or ``ray`` (Ray is imported only when asked for; its workers start now, for
    ``device``)."""
    if kind == "in-process":
        return InProcessExecutor()
    if kind != "ray":
        raise ConfigError(f"unknown executor {kind!r}; choose in-process or ray.")
    from compute.distributed.ray_executor import RayExecutor

    return RayExecutor(address, workers, gpus_per_worker, device=device)
