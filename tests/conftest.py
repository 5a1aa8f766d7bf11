"""Shared fixtures: one small real run on real MNIST digits, computed once per test session."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests on a shared, loaded machine: generating inputs or running an example may be slow there,
# which says nothing about the property; no deadline and no too-slow health check (every test file).
settings.register_profile("atlas", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("atlas")

os.environ.setdefault("NEURON_ATLAS_QUIET", "1")


def pytest_configure(config: pytest.Config) -> None:
    """``slow``: long fault-injection runs (killed Ray workers and drivers, a run SIGKILLed at each kind of
    point), the two longest browser journeys, ResNet-18 through every stage and the atlas benchmark's
    whole run. ``make test`` leaves them out so that it stays within minutes; ``make test-slow`` runs
    them, and CI (.ci/run) runs both."""
    config.addinivalue_line("markers", "slow: a long end-to-end case; make test-slow (CI runs it after make test)")


# The longest files (a minute or more each on 2 cores) first, the others after them in their usual order:
# `make test` runs pytest-xdist with --dist loadfile --no-loadscope-reorder, which hands files out in this
# order (its default, most tests first, started the two heavy small_run users together, one waiting
# ~20 s for the other). The first needs small_run; the next three do not, so the other process works
# meanwhile.
LONG_FIRST = ("test_dashboard_app.py", "test_cli.py", "test_ray.py", "test_activations.py", "test_sandbox.py",
              "test_browser.py", "test_hostile_text.py", "test_planted.py", "test_faults.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: each file's order kept


# One thread per process when pytest-xdist runs test files side by side (make test), else up to 2.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = Path(os.environ.get("NEURON_ATLAS_MNIST", REPO.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def shared_mnist() -> Path:
    """The real MNIST test set beside the checkout (10,000 images)."""
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the real MNIST test set is not at {SHARED_MNIST}")
    return SHARED_MNIST


def _small_run(root: Path):
    from compute.images.config import ActMaxConfig, ImageConfig
    from compute.run.config import RunConfig
    from compute.run.pipeline import compute_run

    cfg = RunConfig(model="lenet5", dataset="mnist-5k", epochs=2, seed=0, train_size=1000, eval_size=300,
                    run_id="small", images=ImageConfig(top_k=5, actmax=ActMaxConfig(steps=32)))
    return compute_run(cfg, root)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory, worker_id: str):
    """A LeNet-5 trained for 2 epochs on 1,000 mnist-5k digits, evaluated on 300 held-out digits,
    with a light images stage (top 5 examples, 32 activation-maximization steps).

    Computed once per ``make test``: under pytest-xdist the first worker that needs it computes it into
    the folder the workers share (under a file lock; ~25 s here) and every worker copies it into a
    warehouse of its own, so no test sees another process's changes."""
    from filelock import FileLock

    from compute.run.config import RunSummary

    root = tmp_path_factory.mktemp("warehouse")
    if worker_id == "master":  # no xdist
        return root, _small_run(root)
    shared = tmp_path_factory.getbasetemp().parent / "small_run"
    with FileLock(f"{shared}.lock"):
        if not (shared / "done.json").exists():
            summary = _small_run(shared / "warehouse")
            done = {"path": str(summary.path.relative_to(shared / "warehouse")), "figures": summary.figures}
            (shared / "done.json").write_text(json.dumps(done))
    shutil.copytree(shared / "warehouse", root, dirs_exist_ok=True)
    done = json.loads((shared / "done.json").read_text())
    return root, RunSummary("small", root / done["path"], done["figures"])


@pytest.fixture(scope="session")
def small_run_artifacts(small_run):
    """The small run's reloaded model, its evaluation set and its config, for recomputation."""
    from compute.datasets.sources import load_dataset, stratified_subset
    from compute.nets.models import load_checkpoint

    root, summary = small_run
    model, spec = load_checkpoint(summary.path / "checkpoint.pt")
    import warehouse

    con = warehouse.connect(root)
    cfg = json.loads(con.execute("SELECT config FROM runs WHERE run_id = 'small'").fetchall()[0][0])
    eval_set = stratified_subset(load_dataset(cfg["dataset"]).test, cfg["eval_size"])
    return model, eval_set, con


# The dashboard tests' fixtures (warehouse_root reuses small_run's warehouse).
from tests.dashboard_fixtures import broken_root, con, tables, warehouse_root  # noqa: E402, F401


@pytest.fixture(scope="session")
def ray_cluster() -> str:
    """One local Ray for the whole session (starting one takes seconds); yields its address."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200_000_000, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
