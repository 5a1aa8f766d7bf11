"""Work items on a Ray cluster: actors that hold the model and the data, fed items by the driver.

The worker state (model with trained weights, datasets) is put into Ray's object store once per run
(``ray.put``) and every actor reads it once when it starts; an item then ships only its small
arguments and returns float64 sums. Each actor reserves ``cpus_per_worker`` CPUs and sets torch's
threads to match (or a GPU fraction with ``--device cuda``). An actor whose process dies is
restarted and its items retried by Ray; the driver alone writes (``run_items`` saves each result).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import ray
import torch
from ray.exceptions import RayTaskError

from compute.distributed.executor import Item, Worker
from compute.errors import ConfigError
from warehouse.errors import AtlasError
from warehouse.faults import ENV_VAR, ONCE_VAR

RETRIES = 3  # restarts per actor, and retries per item, after a worker process dies
IN_FLIGHT = 2  # items queued per actor, so it never waits for the driver between items


@ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES)
class ItemActor:
    """Holds one copy of the worker state; runs items on it."""

    def __init__(self, worker: Worker, threads: int) -> None:
        torch.set_num_threads(threads)
        worker.model.to(worker.device)
        self.worker = worker

    def run(self, item: Item) -> Any:
        return item.run(self.worker)


class RayExecutor:
    """Runs items on ``workers`` Ray actors; joins the cluster at ``address`` (``auto``,
    ``ray://host:port``) or, without one, starts a local Ray on this machine."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_worker: float = 1.0,
                 cpus_per_worker: int = 1) -> None:
        self.started_ray = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise ConfigError(f"could not reach a Ray cluster at {address!r} ({e}); start one with "
                                  "`ray start --head` and pass --ray-address auto (or its ray://host:port), "
                                  "or leave --ray-address out to start Ray on this machine.") from None
            self.started_ray = True
        self.cpus, self.gpus = cpus_per_worker, gpus_per_worker
        self.workers = workers
        self._state: tuple[Worker, Any, list[Any]] | None = None

    def _actors(self, worker: Worker) -> list[Any]:
        """The actors for this worker state, started (and the state broadcast) on first use."""
        if self._state is not None and self._state[0] is worker:
            return self._state[2]
        self._kill()
        cuda = worker.device == "cuda"
        n = self.workers or max(1, int(ray.cluster_resources().get("GPU" if cuda else "CPU", 1)
                                       // (self.gpus if cuda else self.cpus)))
        ref = ray.put(worker)  # the weights and data, once; every actor reads this one copy
        env = {"NEURON_ATLAS_QUIET": "1", **{v: os.environ[v] for v in (ENV_VAR, ONCE_VAR) if v in os.environ}}
        options: dict[str, Any] = {"num_cpus": self.cpus, "runtime_env": {"env_vars": env}}
        if cuda:
            options["num_gpus"] = self.gpus
        actors = [ItemActor.options(**options).remote(ref, self.cpus) for _ in range(n)]
        self._state = (worker, ref, actors)  # the ref kept: a restarted actor reads it again
        return actors

    def map(self, worker: Worker, items: Sequence[Item]) -> Iterator[tuple[str, Any]]:
        """Results as they finish; each actor keeps ``IN_FLIGHT`` items queued."""
        actors = self._actors(worker)
        queue = list(reversed(items))
        running: dict[Any, tuple[Any, str]] = {}

        def submit(actor: Any) -> None:
            if queue:
                item = queue.pop()
                running[actor.run.remote(item)] = (actor, item.key)

        for actor in actors:
            for _ in range(IN_FLIGHT):
                submit(actor)
        while running:
            (done,), _ = ray.wait(list(running), num_returns=1)
            actor, key = running.pop(done)
            try:
                value = ray.get(done)
            except RayTaskError as e:  # the item raised: an input error reads as ours, others as they are
                raise (e.cause if isinstance(e.cause, AtlasError) else e) from None
            submit(actor)
            yield key, value

    def _kill(self) -> None:
        if self._state is not None:
            for actor in self._state[2]:
                ray.kill(actor)
            self._state = None

    def close(self) -> None:
        self._kill()
        if self.started_ray:
            ray.shutdown()
