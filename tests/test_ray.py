"""The compute step on Ray: the published run equals the in-process one (LeNet-5 with a light images
stage, a ResNet-18 slice), with 1 or 2 workers, after a killed worker and after a killed driver resumed;
and the tables read with ``pyarrow.dataset`` alone."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import torch

import warehouse
import compute.api as atlas
from compute.datasets.sources import load_dataset, stratified_subset
from compute.images.config import ActMaxConfig, ImageConfig
from compute.nets.models import ModelSpec, build_model
from compute.progress import parse_line
from compute.run.config import RunConfig
from compute.run.pipeline import compute_run
from warehouse.faults import ENV_VAR, ONCE_VAR, TIMES_VAR

pytest.importorskip("ray")
from compute.distributed.ray_executor import RayExecutor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LIGHT_IMAGES = [  # the CLI seeds activation maximization with the run's seed
    "--top-k", "2", "--actmax-steps", "4", "--actmax-restarts", "2"]
LENET = RunConfig(model="lenet5", dataset="mnist-5k", epochs=1, seed=1, train_size=500, eval_size=300,
                  images=ImageConfig(top_k=2, actmax=ActMaxConfig(steps=4, restarts=2, seed=1)), train_curves=True)
VOLATILE = {"run_id", "created_at", "duration_s", "config"}  # differ between two computations of a run


def read_tables(run_dir: Path) -> dict[str, pa.Table]:
    """Every table of a published run, read with pyarrow.dataset (no warehouse code)."""
    return {name: ds.dataset(run_dir / f"{name}.parquet", format="parquet").to_table() for name in warehouse.TABLES}


def assert_same_run(a: Path, b: Path) -> None:
    """Same tables, same non-float values, floats within 1e-12 (in practice bit-equal)."""
    ta, tb = read_tables(a), read_tables(b)
    for name, x in ta.items():
        y = tb[name]
        assert x.schema == y.schema and x.num_rows == y.num_rows, name
        for col in set(x.column_names) - VOLATILE:
            cx, cy = x.column(col), y.column(col)
            if pa.types.is_floating(cx.type):
                np.testing.assert_allclose(cy.to_numpy(), cx.to_numpy(), rtol=0, atol=1e-12, equal_nan=True,
                                           err_msg=f"{name}.{col}")
            else:
                assert cx.to_pylist() == cy.to_pylist(), f"{name}.{col}"


def run_with(cfg: RunConfig, root: Path, run_id: str, workers: int | None = None) -> Path:
    executor = RayExecutor(workers=workers) if workers else None
    try:
        return compute_run(replace(cfg, run_id=run_id), root, executor=executor).path
    finally:
        if executor:
            executor.close()


@pytest.fixture(scope="module")
def lenet_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_with(LENET, tmp_path_factory.mktemp("wh"), "inproc")


def test_lenet_on_two_ray_workers_equals_in_process(ray_cluster: str, lenet_reference: Path, tmp_path: Path):
    assert_same_run(lenet_reference, run_with(LENET, tmp_path, "ray2", workers=2))


def test_resnet18_slice_on_one_ray_worker_equals_in_process(ray_cluster: str, tmp_path: Path):
    """Through compute.api: an untrained ResNet-18 (weights seeded), its last block, 20 digits."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("torchvision:resnet18", (1, 28, 28), 10, {}))
    digits = stratified_subset(load_dataset("mnist-5k").test, 20)
    ray1 = RayExecutor(workers=1)
    try:
        runs = {run_id: atlas.analyze(model, digits, layers=["layer4.1.*"], images=None, warehouse=tmp_path,
                                      run_id=run_id, executor=executor).path
                for run_id, executor in (("inproc", "in-process"), ("ray1", ray1))}
    finally:
        ray1.close()
    assert_same_run(runs["inproc"], runs["ray1"])
    assert ds.dataset(runs["ray1"] / "units.parquet").count_rows() == 1024  # layer4.1.relu, .relu_1: 512 each


# The single-unit ablation's item of the first shard: LeNet-5's 226 units of all four layers in one item.
ABLATION_ITEM = "item-conv1.u0000000-0000006+3.x0000000-0000300"


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_its_item_retried(ray_cluster: str, lenet_reference: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    marker = tmp_path / "crashed"
    # The actor running this item SIGKILLs its own process, once; Ray restarts it and retries the item.
    monkeypatch.setenv(ONCE_VAR, f"{ABLATION_ITEM}:{marker}")
    got = run_with(LENET, tmp_path / "wh", "killed-worker", workers=2)
    assert marker.exists()
    assert_same_run(lenet_reference, got)


@pytest.mark.slow
def test_a_worker_dead_for_good_hands_its_items_to_the_others(ray_cluster: str, lenet_reference: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    """The item kills its actor on every try until Ray gives the actor up (3 restarts); the surviving
    worker then runs it and the run equals the uninterrupted one (it used to end in ActorDiedError)."""
    marker = tmp_path / "crashed"
    monkeypatch.setenv(ONCE_VAR, f"{ABLATION_ITEM}:{marker}")
    monkeypatch.setenv(TIMES_VAR, "4")
    got = run_with(LENET, tmp_path / "wh", "dead-worker", workers=2)
    assert [marker.with_name(f"crashed{s}").exists() for s in ("", ".2", ".3", ".4")] == [True] * 4
    assert_same_run(lenet_reference, got)


@pytest.mark.slow
def test_when_no_worker_is_left_the_run_ends_in_one_paragraph(ray_cluster: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    from compute.errors import WorkerError

    monkeypatch.setenv(ONCE_VAR, f"{ABLATION_ITEM}:{tmp_path / 'crashed'}")
    monkeypatch.setenv(TIMES_VAR, "4")
    with pytest.raises(WorkerError, match=r"every Ray worker died for good .*--resume") as e:
        run_with(LENET, tmp_path / "wh", "no-worker", workers=1)
    assert "\n" not in str(e.value)
    assert (tmp_path / "wh" / ".staging" / "no-worker.stages" / "statistics.pt").is_file()  # kept for --resume
    assert not (tmp_path / "wh" / "runs" / "no-worker").exists()


@pytest.mark.slow
def test_a_token_authenticated_cluster_is_explained(ray_cluster: str, tmp_path: Path):
    """Ray 2.59+ starts clusters with token authentication; a driver without RAY_AUTH_MODE=token is
    refused (Ray only logs 'InvalidAuthToken'), and the message says what to set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"NEURON_ATLAS_QUIET": "1"}
    r = subprocess.run([sys.executable, "-m", "compute", "run", "--epochs", "1", "--train-size", "100", "--no-images",
                        "--warehouse", str(tmp_path), "--executor", "ray", "--ray-address", ray_cluster], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    error = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "RAY_AUTH_MODE=token" in error[0] and "~/.ray/auth_token" in error[0], r.stderr[-2000:]


def compute_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, ONCE_VAR)} | env
    return subprocess.run([sys.executable, "-m", "compute", "run", *args], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_a_killed_driver_resumes_and_skips_finished_items(ray_cluster: str, lenet_reference: Path, tmp_path: Path):
    """Killed after two of the images stage's four pictures items (one per layer): the resumed run loads
    every finished stage and item (the statistics' and images' earlier rounds too) and computes two items."""
    args = ["--warehouse", str(tmp_path), "--run-id", "killed-driver", "--executor", "ray",
            "--ray-address", ray_cluster, "--ray-workers", "2"]
    killed = compute_cli("--model", "lenet5", "--epochs", "1", "--seed", "1", "--train-size", "500",
                         "--eval-size", "300", *LIGHT_IMAGES, "--train-curves", *args,
                         env={ENV_VAR: "pictures-item-2", "NEURON_ATLAS_QUIET": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "runs" / "killed-driver").exists()
    resumed = compute_cli("--resume", *args, env={"NEURON_ATLAS_PROGRESS": "lines"})
    assert resumed.returncode == 0, resumed.stderr
    records = [r for line in resumed.stderr.splitlines() if (r := parse_line(line)) and not r.get("start")]
    pictures = [r for r in records if r["stage"] == "pictures"]
    assert 0 < pictures[0]["n"] < pictures[0]["total"] == 226  # the units of two items loaded, two computed
    for stage in ("top examples", "averages", "activation maximization"):  # earlier rounds: every item loaded
        assert all(r["n"] == r["total"] for r in records if r["stage"] == stage), stage
    assert not [r for r in records if r["stage"] in ("train", "statistics", "firing rule", "ablation")]  # stages loaded whole
    assert_same_run(lenet_reference, tmp_path / "runs" / "killed-driver")


def test_statistics_passes_as_items_equal_the_whole_set_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The firing rule's two passes and the specialization pass, one item per shard (3 here): the sums of
    the whole set in one pass within float64 rounding, and a resumed call repeats only the items whose
    saved results are missing or torn (cut, zeroed or with one byte changed, as an unsynced file can be
    after a crash of the machine), giving the same floats."""
    from compute.distributed import work
    from compute.distributed.executor import InProcessExecutor, Worker
    from compute.measure.firing import fit
    from compute.measure.specialization import specialization_sums
    from compute.run.stage_store import ItemStore

    monkeypatch.setattr(work, "SHARD_EXAMPLES", 128)
    torch.manual_seed(3)
    model = build_model(ModelSpec("lenet5", (1, 28, 28), 10, {})).eval()
    data = stratified_subset(load_dataset("mnist-5k").test, 300)
    worker, probes = Worker(model, {"eval": data}), model.probe_modules()
    ran: list[str] = []

    class Recording(InProcessExecutor):
        def map(self, worker, items):
            ran.extend(item.key for item in items)
            return super().map(worker, items)

    def passes() -> tuple[dict, dict]:
        rules = work.firing_rules(Recording(), worker, ItemStore(tmp_path))
        return rules, work.specialization(Recording(), worker, ItemStore(tmp_path), rules)

    rules, sums = passes()
    assert len(ran) == 3 * 3
    whole_rules, whole_sums = fit(model, probes, data), specialization_sums(model, probes, data, fit(model, probes, data))
    for layer in probes:
        for f in ("pos_mean", "pos_std", "threshold"):
            np.testing.assert_allclose(getattr(rules[layer], f), getattr(whole_rules[layer], f), rtol=1e-9, atol=1e-9)
        for f, v in whole_sums[layer].items():
            np.testing.assert_allclose(sums[layer][f], v, rtol=1e-9, atol=1e-9, err_msg=f"{layer}.{f}")
    gone = ["moments.x0000128-0000256", "values.x0000000-0000128", "special.x0000000-0000128",
            "special.x0000128-0000256", "special.x0000256-0000300"]
    (tmp_path / f"{gone[0]}.pt").unlink()
    for key, tear in zip(gone[1:], (lambda b: b[:len(b) // 2], lambda b: bytes(len(b)),
                                    lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], lambda b: b[:-1])):
        path = tmp_path / f"{key}.pt"
        path.write_bytes(tear(path.read_bytes()))
    ran.clear()
    again_rules, again_sums = passes()
    assert ran == gone
    for layer in probes:
        np.testing.assert_array_equal(again_rules[layer].threshold, rules[layer].threshold)
        for f, v in sums[layer].items():
            np.testing.assert_array_equal(again_sums[layer][f], v)


def test_tables_read_with_pyarrow_dataset_alone(lenet_reference: Path):
    """The warehouse is plain Parquet: a dataset over every run's units, filtered and counted by pyarrow."""
    units = ds.dataset(sorted(lenet_reference.parent.glob("*/units.parquet")), format="parquet")
    table = units.to_table(filter=(ds.field("run_id") == "inproc") & (ds.field("layer") == "fc1"),
                           columns=["unit", "selectivity", "abl_acc_delta"])
    assert table.num_rows == 120
    assert sorted(table.column("unit").to_pylist()) == list(range(120))
    classes = ds.dataset(lenet_reference / "unit_classes.parquet").to_table()
    assert classes.num_rows == 226 * 10
    assert json.loads(ds.dataset(lenet_reference / "runs.parquet").to_table().column("config")[0].as_py())["seed"] == 1


def test_ray_options_without_the_ray_executor_are_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from compute.cli import main

    assert main(["run", "--ray-workers", "2", "--warehouse", str(tmp_path)]) == 2
    assert "need --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_sequential_ablation_on_two_ray_workers_equals_in_process(ray_cluster: str, tmp_path: Path):
    """Look by look, only the running units: the same stops and the same floats on Ray."""
    from compute.ablation.engine import AblationEngine
    from compute.distributed import work
    from compute.distributed.executor import InProcessExecutor, Worker
    from compute.run.stage_store import StageStore

    torch.manual_seed(3)
    model = build_model(ModelSpec("lenet5", (1, 28, 28), 10, {})).eval()
    data = stratified_subset(load_dataset("mnist-5k").test, 300)
    order = np.random.default_rng(0).permutation(len(data))
    worker = Worker(model, {"eval-seq": data.subset(order)})
    counts = AblationEngine(model).unit_counts(data)
    ray2 = RayExecutor(workers=2)
    try:
        runs = [work.sequential_unit(ex, worker, StageStore(tmp_path / name), counts, order, 0.001, "eval-seq", first=100)
                for name, ex in (("in", InProcessExecutor()), ("ray", ray2))]
    finally:
        ray2.close()
    (base_a, a), (base_b, b) = runs
    assert base_a.loss == base_b.loss
    assert {float(n) for ab in a.values() for n in np.atleast_1d(ab.paired.n)} == {100.0, 200.0, 300.0}  # stops at each look
    for name in a:
        for field in ("acc_delta", "loss_delta", "class_acc_delta", "class_loss_delta"):
            np.testing.assert_array_equal(getattr(a[name], field), getattr(b[name], field), err_msg=f"{name}.{field}")
        np.testing.assert_array_equal(a[name].paired.n, b[name].paired.n)
        np.testing.assert_array_equal(a[name].examples.example, b[name].examples.example)


def test_workers_fetch_the_model_once_and_the_data_per_shard(ray_cluster: str, monkeypatch: pytest.MonkeyPatch):
    """The broadcast state holds the model and one object reference per shard of each dataset, never
    the data itself; a worker's slice across shards equals the data's own."""
    import ray

    from compute.distributed import work
    from compute.distributed.executor import Item, Worker
    from compute.distributed.ray_executor import Blocks

    monkeypatch.setattr(work, "SHARD_EXAMPLES", 128)
    data = stratified_subset(load_dataset("mnist-5k").test, 300)
    ex = RayExecutor(workers=1)
    try:
        state = ray.get(ex.broadcast(Worker(build_model(ModelSpec("lenet5", (1, 28, 28), 10, {})), {"eval": data})))
        rule = np.arange(1_000_000, dtype=np.float64)  # a round's large argument (the firing rule) goes once
        item = Item("values.x0", len, ("eval", 0, 128, ex.share(rule)))
        assert len(pickle.dumps(item)) < 2_000
        got = state.get(item.args[-1])
        assert got.flags.writeable and np.array_equal(got, rule) and state.get(item.args[-1]) is got
    finally:
        ex.close()
    blocks = state.data["eval"]
    assert isinstance(blocks, Blocks) and len(blocks.refs) == 3 and len(blocks) == 300  # 128 + 128 + 44
    for a, b in ((0, 128), (100, 300), (250, 260)):
        got = state.shard("eval", a, b)
        assert torch.equal(got.images, data.images[a:b]) and torch.equal(got.labels, data.labels[a:b])
    ids = np.array([3, 130, 131, 299])  # the pictures items' examples: blocks 0, 1 and 2 only
    got = state.examples("eval", ids)
    assert torch.equal(got.images, data.images[ids]) and torch.equal(got.labels, data.labels[ids])


def test_activation_maximization_as_items_equals_the_whole_layer_and_resumes(ray_cluster: str, tmp_path: Path):
    """The images stage's activation maximization, one item per stack of units: on 2 Ray workers and in
    process it equals ``activation_maps`` of the whole layer bit for bit; a resumed call repeats only
    the item whose saved result is missing."""
    from compute.distributed import work
    from compute.distributed.executor import InProcessExecutor, Worker
    from compute.images.actmax import activation_maps
    from compute.images.config import ActMaxConfig
    from compute.run.stage_store import StageStore
    from compute.threads import torch_threads

    torch.manual_seed(3)
    model = build_model(ModelSpec("lenet5", (1, 28, 28), 10, {})).eval()
    cfg = ActMaxConfig(steps=16, restarts=2, batch=24, window=4, tol=0.5)  # 6 units a stack
    units, shape, mean = {"conv2": 16, "fc2": 9}, (1, 28, 28), torch.full((1,), 0.2)  # 3 items, 2 (fc2's first 9)
    worker = Worker(model, {})
    with torch_threads(1):
        whole = {layer: activation_maps(model, model.probe_modules()[layer], range(n), shape, mean, cfg, desc=None)
                 for layer, n in units.items()}
        ray2 = RayExecutor(workers=2)
        try:
            got = {name: work.actmax(ex, worker, StageStore(tmp_path / name), units, shape, mean, cfg)
                   for name, ex in (("in", InProcessExecutor()), ("ray", ray2))}
        finally:
            ray2.close()

        ran: list[str] = []

        class Recording(InProcessExecutor):
            def map(self, worker, items):
                ran.extend(item.key for item in items)
                return super().map(worker, items)

        saved = sorted((tmp_path / "ray").glob("*.pt"))
        assert len(saved) == 3 + 2
        saved[3].unlink()
        got["resumed"] = work.actmax(Recording(), worker, StageStore(tmp_path / "ray"), units, shape, mean, cfg)
    assert ran == [saved[3].stem]
    for name, maps in got.items():
        for layer in units:
            for d in range(2):
                for field in ("images", "values", "consistency", "steps"):
                    np.testing.assert_array_equal(getattr(maps[layer][d], field), getattr(whole[layer][d], field),
                                                  err_msg=f"{name} {layer} {field}")
    assert any((m.steps < 16).any() for maps in whole.values() for m in maps)  # some images stopped early
