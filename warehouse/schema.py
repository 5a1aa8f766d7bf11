"""The warehouse schema: every table, column, type and meaning, in one place.

``docs/schema.md`` is generated from this module (``python -m warehouse schema-doc``) and a test
checks it is current, so the documentation cannot drift from what is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 5  # 2: training signal, live anomaly, significance, examples, class curves;
#                     3: firing thresholds and subset specialization, abl_n, pred_ablated, any activation;
#                     4: firing per standardized position, specialization as a share;
#                     5: specialization weighted by the unit's relative class removal cost


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = False  # its doc says when it is null; the others never are (warehouse.validate checks)


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type) for c in self.columns])


def _c(name: str, type_: pa.DataType, doc: str, nullable: bool = False) -> Column:
    return Column(name, type_, doc, nullable)


RUN_ID = _c("run_id", pa.string(), "Run identifier; unique within a warehouse.")
LAYER = _c("layer", pa.string(), "Probed layer name, stable across runs of a model (e.g. `conv1`, `fc2`).")
UNIT = _c("unit", pa.int32(), "Unit index within its layer: neuron of a linear layer, channel of a conv layer.")
CLASS = _c("class", pa.int32(), "Class index (label value).")
CLASS_NAME = _c("class_name", pa.string(), "Human-readable class name (e.g. `7`, `Trouser`).")
F64 = pa.float64()
# Kinds of `unit_images` rows, in the order a unit's page shows them.
IMAGE_KINDS = ("top", "top_crop", "bottom", "gbp", "grad", "act_avg", "grad_avg", "happy", "sad", "weights")

TABLES: dict[str, Table] = {t.name: t for t in (
    Table("runs", "One row per published run: provenance, settings and headline results.", (
        RUN_ID,
        _c("created_at", pa.timestamp("s", tz="UTC"), "When the run was published (UTC)."),
        _c("schema_version", pa.int32(), "Warehouse schema version the run was written with."),
        _c("model", pa.string(), "Model name (`lenet5`, `mlp`, `cifar-convnet`)."),
        _c("dataset", pa.string(), "Training dataset spec as given to `--dataset`."),
        _c("eval_dataset", pa.string(), "Dataset the statistics and ablations were computed on "
           "(the training dataset's test split unless `--eval-dataset` was given)."),
        _c("n_train", pa.int64(), "Training examples used."),
        _c("n_test", pa.int64(), "Examples of the training dataset's test split (test accuracy, per-epoch history)."),
        _c("n_eval", pa.int64(), "Examples of the evaluation set behind every statistic and ablation."),
        _c("n_classes", pa.int32(), "Number of classes."),
        _c("class_names", pa.list_(pa.string()), "Class names in label order."),
        _c("seed", pa.int64(), "Seed for weight initialisation and batch order."),
        _c("epochs", pa.int32(), "Training epochs run (with `until_train_acc` in `config`, possibly fewer than the cap)."),
        _c("batch_size", pa.int32(), "Training mini-batch size."),
        _c("lr", F64, "Adam learning rate."),
        _c("label_noise", F64, "Fraction of training labels replaced by uniformly random labels (0 = clean); "
           "training accuracy and the training trace use these labels."),
        _c("experiment", pa.string(), "Experiment (sweep) the run belongs to; null for a single run.", nullable=True),
        _c("train_loss", F64, "Mean cross-entropy on the training set after training (eval mode)."),
        _c("train_acc", F64, "Accuracy on the training set after training, fraction in [0, 1]."),
        _c("test_loss", F64, "Mean cross-entropy on the test split after training."),
        _c("test_acc", F64, "Accuracy on the test split after training, fraction in [0, 1]."),
        _c("eval_loss", F64, "Mean cross-entropy on the evaluation set (baseline of every ablation delta)."),
        _c("eval_acc", F64, "Accuracy on the evaluation set (baseline of every ablation delta)."),
        _c("duration_s", F64, "Wall time of the whole compute run, seconds."),
        _c("device", pa.string(), "Torch device the run was computed on."),
        _c("torch_version", pa.string(), "torch version."),
        _c("package_versions", pa.string(), "JSON object: versions of python, torch, torchvision, numpy, pyarrow, duckdb."),
        _c("config", pa.string(), "JSON object: the full run configuration, including the model spec."),
        _c("checkpoint", pa.string(), "Path of the trained checkpoint, relative to the run's folder."),
    )),
    Table("layers", "One row per probed layer of a run.", (
        RUN_ID, LAYER,
        _c("layer_index", pa.int32(), "Position of the layer in the forward pass, from 0."),
        _c("kind", pa.string(), "`conv` (unit = channel) or `linear` (unit = neuron)."),
        _c("n_units", pa.int32(), "Units in the layer."),
        _c("shape", pa.list_(pa.int32()), "Activation shape of one example: [C, H, W] or [U]."),
        _c("probe", pa.string(), "Where the activity is read: the module path of the ReLU whose "
           "input is the pre-activation and whose output is the probed activity."),
    )),
    Table("units", "One row per unit: statistics on the evaluation set and single-unit ablation. For an activation f that is not ReLU, *pre-ReLU* reads pre-activation z and *post-ReLU* the response max(f(z) - f(0), 0) (docs/metrics.md, Non-rectified activations and token units).", (
        RUN_ID, LAYER,
        _c("layer_index", pa.int32(), "Position of the layer in the forward pass, from 0."),
        UNIT,
        _c("mean_act", F64, "Mean pre-activation z (spatial mean per example, then mean over examples)."),
        _c("mean_rect", F64, "Mean response r = max(f(z) - f(0), 0), post-ReLU for ReLU (spatial mean per example, then mean over "
           "examples)."),
        _c("max_act", F64, "Largest post-ReLU value at any position of any example."),
        _c("frac_active", F64, "Fraction of examples with any positive post-ReLU value (1 - sparsity)."),
        _c("n_active", pa.int64(), "Evaluation examples with any positive post-ReLU value: how many examples "
           "`selectivity` rests on (a unit active on 1 example has selectivity near 1; trust it from about 10)."),
        _c("dead", pa.bool_(), "True if the unit is never active on the evaluation set."),
        _c("selectivity", F64, "Class selectivity index (mu_max - mu_rest)/(mu_max + mu_rest + 1e-7) of "
           "post-ReLU class means (Morcos et al. 2018). 0 = unselective or dead, 1 = one class only. "
           "See `n_active` for the examples behind it."),
        _c("pref_class", pa.int32(), "Class with the largest post-ReLU class mean (mu_max); null for a dead unit.",
           nullable=True),
        _c("pref_class_name", pa.string(), "Name of `pref_class`; null for a dead unit.", nullable=True),
        _c("mu_max", F64, "Largest post-ReLU class mean."),
        _c("mu_rest", F64, "Mean of the other classes' post-ReLU class means."),
        _c("grad_mean", F64, "Mean output-side gradient signal, what the loss asks of the unit: "
           "-dLoss/d(post-ReLU activity) summed over positions, per example, averaged. Positive = the loss "
           "wants the unit higher; non-zero even where the unit is silent and training cannot act on it."),
        _c("grad_abs_mean", F64, "Mean over examples of the absolute output-side gradient signal."),
        _c("train_grad_mean", F64, "Mean training signal, what updates the unit: -dLoss/d(pre-activation) "
           "= the output-side signal where the unit fires, 0 where it is silent; summed over positions, per "
           "example, averaged. Always 0 for a dead unit."),
        _c("grad_z_max", F64, "Largest over classes of the class's `grad_mean` divided by the standard deviation "
           "of the layer's (unit, class) `grad_mean` values: how strongly the loss asks for the unit "
           "(used for dead units, which no training signal reaches)."),
        _c("taylor", F64, "Taylor importance (Molchanov et al. 2017): per example |mean over positions of "
           "dLoss/da * a| (post-ReLU), averaged over examples."),
        _c("taylor_norm", F64, "`taylor` divided by the L2 norm of `taylor` over the layer's units."),
        _c("abl_acc_delta", F64, "Accuracy change when the unit is clamped to zero (ablated - intact), fraction."),
        _c("abl_loss_delta", F64, "Mean cross-entropy change when the unit is clamped to zero (ablated - intact)."),
        _c("abl_loss_abs", F64, "|abl_loss_delta|: the size of the removal effect, what the Taylor estimate "
           "(`taylor`) approximates."),
        _c("abl_loss_lo", F64, "Lower end of the 95% t confidence interval of `abl_loss_delta` from the per-example "
           "paired differences (ablated - intact loss of each example; differences below 1e-6 count as 0)."),
        _c("abl_loss_hi", F64, "Upper end of that interval."),
        _c("abl_loss_p", F64, "Two-sided p-value of the paired t-test that removing the unit leaves the mean loss "
           "unchanged; 1 when no example's loss changes."),
        _c("abl_loss_q", F64, "`abl_loss_p` adjusted for the layer's many units (Benjamini-Hochberg q-value; "
           "`abl_loss_q <= 0.05` keeps the false discoveries among the kept units at about 5%)."),
        _c("abl_n_hurt", pa.int64(), "Evaluation examples that removing the unit turns from right to wrong."),
        _c("abl_n_helped", pa.int64(), "Evaluation examples that removing the unit turns from wrong to right "
           "(`abl_acc_delta` = (abl_n_helped - abl_n_hurt) / n_eval)."),
        _c("abl_acc_p", F64, "Exact McNemar test of the accuracy change: two-sided binomial test of `abl_n_hurt` among "
           "`abl_n_hurt + abl_n_helped` flips at 1/2; 1 when nothing flips."),
        _c("anomaly_max", F64, "Largest training-signal-vs-activation anomaly over classes (see "
           "`unit_classes.anomaly`); null for a dead unit.", nullable=True),
        _c("anomaly_class", pa.int32(), "Class of `anomaly_max`; null for a dead unit.", nullable=True),
        _c("fire_threshold", F64, "The unit *fires* on an example when its example value exceeds this: each "
           "position's post-activation standardized by that position's mean and standard deviation over the "
           "evaluation set, the largest over positions (a linear unit: its activation in standard units); the "
           "threshold is that value's mean + 1 standard deviation over the evaluation set (docs/metrics.md, "
           "When a unit fires). Schema version 4; before it, a threshold on the raw largest post-activation."),
        _c("specialization_max", F64, "Largest `unit_classes.specialization` over classes; null when no class has "
           "one (a dead unit, or too few firing examples).", nullable=True),
        _c("specialization_class", pa.int32(), "Class of `specialization_max`; null with it.", nullable=True),
        _c("abl_n", pa.int64(), "Evaluation examples the unit's ablation was measured on: all of them, or with "
           "`--ablation-budget sequential` the examples seen when its answer settled (`abl_*` deltas, interval and "
           "p-values are then on those examples, the interval and p corrected for the looks; docs/metrics.md)."),
    )),
    Table("unit_classes", "One row per unit and class: evaluation-set statistics restricted to the class.", (
        RUN_ID, LAYER, UNIT, CLASS, CLASS_NAME,
        _c("n", pa.int64(), "Evaluation examples of the class."),
        _c("mean_act", F64, "Mean pre-activation z on the class (spatial mean per example)."),
        _c("mean_rect", F64, "Mean response r = max(f(z) - f(0), 0) on the class, post-ReLU for ReLU (spatial mean per "
           "example)."),
        _c("grad_mean", F64, "Mean output-side gradient signal on the class, what the loss asks (see `units.grad_mean`)."),
        _c("grad_abs_mean", F64, "Mean absolute output-side gradient signal on the class."),
        _c("train_grad_mean", F64, "Mean training signal on the class, what updates the unit (see "
           "`units.train_grad_mean`)."),
        _c("taylor", F64, "Mean Taylor score on the class."),
        _c("frac_active", F64, "Fraction of the class's examples on which the unit is active."),
        _c("anomaly", F64, "Training-signal-vs-activation anomaly: min(train_grad_mean / std, -(mean_act - mean) / "
           "std), statistics over the layer's (unit, class) entries of live units. High only when training "
           "pushes the unit up for this class *and* its activation for the class is low: it fires for part of "
           "the class, which pulls it up. Null for dead units. See docs/metrics.md.", nullable=True),
        _c("abl_acc_delta", F64, "Accuracy change on the class when the unit is clamped to zero."),
        _c("abl_loss_delta", F64, "Mean cross-entropy change on the class when the unit is clamped to zero."),
        _c("frac_fire", F64, "Fraction of the class's examples on which the unit fires (value above "
           "`units.fire_threshold`)."),
        _c("fire_effect", F64, "Mean first-order loss change of removing the unit, sum_p (-dLoss/da_p) * a_p, over the "
           "correctly classified examples of the class on which it fires; null for a dead unit.", nullable=True),
        _c("specialization", F64, "Subset specialization, in [0, 1]: the share of the unit's removal cost "
           "(first-order loss change, positive part) over the class's correctly classified examples that falls on "
           "the examples it fires on, times (1 - frac_fire)^2, times the fourth root of the unit's removal cost on "
           "the class relative to the costliest live unit of the run (schema version 5). High when the class "
           "relies on the unit where it fires, and that part of the class is small. Null for dead units, with fewer than 5 "
           "correct firing examples, or no removal cost on the class. See docs/metrics.md.", nullable=True),
    )),
    Table("train_trace", "One row per epoch, unit and class: what training did to the unit.", (
        RUN_ID,
        _c("epoch", pa.int32(), "Epoch, from 1."),
        LAYER, UNIT, CLASS, CLASS_NAME,
        _c("n", pa.int64(), "Training examples of the class (by training label) seen in the epoch."),
        _c("mean_act", F64, "Mean pre-activation z over the epoch's examples of the class, as the "
           "network was at each step."),
        _c("mean_rect", F64, "Mean response r = max(f(z) - f(0), 0) (post-ReLU for ReLU), likewise."),
        _c("grad_mean", F64, "Mean output-side gradient signal -dLoss_n/d(activity f(z)), summed over "
           "positions: what the loss asks of the unit."),
        _c("train_grad_mean", F64, "Mean training signal -dLoss_n/d(pre-activation), summed over positions: "
           "what updated the unit (for ReLU, 0 on examples where it was silent)."),
    )),
    Table("epochs", "One row per training epoch: loss and accuracy history.", (
        RUN_ID,
        _c("epoch", pa.int32(), "Epoch, from 1."),
        _c("train_loss", F64, "Mean training loss over the epoch's steps (train mode, running)."),
        _c("train_acc", F64, "Training accuracy over the epoch's steps (running)."),
        _c("test_loss", F64, "Test-split loss after the epoch."),
        _c("test_acc", F64, "Test-split accuracy after the epoch."),
    )),
    Table("unit_images", "Visual evidence per unit: PNG images with what each shows. Written sorted by "
          "(layer, unit) in small row groups, so one unit's images are read without scanning the rest. "
          "See docs/metrics.md (Visual evidence) for the definitions.", (
        RUN_ID, LAYER, UNIT,
        _c("kind", pa.string(), "What the image is: `top` / `bottom` (evaluation examples that activate the unit "
           "most / least; conv units with the receptive-field box drawn), `top_crop` (the input patch the "
           "peak position sees), `gbp` / `grad` (guided backprop / gradient of the unit at its peak for "
           "the `top` example of the same rank), `act_avg` / `grad_avg` (activation- / gradient-weighted "
           "mean training input of a class), `happy` / `sad` (activation maximization / minimization), "
           "`weights` (first conv layer's filter)."),
        _c("rank", pa.int32(), "Order within the kind: 0 = most extreme example, or best restart of `happy`/`sad`; "
           "0 for the other kinds."),
        _c("class", pa.int32(), "Class of `act_avg`/`grad_avg` images; null otherwise.", nullable=True),
        _c("example", pa.int64(), "Index of the example in the run's evaluation set (`top`, `top_crop`, "
           "`bottom`, `gbp`, `grad`); null otherwise.", nullable=True),
        _c("value", F64, "`top`/`bottom`/`top_crop`/`gbp`/`grad`: the unit's largest pre-activation over positions "
           "on the example (= its post-ReLU peak when positive). `act_avg`/`grad_avg`: the class mean of the "
           "weight (rectified activation / positive gradient signal). `happy`/`sad`: the pre-activation, mean over "
           "positions, that the optimised input reaches (compare `units.mean_act`). Null for `weights`.", nullable=True),
        _c("label", pa.int32(), "True label of the example; null where there is no example.", nullable=True),
        _c("pred", pa.int32(), "Model prediction for the example; null where there is no example.", nullable=True),
        _c("position", pa.list_(pa.int32()), "Conv units: [y, x] of the peak in the unit's activation map; null "
           "for linear units and other kinds.", nullable=True),
        _c("box", pa.list_(pa.int32()), "Conv units: receptive field of `position` as a half-open input-pixel "
           "box [y0, x0, y1, x1], clipped to the image; exact (gradient support of a connectivity copy). Null for "
           "linear units and for the kinds without an example's peak.", nullable=True),
        _c("consistency", F64, "`happy`/`sad`: mean pairwise Pearson correlation of the restarts' images "
           "(1 = the same picture every restart); null otherwise.", nullable=True),
        _c("width", pa.int32(), "PNG width in pixels: an image's own size (a 28x28 input is 28 wide; the "
           "dashboard upscales), except a conv unit's top/bottom example, drawn larger by whole pixels "
           "with its receptive-field box."),
        _c("height", pa.int32(), "PNG height in pixels."),
        _c("png", pa.binary(), "The image, PNG-encoded."),
    )),
    Table("examples", "One row per evaluation example: what the intact model does with it.", (
        RUN_ID,
        _c("example", pa.int64(), "Index of the example in the run's evaluation set (as in `unit_images.example`)."),
        _c("label", pa.int32(), "True label."),
        _c("pred", pa.int32(), "The trained model's prediction."),
        _c("loss", F64, "Cross-entropy of the example."),
        _c("subgroup", pa.string(), "Subgroup the dataset defines for the example (e.g. `crossed 7` / `plain 7` "
           "in `crossed-sevens:` datasets); null otherwise.", nullable=True),
    )),
    Table("unit_examples", "Per unit, the evaluation examples that need it: those whose prediction flips "
          "when it is clamped to zero and those whose loss rises most. Stored sparsely (at most 100 flips "
          "per unit and direction, the 10 largest loss rises), never units x examples.", (
        RUN_ID, LAYER, UNIT,
        _c("example", pa.int64(), "Index of the example in the evaluation set (join `examples`)."),
        _c("kind", pa.string(), "`hurt` (right -> wrong without the unit), `helped` (wrong -> right) or "
           "`loss_rise` (among the 10 examples whose loss rises most, rise > 0)."),
        _c("rank", pa.int32(), "Order within (unit, kind): example order for flips, 0 = largest rise for `loss_rise`."),
        _c("loss_delta", F64, "The example's loss change when the unit is clamped to zero (ablated - intact)."),
        _c("pred_ablated", pa.int32(), "The model's prediction for the example with the unit clamped to zero "
           "(`examples.pred` is the intact one): what a flip turns the prediction into."),
    )),
    Table("ablation_curves", "Cumulative ablation curves: accuracy and loss with a growing fraction of a "
          "layer's live units clamped to zero, in several orders (Morcos et al. 2018). Dead units (never "
          "active on the evaluation set) are left out: removing them changes nothing, and they would sit "
          "at the start of the selectivity-low-first order. See docs/metrics.md.", (
        RUN_ID,
        _c("split", pa.string(), "Examples the curve is measured on: `eval` (the evaluation set) or `train` "
           "(the training set with its training labels)."),
        _c("layer", pa.string(), "Probed layer whose units are removed, or `last2`: the units of the last "
           "two probed layers pooled and ordered together."),
        _c("order", pa.string(), "Removal order: `random` (one permutation per `seed`), "
           "`selectivity_high_first`, `selectivity_low_first` (by `units.selectivity`), `importance` "
           "(largest `units.abl_loss_delta` first). Ties keep unit order."),
        _c("seed", pa.int32(), "Seed of the random permutation (0, 1, ...); null for the other orders.", nullable=True),
        _c("fraction", F64, "Nominal fraction of the units removed, on the grid 0, 0.05, ..., 1."),
        _c("n_units", pa.int32(), "Live units that can be removed (the layer's, or the pooled layers' together)."),
        _c("n_ablated", pa.int32(), "Units clamped to zero: round(fraction * n_units), the first of the order."),
        _c("accuracy", F64, "Accuracy with those units clamped to zero, fraction in [0, 1]."),
        _c("loss", F64, "Mean cross-entropy with those units clamped to zero."),
    )),
    Table("class_curves", "Per class: a cumulative ablation of a layer's live units in the order of their importance "
          "for that class, with that class's accuracy against the other classes' (can a class's knowledge be "
          "removed?). See docs/metrics.md.", (
        RUN_ID,
        _c("layer", pa.string(), "Probed layer whose units are removed, or `last2` (the last two layers pooled)."),
        CLASS, CLASS_NAME,
        _c("n_units", pa.int32(), "Live units of the layer or group."),
        _c("n_ablated", pa.int32(), "Units clamped to zero together: the first of the order (largest "
           "`unit_classes.abl_loss_delta` for this class first); every count up to 16, then the 5% grid."),
        _c("class_acc", F64, "Accuracy on this class's evaluation examples with those units removed."),
        _c("other_acc", F64, "Accuracy on all the other classes' examples together."),
    )),
    Table("class_removal", "Per layer (or `last2`) and class: the fewest units, removed in the order of "
          "`class_curves`, that halve the class's accuracy while the other classes keep at least 90% of theirs.", (
        RUN_ID,
        _c("layer", pa.string(), "Layer or pooled group, as in `class_curves`."),
        CLASS, CLASS_NAME,
        _c("n_units", pa.int32(), "Live units of the layer or group."),
        _c("class_acc_intact", F64, "The class's accuracy with nothing removed."),
        _c("other_acc_intact", F64, "The other classes' accuracy with nothing removed."),
        _c("n_to_halve", pa.int32(), "Fewest units on the `class_curves` grid with class_acc <= 0.5 x intact and "
           "other_acc >= 0.9 x intact; null if no count does it.", nullable=True),
        _c("class_acc_then", F64, "The class's accuracy at `n_to_halve` (null if none).", nullable=True),
        _c("other_acc_then", F64, "The other classes' accuracy at `n_to_halve` (null if none).", nullable=True),
    )),
    Table("ablation_auc", "One row per ablation curve: its normalized area under the curve.", (
        RUN_ID,
        _c("split", pa.string(), "`eval` or `train`, as in `ablation_curves`."),
        _c("layer", pa.string(), "Layer or pooled group (`last2`), as in `ablation_curves`."),
        _c("order", pa.string(), "Removal order, as in `ablation_curves`."),
        _c("seed", pa.int32(), "Seed of a `random` order; null for the other orders.", nullable=True),
        _c("n_units", pa.int32(), "Live units in the layer or group."),
        _c("auc", F64, "Trapezoid area under accuracy vs fraction removed (fractions 0..1) divided by the "
           "accuracy at fraction 0 (intact). 1 = removing units never costs accuracy; a curve that falls "
           "straight to chance gives about chance / intact accuracy. NaN if the intact accuracy is 0."),
    )),
)}


def markdown() -> str:
    """The schema as Markdown, for docs/schema.md."""
    lines = [
        "# Warehouse schema",
        "",
        f"Schema version {SCHEMA_VERSION}. Generated from `warehouse/schema.py` by "
        "`python -m warehouse schema-doc > docs/schema.md`; do not edit by hand.",
        "",
        "Each view below is the union of one Parquet file per published run "
        "(`<warehouse>/runs/<run_id>/<table>.parquet`). Every row carries its `run_id`.",
    ]
    for t in TABLES.values():
        lines += ["", f"## `{t.name}`", "", t.doc, "", "| column | type | meaning |", "|---|---|---|"]
        lines += [f"| `{c.name}` | {c.type} | {c.doc} |" for c in t.columns]
    return "\n".join(lines) + "\n"
