"""Can a class's knowledge be removed: the per-class cumulative ablation against a naive hook loop."""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import pytest
import torch

from compute.ablation.class_curves import HALVED, OTHERS_KEEP, class_curves, removal_counts
from compute.ablation.engine import AblationEngine
from compute.measure.stats import evaluation_stats
from compute.nets.probe import ZeroUnit
from tests.ablation_models import digits, trained_model


@pytest.fixture(scope="module")
def per_class():
    model = trained_model("lenet5")
    data = digits()[1]
    engine = AblationEngine(model)
    _, single = engine.single_unit(data)
    stats = evaluation_stats(model, model.probe_modules(), data)
    live = {n: stats.layers[n].n_active > 0 for n in single}
    curves, removal = class_curves(engine, data, {n: single[n].class_loss_delta for n in single}, live,
                                   data.class_names)
    return model, data, single, live, curves, removal


def rows(table: dict[str, list], **where) -> list[dict]:
    out = [dict(zip(table, values)) for values in zip(*table.values())]
    return [r for r in out if all(r[k] == v for k, v in where.items())]


def test_grid_counts_every_unit_first_then_fractions():
    assert removal_counts(5).tolist() == [0, 1, 2, 3, 4, 5]
    grid = removal_counts(100)
    assert grid[:17].tolist() == list(range(17)) and grid[-1] == 100 and 50 in grid and 17 not in grid


@pytest.mark.parametrize("layer, cls", [("fc1", 3), ("fc2", 7), ("conv2", 0)])
def test_class_accuracy_against_the_others_equals_naive_removal(per_class, layer, cls):
    model, data, single, live, curves, _ = per_class
    alive = np.flatnonzero(live[layer])
    order = alive[np.argsort(-single[layer].class_loss_delta[alive, cls], kind="stable")]
    x, y = data.floats(0, len(data)), data.labels
    mine = y == cls
    for r in rows(curves, layer=layer, **{"class": cls}):
        k = r["n_ablated"]
        with ExitStack() as stack, torch.inference_mode():
            if k:
                stack.enter_context(ZeroUnit(model.probe_modules()[layer], order[:k].tolist()))
            hit = model(x).argmax(1) == y
        assert r["n_units"] == len(alive)
        assert r["class_acc"] == pytest.approx(float(hit[mine].double().mean()), abs=1e-12)
        assert r["other_acc"] == pytest.approx(float(hit[~mine].double().mean()), abs=1e-12)


def test_fewest_units_that_halve_a_class_follow_from_the_curve(per_class):
    *_, curves, removal = per_class
    for s in rows(removal):
        curve = sorted(rows(curves, layer=s["layer"], **{"class": s["class"]}), key=lambda r: r["n_ablated"])
        c0, o0 = curve[0]["class_acc"], curve[0]["other_acc"]
        hits = [r for r in curve if r["n_ablated"] > 0 and r["class_acc"] <= HALVED * c0
                and r["other_acc"] >= OTHERS_KEEP * o0]
        assert s["n_to_halve"] == (hits[0]["n_ablated"] if hits else None)
        assert (s["class_acc_intact"], s["other_acc_intact"]) == (c0, o0)


def test_work_items_give_the_same_tables(per_class, tmp_path):
    """The pipeline's path: groups x chunks of masks x shards of 120 digits (3 shards), merged in order."""
    from compute.distributed import work
    from compute.distributed.executor import InProcessExecutor, Worker
    from compute.run.stage_store import StageStore

    model, data, single, live, curves, removal = per_class
    old = work.SHARD_EXAMPLES, work.MASK_CHUNK
    work.SHARD_EXAMPLES, work.MASK_CHUNK = 120, 50
    try:
        got_curves, got_removal = work.class_curves(InProcessExecutor(), Worker(model, {"eval": data}),
                                                    StageStore(tmp_path), {n: single[n].class_loss_delta for n in single},
                                                    live)
    finally:
        work.SHARD_EXAMPLES, work.MASK_CHUNK = old
    for want, got in ((curves, got_curves), (removal, got_removal)):
        assert list(got) == list(want)
        for col in want:
            if col in ("class_acc", "other_acc", "class_acc_intact", "other_acc_intact", "class_acc_then",
                       "other_acc_then"):
                np.testing.assert_allclose(np.array(got[col], dtype=float), np.array(want[col], dtype=float),
                                           rtol=0, atol=1e-12, err_msg=col)
            else:
                assert list(got[col]) == list(want[col]), col
    assert len(list(tmp_path.glob("*"))) >= 3 * 5  # one saved result per item: 3 shards x at least 5 chunks


def test_masks_the_curves_evaluated_are_reused_with_the_same_tables(per_class, tmp_path):
    """With the cumulative curves' masks and sums (``work.curves``), the class curves evaluate only the
    other masks, and every column is the same, float for float, as evaluating all of them."""
    from compute.ablation.curves import UnitScores, curve_plans
    from compute.ablation.class_curves import class_plans
    from compute.distributed import work
    from compute.distributed.executor import InProcessExecutor, Worker
    from compute.run.stage_store import StageStore

    model, data, single, live, _, _ = per_class
    worker = Worker(model, {"eval": data})
    importance = {n: single[n].class_loss_delta for n in single}
    scores = {n: UnitScores(np.zeros(len(live[n])), single[n].loss_delta, live[n]) for n in single}
    *_, known = work.curves(InProcessExecutor(), worker, StageStore(tmp_path / "curves"), scores, "eval", "eval")
    alone = work.class_curves(InProcessExecutor(), worker, StageStore(tmp_path / "alone"), importance, live)
    reused = work.class_curves(InProcessExecutor(), worker, StageStore(tmp_path / "reused"), importance, live,
                               known=known)
    for want, got in zip(alone, reused):
        assert list(got) == list(want)
        for col in want:
            np.testing.assert_array_equal(np.array(got[col], dtype=object), np.array(want[col], dtype=object), col)
    # Fewer masks evaluated: the all-kept and all-removed masks at least are curve masks in every group.
    shared = sum(len({m.numpy().tobytes() for m in work._flat(c.job)} & {m.numpy().tobytes() for m in work._flat(p.job)})
                 for c, p in zip(curve_plans(scores), class_plans(importance, live)))
    assert shared >= 2 * len(known)

    def masks_evaluated(folder: str) -> int:  # from the first shard's items: one MaskSums per chunk of masks
        store = StageStore(tmp_path / folder)
        return sum(len(sums.loss) for f in (tmp_path / folder).glob("*.x0000000-*.pt")
                   for sums in store.load(f.name[:-len(".pt")]))

    assert masks_evaluated("reused") == masks_evaluated("alone") - shared
