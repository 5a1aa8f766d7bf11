"""Work items on a Ray cluster: actors that hold the model, fed items by the driver.

The model with its trained weights is put into Ray's object store once per run (``ray.put``) and
every actor reads it once, at its first item of the run. The datasets are put block by block (one
object per data shard, ``Blocks``): an item fetches only the blocks of its examples, so an actor's
memory does not grow with the dataset. An item ships only references and its small arguments, and
returns float64 sums; a large argument that every item of a round reads (the firing rule) is put
once (``share``) and fetched once per actor. Each actor reserves
``cpus_per_worker`` CPUs and sets torch's threads to match (or a GPU fraction with ``--device
cuda``). An actor whose process dies is restarted and its items retried by Ray (``RETRIES`` times);
an actor that dies for good is dropped and its items go to the surviving actors, each item at most
``RETRIES`` times; when no actor is left, or an item has killed ``RETRIES`` actors, the run ends
with one paragraph (finished items are kept for ``--resume``). The driver alone writes
(``run_items`` saves each result).
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import AuthenticationError, RayActorError, RayError, RayTaskError

from compute.allocator import keep_freed_memory
from compute.datasets.sources import ImageSet
from compute.distributed.executor import Item, Shared, Worker
from compute.errors import WorkerError, ConfigError
from warehouse.errors import AtlasError
from warehouse.faults import ENV_VAR, ONCE_VAR, TIMES_VAR

RETRIES = 3  # restarts per actor, and retries per item, after a worker process dies
IN_FLIGHT = 2  # items queued per actor, so it never waits for the driver between items
# Imported by each actor as it starts (where every item function lives), so that no item pays a fresh
# process's imports.
ITEM_MODULES = ("compute.distributed.work", "compute.distributed.images")


@ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES)
class ItemActor:
    """Runs items on the worker state of the current run, fetched from the object store once per
    state (a restarted actor fetches it again), so one actor serves every run of a sweep."""

    def __init__(self, threads: int, env: dict[str, str]) -> None:
        os.environ.update(env)  # not a runtime_env: one would need a new process (see ``RayExecutor.actors``)
        torch.set_num_threads(threads)
        keep_freed_memory()
        for module in ITEM_MODULES:  # now, while the driver works
            importlib.import_module(module)
        self.key: str | None = None
        self.worker: Worker | None = None

    def run(self, state: list[Any], item: Item) -> Any:
        ref = state[0]  # inside a list, so Ray passes the reference, not the value, with each item
        if self.key != ref.hex():
            self.worker = ray.get(ref)
            self.worker.model.to(self.worker.device)
            self.key = ref.hex()
        return item.run(self.worker)


@dataclass
class Blocks:
    """A dataset in the object store, one object per ``size`` consecutive examples."""

    n: int
    size: int
    refs: list[Any]

    @staticmethod
    def put(data: ImageSet, size: int) -> Blocks:
        def block(a: int, b: int) -> ImageSet:  # copies, so no block pickles the whole set's storage
            groups = None if data.groups is None else data.groups[a:b].copy()
            return ImageSet(data.images[a:b].clone(), data.labels[a:b].clone(), data.class_names, data.name, groups)

        return Blocks(len(data), size, [ray.put(block(a, min(a + size, len(data)))) for a in range(0, len(data), size)])

    def __len__(self) -> int:
        return self.n

    def slice(self, start: int, stop: int) -> ImageSet:
        """Examples start..stop-1, from the blocks that hold them."""
        first, last = start // self.size, (stop - 1) // self.size
        parts: list[ImageSet] = ray.get(self.refs[first:last + 1])
        a, b = start - first * self.size, stop - first * self.size
        if len(parts) == 1:
            p = parts[0]
            return ImageSet(p.images[a:b], p.labels[a:b], p.class_names, p.name)
        return ImageSet(torch.cat([p.images for p in parts])[a:b], torch.cat([p.labels for p in parts])[a:b],
                        parts[0].class_names, parts[0].name)

    def take(self, ids: np.ndarray) -> ImageSet:
        """Examples ``ids`` (sorted indices), from the blocks that hold them."""
        which = np.unique(ids // self.size)
        parts: list[ImageSet] = ray.get([self.refs[b] for b in which])
        offsets = np.cumsum([0] + [len(p) for p in parts])[:-1]
        at = torch.from_numpy(offsets[np.searchsorted(which, ids // self.size)] + ids % self.size)
        return ImageSet(torch.cat([p.images for p in parts])[at], torch.cat([p.labels for p in parts])[at],
                        parts[0].class_names, parts[0].name)


@dataclass(frozen=True)
class StoredShared(Shared):
    """A shared value in the object store: ``value`` is [its reference] (in a list, so Ray passes the
    reference with the item, not the value)."""

    @property
    def key(self) -> str:
        return self.value[0].hex()

    def fetch(self) -> Any:
        # A copy: the object store's arrays are read-only, and torch warns on every one it is given.
        return copy.deepcopy(ray.get(self.value[0]))


class RayExecutor:
    """Runs items on ``workers`` Ray actors; joins the cluster at ``address`` (``auto``,
    ``ray://host:port``) or, without one, starts a local Ray on this machine.

    The actors start with the executor, for ``device``: each takes one of Ray's idle worker processes
    and imports the item modules (~3 s of a fresh process here, mostly torch) while the
    driver loads data and trains, instead of at the first item."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_worker: float = 1.0,
                 cpus_per_worker: int = 1, device: str = "cpu") -> None:
        self.started_ray = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError, RayError) as e:
                raise ConfigError(connect_error(address, e)) from None
            self.started_ray = True
        self.cpus, self.gpus = cpus_per_worker, gpus_per_worker
        self.workers = workers
        self._actors: list[Any] = []
        self._cuda = False
        self._state: tuple[Worker, Any] | None = None
        self.actors(device == "cuda")

    def actors(self, cuda: bool = False) -> list[Any]:
        """The actors, started again when the device changes. No ``runtime_env``: actors with one need
        new worker processes (1.56 s to ready here against 0.35 s for an idle one's reuse)."""
        if self._actors and self._cuda == cuda:
            return self._actors
        self._kill()
        n = self.workers or max(1, int(ray.cluster_resources().get("GPU" if cuda else "CPU", 1)
                                       // (self.gpus if cuda else self.cpus)))
        env = {"NEURON_ATLAS_QUIET": "1", **{v: os.environ[v] for v in (ENV_VAR, ONCE_VAR, TIMES_VAR) if v in os.environ}}
        options: dict[str, Any] = {"num_cpus": self.cpus}
        if cuda:
            options["num_gpus"] = self.gpus
        self._actors, self._cuda = [ItemActor.options(**options).remote(self.cpus, env) for _ in range(n)], cuda
        return self._actors

    def broadcast(self, worker: Worker) -> Any:
        """The worker state in the object store, put once per run: the model whole, each dataset as
        ``Blocks`` of one data shard (``compute.distributed.work.SHARD_EXAMPLES``) each."""
        from compute.distributed.work import SHARD_EXAMPLES

        if self._state is None or self._state[0] is not worker:
            data = {name: Blocks.put(d, SHARD_EXAMPLES) for name, d in worker.data.items()}
            self._state = (worker, ray.put(Worker(worker.model, data, worker.device)))
        return self._state[1]

    def share(self, value: Any) -> Shared:
        """``value`` put in the object store once; each actor fetches it once (``Worker.get``)."""
        return StoredShared([ray.put(value)])

    def map(self, worker: Worker, items: Sequence[Item]) -> Iterator[tuple[str, Any]]:
        """Results as they finish; each live actor keeps ``IN_FLIGHT`` items queued."""
        actors = self.actors(worker.device == "cuda")
        state = [self.broadcast(worker)]
        queue = list(reversed(items))
        running: dict[Any, tuple[Any, Item]] = {}
        lost: dict[str, int] = {}  # item key -> actors that died for good while running it

        def fill() -> None:
            for actor in actors:
                while queue and sum(a is actor for a, _ in running.values()) < IN_FLIGHT:
                    item = queue.pop()
                    running[actor.run.remote(state, item)] = (actor, item)

        fill()
        while running:
            (done,), _ = ray.wait(list(running), num_returns=1)
            actor, item = running.pop(done)
            try:
                value = ray.get(done)
            except RayTaskError as e:  # the item raised: an input error reads as ours, others as they are
                raise (e.cause if isinstance(e.cause, AtlasError) else e) from None
            except RayActorError as e:  # restarts spent: drop the actor, hand its items to the others
                lost[item.key] = lost.get(item.key, 0) + 1
                if actor in actors:
                    actors.remove(actor)
                    self._actors = [a for a in self._actors if a is not actor]
                    for ref in [r for r, (a, _) in running.items() if a is actor]:
                        queue.append(running.pop(ref)[1])
                queue.append(item)
                if not actors or lost[item.key] > RETRIES:
                    self._kill()
                    raise WorkerError(worker_error(item.key, lost[item.key], e, bool(actors))) from None
                fill()
                continue
            fill()
            yield item.key, value

    def _kill(self) -> None:
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def close(self) -> None:
        self._kill()
        self._state = None
        if self.started_ray:
            ray.shutdown()


def worker_error(key: str, times: int, e: RayActorError, actors_left: bool) -> str:
    """One paragraph for Ray workers that died for good (each after ``RETRIES`` restarts)."""
    cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    what = (f"item {key} was lost with {times} Ray workers (each restarted {RETRIES} times)" if actors_left else
            f"every Ray worker died for good (each restarted {RETRIES} times; the last while running item {key})")
    return (f"{what}: {cause}. Usually a worker runs out of memory (fewer --ray-workers, a smaller --eval-size "
            f"or --layers) or its node went away. Finished items are kept: fix the cause and continue with "
            f"--resume --run-id.")


def connect_error(address: str | None, e: BaseException) -> str:
    """One paragraph for a cluster that could not be joined, naming token authentication when it may be why."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    text = f"could not reach a Ray cluster at {address!r} ({first})."
    mode = os.environ.get("RAY_AUTH_MODE", "")
    if isinstance(e, AuthenticationError) or (address and mode not in ("token",)):
        text += (" If the cluster uses token authentication (the default of `ray start --head` since Ray 2.59; Ray "
                 "logs 'InvalidAuthToken' then), this driver must send the cluster's token: run with "
                 "RAY_AUTH_MODE=token and the head's token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or "
                 f"RAY_AUTH_TOKEN (RAY_AUTH_MODE is {mode or 'unset'} here).")
    return text + (" Otherwise start a cluster with `ray start --head` and pass --ray-address auto (or its "
                   "host:port, ray://host:port), or leave --ray-address out to start Ray on this machine.")
