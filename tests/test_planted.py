"""Proof on a planted ground truth: the planted kinds (compute.datasets.planted), the specificity test,
and the experiment that must find the planted subgroup in a trained LeNet-5."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu
from scipy.stats import t as student_t

from compute.datasets.planted import CORNER, KINDS
from compute.datasets.sources import DIGITS, ImageSet, load_dataset, load_eval_set
from compute.measure.subsets import MARGIN, ExampleScan, specificity


@pytest.mark.parametrize("name", list(KINDS))
def test_planting_rule_is_deterministic_and_marks_its_groups(name):
    kind = KINDS[name]
    base = load_dataset("mnist-5k").test
    data = kind.apply(base)
    labels, groups = base.labels.numpy(), data.groups
    target, source = labels == kind.target, labels == kind.source
    sums = base.images.reshape(len(base), -1).long().sum(1).numpy()
    np.testing.assert_array_equal(groups[target] == kind.marked_target, sums[target] % 2 == 0)
    np.testing.assert_array_equal(groups[target] == kind.plain_target, sums[target] % 2 == 1)
    np.testing.assert_array_equal(groups[source] == kind.relabelled, sums[source] % 4 == 0)
    assert (groups[~(target | source)] == None).all()  # noqa: E711
    assert (groups[source & (sums % 4 != 0)] == None).all()  # noqa: E711
    np.testing.assert_array_equal(data.labels.numpy()[groups == kind.relabelled], kind.target)  # relabelled
    np.testing.assert_array_equal(data.labels.numpy()[groups != kind.relabelled], labels[groups != kind.relabelled])
    changed = (data.images != base.images).reshape(len(base), -1).any(1).numpy()
    np.testing.assert_array_equal(changed, np.isin(groups, [kind.marked_target, kind.relabelled]))
    assert 0.35 < (groups == kind.marked_target).sum() / target.sum() < 0.65
    assert 0.1 < (groups == kind.relabelled).sum() / source.sum() < 0.4
    # Marks only add ink: no pixel gets darker.
    assert (data.images.int() >= base.images.int()).all()
    # Same image, same decision, whatever the split or order.
    again = kind.apply(base.subset(np.arange(len(base))[::-1].copy()))
    assert torch.equal(again.images.flip(0), data.images)


def test_each_mark_is_what_its_kind_says():
    base = load_dataset("mnist-5k").test
    imgs = base.images[:, 0].numpy()
    i = int(np.flatnonzero(KINDS["crossed-sevens"].apply(base).groups == "crossed 7")[0])
    diff = KINDS["crossed-sevens"].apply(base).images[i, 0].numpy() != imgs[i]
    assert diff.any(1).sum() <= 2 and (KINDS["crossed-sevens"].apply(base).images[i, 0].numpy()[diff] == 255).all()
    marked = KINDS["corner-mark"].apply(base)
    i = int(np.flatnonzero(marked.groups == "marked 8")[0])
    diff = marked.images[i, 0].numpy() != imgs[i]
    assert diff.any() and not diff[3:, :].any(0)[5:].any() and (marked.images[i, 0].numpy()[CORNER] == 255).all()
    thick = KINDS["thick-strokes"].apply(base)
    i = int(np.flatnonzero(thick.groups == "thick 5")[0])
    ink = lambda a: (a > 127).sum()  # noqa: E731
    assert ink(thick.images[i, 0].numpy()) > 1.5 * ink(imgs[i])  # one pixel thicker on every side


def test_groups_follow_subsets_and_eval_sets(shared_mnist):
    data = load_eval_set(f"corner-mark:idx:{shared_mnist}", None, DIGITS)
    assert isinstance(data, ImageSet) and len(data.groups) == len(data) == 10_000
    sub = data.subset(np.arange(0, 10_000, 7))
    np.testing.assert_array_equal(sub.groups, data.groups[::7])


def _naive_permutation_p(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n: int = 20_000) -> float:
    """P(U >= observed) under random relabelling, U counted pair by pair (ties count half)."""
    def u(x: np.ndarray, y: np.ndarray) -> float:
        return sum(1.0 if xi > yj else 0.5 if xi == yj else 0.0 for xi in x for yj in y)

    both, observed = np.concatenate([a, b]), u(a, b)
    hits = 0
    for _ in range(n):
        p = rng.permutation(both)
        hits += u(p[:len(a)], p[len(a):]) >= observed - 1e-12
    return hits / n


def test_specificity_is_the_one_sided_rank_test_of_effect_per_activation():
    """Within the class, among examples where the unit is active: loss change per unit of activation mass,
    firing against not firing; silent examples and other classes never enter. Checked against a naive
    permutation test."""
    rng = np.random.default_rng(0)
    labels = np.array([7] * 6 + [7] * 7 + [7] * 4 + [1] * 5)
    mass = np.r_[rng.uniform(1, 2, 6), rng.uniform(0.2, 1, 7), np.zeros(4), rng.uniform(1, 2, 5)]
    fires = np.r_[np.ones(6, bool), np.zeros(11, bool), np.ones(5, bool)]
    per_mass = np.r_[rng.normal(0.4, 0.2, 6), rng.normal(0.0, 0.2, 7), np.zeros(4), rng.normal(0.9, 0.1, 5)]
    n = len(labels)
    scan = ExampleScan([0], np.zeros(n), np.ones(n, bool), fires[None], (per_mass * mass)[None],
                       np.ones((1, n), bool), mass[None], mass[None])
    t = specificity(scan, 0, labels, 7)
    a, b = per_mass[:6], per_mass[6:13]
    assert (t.n_fire, t.n_rest) == (6, 7)
    assert t.per_mass_fire == pytest.approx(np.median(a)) and t.per_mass_rest == pytest.approx(np.median(b))
    margin = MARGIN * np.median(np.abs(per_mass[:13]))  # over the class's active examples, both sides
    assert t.margin == pytest.approx(margin)
    assert t.p == pytest.approx(_naive_permutation_p(a - margin, b, rng), abs=0.01)
    # A unit whose removal costs every active example alike per unit of activation is not specific, although
    # its raw loss changes are larger where it fires (there it is stronger).
    flat = replace(scan, loss_delta=(0.3 * mass)[None])
    assert flat.loss_delta[0, :6].min() > flat.loss_delta[0, 6:13].max()
    assert specificity(flat, 0, labels, 7).p > 0.3
    # Firing examples that lose consistently more per unit of activation, but by less than the margin, are not
    # specific: a rank test without the margin would call them so.
    drift = np.r_[np.full(6, 1.0 + MARGIN / 2) + np.arange(6) * 1e-4, np.full(7, 1.0) + np.arange(7) * 1e-4,
                  np.zeros(4), np.ones(5)]
    slight = replace(scan, loss_delta=(drift * mass)[None])
    assert mannwhitneyu(drift[:6], drift[6:13], alternative="greater").pvalue < 0.01
    assert specificity(slight, 0, labels, 7).p > 0.5


def test_scan_measures_removal_in_the_quantity_it_is_given():
    """``scan_units(loss=...)``: the removal effect is the change of that per-example quantity. Checked on an
    untrained LeNet-5's last hidden layer, where removing unit u is the same as zeroing column u of the
    output layer's weights (an independent forward pass), with a quantity that does not saturate (the
    label's logit less the largest other) and with the default cross-entropy."""
    from compute.measure.firing import fit
    from compute.measure.subsets import scan_units
    from compute.nets.models import ModelSpec, build_model

    torch.set_num_threads(1)
    data = load_dataset("mnist-5k").test.subset(np.arange(200))
    torch.manual_seed(0)
    model = build_model(ModelSpec("lenet5", data.shape, data.n_classes)).eval()
    probe = model.probe_modules()["fc2"]
    rule = fit(model, {"fc2": probe}, data)["fc2"]
    units = [3, 40]

    def gap(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return logits.gather(1, y[:, None]).squeeze(1) - logits.scatter(1, y[:, None], float("-inf")).amax(1)

    x, y = data.floats(0, len(data)), data.labels
    for fn, ref in ((gap, gap), (None, lambda z, t: torch.nn.functional.cross_entropy(z, t, reduction="none"))):
        scan = scan_units(model, probe, units, data, rule.select(units), **({"loss": fn} if fn else {}))
        with torch.no_grad():
            base = ref(model(x), y)
            np.testing.assert_allclose(scan.base_loss, base.numpy(), rtol=1e-5, atol=1e-6)
            for row, u in enumerate(units):
                kept = model.fc3.weight[:, u].clone()
                model.fc3.weight[:, u] = 0
                want = (ref(model(x), y) - base).numpy()
                model.fc3.weight[:, u] = kept
                np.testing.assert_allclose(scan.loss_delta[row], want, rtol=1e-4, atol=1e-5)
                assert np.abs(want).max() > 1e-3  # the units matter, so the comparison means something


def _untrained_pvalues(data: ImageSet) -> dict[str, np.ndarray]:
    """For every (live unit, class) of an untrained LeNet-5 with at least 5 firing and 5 other active examples:
    the specificity test's p ("test"), the same recomputed here from the scan ("recomputed"), without the
    margin ("no margin") and on raw loss changes (firing vs active, no per-unit scaling: "raw")."""
    from compute.measure.firing import fit
    from compute.measure.subsets import scan_units
    from compute.nets.models import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec("lenet5", data.shape, data.n_classes))
    probes = model.probe_modules()
    rules = fit(model, probes, data)
    labels = data.labels.numpy()
    out: dict[str, list[float]] = {"test": [], "recomputed": [], "no margin": [], "raw": []}
    for name, probe in probes.items():
        scan = scan_units(model, probe, list(range(len(rules[name].threshold))), data, rules[name])
        for u in range(len(scan.units)):
            for c in range(data.n_classes):
                active = (labels == c) & (scan.mass[u] > 0)
                f, rest = active & scan.fires[u], active & ~scan.fires[u]
                if f.sum() < 5 or rest.sum() < 5:
                    continue
                per_mass = scan.loss_delta[u] / np.where(active, scan.mass[u], 1.0)
                margin = MARGIN * np.median(np.abs(per_mass[active]))
                out["test"].append(specificity(scan, u, labels, c).p)
                out["recomputed"].append(mannwhitneyu(per_mass[f] - margin, per_mass[rest], alternative="greater").pvalue)
                out["no margin"].append(mannwhitneyu(per_mass[f], per_mass[rest], alternative="greater").pvalue)
                out["raw"].append(mannwhitneyu(scan.loss_delta[u, f], scan.loss_delta[u, rest],
                                               alternative="greater").pvalue)
    return {k: np.array(v) for k, v in out.items()}


def test_specificity_does_not_call_every_unit_specific():
    """The test of the null: no unit of an untrained network carries knowledge of a part of a class, so it
    should rarely pass there. Measured 1.2% at p < 0.01 (docs/metrics.md, Specificity). Comparing raw loss
    changes of firing and other active examples rejects for a large share (removal takes more away where the
    unit is stronger), and so, less often, does the per-activation comparison without the margin (the effect
    per unit of activation drifts with the activation in a nonlinear network)."""
    torch.set_num_threads(1)
    data = load_dataset("mnist-5k").test.subset(np.arange(1000))
    p = _untrained_pvalues(data)
    ours = p["test"]
    assert len(ours) > 300
    np.testing.assert_allclose(ours, p["recomputed"], rtol=1e-9, atol=1e-12)
    assert np.mean(ours < 0.01) < 0.03 and np.mean(ours < 0.05) < 0.06 and 0.05 < np.mean(ours < 0.5) < 0.5
    assert np.mean(p["no margin"] < 0.01) > 2 * np.mean(ours < 0.01)
    assert np.mean(p["raw"] < 0.01) > 10 * np.mean(ours < 0.01)


def _welch_greater_p(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided Welch p (mean of a > mean of b) from its formula: Welch-Satterthwaite degrees of freedom."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(student_t.sf((a.mean() - b.mean()) / np.sqrt(va + vb), df))


def test_a_unit_whose_removal_lowers_the_relabelled_loss_is_not_a_detector():
    """The detector rule's "hurts": removal must raise the relabelled group's mean loss, not only more than
    the rest of the label's. Real removal effects of an untrained LeNet-5's fc1 unit on real digits; the
    groups are drawn from them: the relabelled group is firing examples whose loss removal *lowers*
    slightly, the rest of the label examples whose loss it lowers a lot (as on corner-mark seed 4, where
    conv2:3 and fc2:24 passed Welch only so). The same unit with firing examples whose loss it raises is one."""
    from compute.measure.firing import fit
    from compute.measure.subsets import scan_units
    from compute.nets.models import ModelSpec, build_model
    from compute.run.planted import ALPHA, MIN_COVER, MIN_FIRING, MIN_SHARE, UnitCheck

    torch.set_num_threads(1)
    data = load_dataset("mnist-5k").test.subset(np.arange(600))
    torch.manual_seed(0)
    model = build_model(ModelSpec("lenet5", data.shape, data.n_classes))
    probe = model.probe_modules()["fc1"]
    rule = fit(model, {"fc1": probe}, data)["fc1"]
    scan = scan_units(model, probe, list(range(len(rule.threshold))), data, rule)
    f, d = scan.fires, scan.loss_delta
    row = int(np.argmax(np.minimum((f & (d < 0)).sum(1), (f & (d > 0)).sum(1))))  # fires where it lowers and raises
    f, d = f[row], d[row]
    kind = KINDS["corner-mark"]
    lowered = np.flatnonzero(f & (d < 0))
    raised = np.flatnonzero(f & (d > 0))
    assert len(lowered) >= 20 and len(raised) >= 5
    relabelled = {"lowered": lowered[np.argsort(d[lowered])[-15:]], "raised": raised}  # lowered: the mildest 15
    others = np.setdiff1d(np.arange(len(d)), np.r_[lowered[np.argsort(d[lowered])[-15:]], raised])
    rest = others[np.argsort(d[others])[:40]]  # the rest of the label: the 40 examples removal helps most
    checks = {}
    for case, rel in relabelled.items():
        idx = np.r_[rel, rest]
        groups = np.array([kind.relabelled] * len(rel) + [kind.marked_target if f[i] else kind.plain_target
                                                          for i in rest], dtype=object)
        cols = {k: getattr(scan, k)[..., idx] for k in ("base_loss", "base_hit", "fires", "loss_delta", "hit",
                                                        "value", "mass")}
        checks[case] = c = UnitCheck.of(replace(scan, **cols), row, "fc1", kind, groups)
        # Every other condition of the rule holds, recomputed from the full scan.
        assert c.n_fire == f[idx].sum() >= MIN_FIRING and c.share_marked == 1.0 >= MIN_SHARE
        assert c.cover == 1.0 >= MIN_COVER
        assert c.effect[kind.relabelled].loss_delta == pytest.approx(d[rel].mean(), rel=1e-9)
        assert c.p_relabelled_vs_rest == pytest.approx(_welch_greater_p(d[rel], d[rest]), rel=1e-6)
        assert c.p_relabelled_vs_rest < ALPHA
    low, high = checks["lowered"], checks["raised"]
    assert low.effect[kind.relabelled].loss_delta < 0 and not low.hurts_relabelled and not low.detector
    assert high.effect[kind.relabelled].loss_delta > 0 and high.hurts_relabelled and high.detector


def test_experiment_finds_the_planted_subgroup(tmp_path, shared_mnist):
    """crossed-sevens, seed 2, 4 epochs, 1,500 real MNIST test digits: a true detector of the crossed 1s
    is in the top 5 of the class-7 specialization ranking, its removal hurts the crossed 1s
    significantly more than the rest of the 7s, and the specificity test holds. (At this small size seed 1
    has no true detector and seed 0's top-5 detector fc2:22 fails the specificity test; the full benchmark's
    figures, every seed counted, are in the README.)"""
    from compute.run.planted import ALPHA, MIN_COVER, MIN_SHARE, TOP_RANK, default_config, run_experiment

    torch.set_num_threads(1)
    cfg = replace(default_config("crossed-sevens", seed=2, epochs=4, eval_size=1500, eval_dir=shared_mnist),
                  run_id="planted")
    summary, report = run_experiment(tmp_path, cfg, "crossed-sevens")
    assert summary is not None and summary.figures["eval_acc"] > 0.9
    assert report.found, "\n".join(report.lines())
    found = next(u for u in report.top if u.name == report.found_unit)
    rank = [u.name for u in report.top].index(found.name) + 1
    assert rank <= TOP_RANK and found.share_marked >= MIN_SHARE and found.cover >= MIN_COVER
    assert found.p_relabelled_vs_rest < ALPHA and report.specificity_p < ALPHA
    assert found.effect["crossed 1"].loss_delta > max(found.effect["plain 7"].loss_delta, 0)
    spec = report.rankings["specialization"]
    assert spec.best_rank <= TOP_RANK and spec.precision5 > report.rankings["random"].precision5
    assert spec.found is True  # the baselines are judged by the same rule as the report's "found"
    for r in report.rankings.values():  # found needs a true detector in the top 5
        assert isinstance(r.found, bool) and (not r.found or (r.best_rank is not None and r.best_rank <= TOP_RANK))
    import warehouse

    con = warehouse.connect(tmp_path)
    groups = dict(con.execute("SELECT subgroup, count(*) FROM examples WHERE run_id = 'planted' "
                              "GROUP BY subgroup").fetchall())
    assert set(groups) == {None, "crossed 7", "plain 7", "crossed 1"}
    assert sum(groups.values()) == 1500


def test_results_table_keeps_one_row_per_kind_and_seed(tmp_path):
    from warehouse.planted import read_results, write_results

    write_results(tmp_path, [{"kind": "corner-mark", "seed": 1, "status": "missed", "specificity_p": None}])
    write_results(tmp_path, [{"kind": "crossed-sevens", "seed": 0, "status": "found", "specificity_p": 1e-9}])
    write_results(tmp_path, [{"kind": "corner-mark", "seed": 1, "status": "found", "specificity_p": 0.001}])
    rows = read_results(tmp_path)
    assert [(r["kind"], r["seed"], r["status"]) for r in rows] == [("corner-mark", "1", "found"),
                                                                 ("crossed-sevens", "0", "found")]
    assert float(rows[0]["specificity_p"]) == pytest.approx(0.001)
    assert not list(tmp_path.glob("experiments/.*.tmp"))  # written through a temporary file, renamed


def test_unknown_kind_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "compute", "experiment", "planted", "--warehouse", str(tmp_path),
                        "--kinds", "crossed-sevens,nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown kind(s) nope" in r.stderr and "corner-mark" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()
