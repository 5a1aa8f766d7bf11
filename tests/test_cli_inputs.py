"""Bad input at the command lines (``python -m compute``, ``python -m warehouse export``) and in files the
compute step reads (checkpoints, stage files, folder datasets): each gets a clear error and exit code 2,
never a traceback, and nothing is published or half-written.

Run in-process through ``main`` (an exception would fail the test; argparse's own errors exit 2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compute.cli import main as compute_main
from compute.nets.models import LeNet5
from tests.dashboard_fixtures import RUN_ID
from warehouse.__main__ import main as warehouse_main

QUICK = ["--epochs", "1", "--train-size", "100", "--eval-size", "50", "--no-images"]


class Planted:
    """Unpickling this runs code (it creates ``marker``): what a hostile checkpoint or stage file holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """Hostile and malformed files: checkpoints of every wrong kind and folder datasets LeNet-5 cannot use."""
    marker = tmp_path / "code-ran"
    out = {"marker": marker}
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Planted(marker)}, tmp_path / "code.pt")
    out["code"] = tmp_path / "code.pt"
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a whole pickled model, not a state dict
    out["module"] = tmp_path / "module.pt"
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x04 not a checkpoint")
    out["garbage"] = tmp_path / "garbage.pt"
    (tmp_path / "text.pt").write_text("root:x:0:0:root:/root:/bin/bash\n")  # the unpickler fails with IndexError
    out["text"] = tmp_path / "text.pt"
    (tmp_path / "zip.pt").write_bytes(b"PK\x03\x04 a damaged zip archive")
    out["zip"] = tmp_path / "zip.pt"
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    out["random"] = tmp_path / "random.pt"
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    out["tensor"] = tmp_path / "tensor.pt"
    torch.save({"note": "no tensors"}, tmp_path / "no-tensors.pt")
    out["no-tensors"] = tmp_path / "no-tensors.pt"
    torch.save(LeNet5((1, 32, 32), 3).state_dict(), tmp_path / "other-model.pt")
    out["other-model"] = tmp_path / "other-model.pt"
    weights = LeNet5((1, 28, 28), 10).state_dict()
    weights["fc1.bias"][3] = float("nan")
    torch.save(weights, tmp_path / "nan-weights.pt")
    out["nan-weights"] = tmp_path / "nan-weights.pt"
    weights = LeNet5((1, 28, 28), 10).state_dict()
    for kind, convert in (("sparse", torch.Tensor.to_sparse), ("meta", lambda t: t.to("meta")),
                          ("complex", lambda t: t.to(torch.complex64))):  # torch's checks raise on the first two
        torch.save({**weights, "fc1.weight": convert(weights["fc1.weight"])}, tmp_path / f"{kind}.pt")
        out[kind] = tmp_path / f"{kind}.pt"
    os.mkfifo(tmp_path / "fifo.pt")
    out["fifo"] = tmp_path / "fifo.pt"
    out["dir"] = tmp_path
    rng = np.random.default_rng(0)
    for name, classes, size, n in (("one-class", ["only"], 28, 10), ("tiny", ["a", "b"], 8, 10),
                                   ("one-each", ["a", "b"], 28, 1)):
        for c in classes:
            (tmp_path / name / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(tmp_path / name / c / f"{i}.png")
        out[name] = tmp_path / name
    for name, sizes in (("bomb", {"a": 28, "b": 28}), ("mixed", {"a": 28, "b": 32}), ("empty", {"a": 28, "b": 28}),
                        ("garbage-image", {"a": 28, "b": 28}), ("loop", {"only": 28}), ("to-root", {"a": 28, "b": 28}),
                        ("to-class", {"a": 28, "b": 28})):
        for c, size in sizes.items():
            (tmp_path / name / c).mkdir(parents=True)
            for i in range(5):
                Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(tmp_path / name / c / f"{i}.png")
        out[name] = tmp_path / name
    _claim_size(tmp_path / "bomb" / "a" / "0.png", 60000, 60000)  # a header that says 60000x60000, 3.6 billion pixels
    (tmp_path / "empty" / "b" / "9.png").write_bytes(b"")
    (tmp_path / "garbage-image" / "b" / "9.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "loop" / "only" / "again").symlink_to(tmp_path / "loop" / "only")  # a folder that contains itself
    (tmp_path / "to-root" / "a" / "up").symlink_to(tmp_path / "to-root")  # class a would take b's images
    (tmp_path / "to-class" / "a" / "more").symlink_to("../b")
    out["proc"] = Path("/proc/self")
    return out


def _claim_size(png: Path, width: int, height: int) -> None:
    """Rewrite a PNG's header (IHDR, with its CRC) to claim another size; the pixel data stays small."""
    import struct
    import zlib

    b = bytearray(png.read_bytes())
    assert b[12:16] == b"IHDR"
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    png.write_bytes(bytes(b))


# (arguments after `run`, or a full argv for other commands) -> what the error must say
RUN_CASES: list[tuple[list[str], str]] = [
    (["--lr", "nan"], "expected a learning rate"), (["--lr", "inf"], "expected a learning rate"),
    (["--lr", "-1"], "expected a learning rate"), (["--lr", "0"], "expected a learning rate"),
    (["--lr", "abc"], "expected a learning rate"), (["--seed", str(2**64)], "expected a seed"),
    (["--seed", "-1"], "expected a seed"), (["--seed", "1e3"], "expected a seed"),
    (["--seed", "\u0663"], "expected a seed"), (["--epochs", "\u0663"], "non-negative integer"),
    (["--epochs", "1_000"], "non-negative integer"), (["--epochs", str(10**30)], "non-negative integer"),
    (["--batch-size", "0"], "positive integer"), (["--batch-size", "-5"], "positive integer"),
    (["--train-size", "0"], "positive integer"), (["--eval-size", "abc"], "positive integer"),
    (["--widths", "12,x"], "comma-separated integers"), (["--widths", "0"], "comma-separated integers"),
    (["--widths", ""], "comma-separated integers"), (["--widths", str(10**12)], "comma-separated integers"),
    (["--width", "nan"], "width multiplier"), (["--width", "0"], "width multiplier"),
    (["--width", "-1"], "width multiplier"), (["--label-noise", "nan"], "fraction"),
    (["--label-noise", "1.5"], "fraction"), (["--until-train-acc", "inf"], "fraction"),
    (["--run-id", "abc\n"], "invalid run id"), (["--run-id", ""], "invalid run id"),
    (["--run-id", "../x"], "invalid run id"), (["--run-id", "a b"], "invalid run id"),
    (["--run-id", "x" * 129], "invalid run id"), (["--run-id", ".hidden"], "invalid run id"),
    (["--top-k", "0"], "positive integer"), (["--actmax-lr", "nan"], "learning rate"),
    (["--actmax-l2", "-1"], "non-negative number"), (["--actmax-tv", "inf"], "non-negative number"),
    (["--actmax-jitter", "-1"], "non-negative integer"), (["--actmax-blur-sigma", "nan"], "width multiplier|above 0"),
    (["--model", "vgg99"], "unknown model 'vgg99'"), (["--device", "tpu"], "invalid choice"),
    (["--layers", ","], "at least one name"), (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--resume"], "--resume needs the --run-id"), (["--resume", "--run-id", "ghost"], "nothing to resume"),
    (["--layers", "fc9"], "no layer matches 'fc9'"),
    (["--data-dir", "/tmp"], "--data-dir /tmp is not read by mnist-5k"),
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent"], "--data-dir /nonexistent does not exist"),
    # numbers of 5,000 digits (Python's own int() refuses them with a ValueError), and other spellings
    (["--seed", "1" * 5000], "expected a seed.*5,000 digits"), (["--epochs", "9" * 5000], "5,000 digits"),
    (["--batch-size", "1" * 5000], "5,000 digits"), (["--train-size", "1e3"], "positive integer"),
    (["--lr", "1" * 5000], "expected a learning rate"), (["--label-noise", "0." + "0" * 5000], "fraction"),
    (["--seed", "+-1"], "expected a seed"), (["--seed", " "], "expected a seed"), (["--seed", "0x10"], "expected a seed"),
    (["--actmax-tol", "nan"], "fraction"), (["--ray-gpus", "2"], "fraction of a GPU"),
    (["--ray-gpus", "nan"], "fraction of a GPU"), (["--ablation-width", "0"], "expected an interval width"),
    # resources named as what they are, before anything is allocated
    (["--model", "mlp", "--widths", "9999999,9999999"], "too large: .* parameters need"),
]
FILE_CASES: list[tuple[str, list[str], str]] = [  # file fixture key, arguments, message
    ("code", ["--checkpoint", "{}", "--epochs", "0"], "never unpickled"),
    ("module", ["--checkpoint", "{}", "--epochs", "0"], "never unpickled"),
    ("garbage", ["--checkpoint", "{}", "--epochs", "0"], "cannot read --checkpoint"),
    ("text", ["--checkpoint", "{}", "--epochs", "0"], "cannot read --checkpoint .*damaged"),
    ("zip", ["--checkpoint", "{}", "--epochs", "0"], "cannot read --checkpoint .*damaged"),
    ("random", ["--checkpoint", "{}", "--epochs", "0"], "cannot read --checkpoint"),
    ("tensor", ["--checkpoint", "{}", "--epochs", "0"], "holds no state dict"),
    ("no-tensors", ["--checkpoint", "{}", "--epochs", "0"], "holds no state dict"),
    ("other-model", ["--checkpoint", "{}", "--epochs", "0"], "does not fit the model"),
    ("fifo", ["--checkpoint", "{}", "--epochs", "0"], "is not a file"),
    ("dir", ["--checkpoint", "{}", "--epochs", "0"], "is not a file"),
    ("nan-weights", ["--checkpoint", "{}", "--epochs", "0"], "holds NaN or infinite weights \\(first in 'fc1.bias'\\)"),
    ("sparse", ["--checkpoint", "{}", "--epochs", "0"], "holds a torch.sparse_coo tensor \\('fc1.weight'\\)"),
    ("meta", ["--checkpoint", "{}", "--epochs", "0"], "holds a meta tensor \\('fc1.weight'\\)"),
    ("complex", ["--checkpoint", "{}", "--epochs", "0"], "holds a complex tensor \\('fc1.weight'\\)"),
    ("one-each", ["--dataset", "folder:{}"], "class 'a' has 1 example\\(s\\).*at least two"),
    ("one-class", ["--dataset", "folder:{}"], "needs at least two"),
    ("tiny", ["--dataset", "folder:{}"], "cannot take images of 1x8x8.*Resize"),
    ("bomb", ["--dataset", "folder:{}"], "PIL will open|60,000x60,000"),
    ("mixed", ["--dataset", "folder:{}"], "resize the images to one size"),
    ("empty", ["--dataset", "folder:{}"], "is empty \\(0 bytes\\)"),
    ("garbage-image", ["--dataset", "folder:{}"], "cannot read image .*Replace or remove the file"),
    ("loop", ["--dataset", "folder:{}"], "needs at least two"),
    ("to-root", ["--dataset", "folder:{}"], "a/up \\(in class 'a'\\) leads to the dataset folder, so images of other"),
    ("to-class", ["--dataset", "folder:{}"], "a/more \\(in class 'a'\\) leads to class folder 'b'.*Remove the link"),
    ("proc", ["--dataset", "folder:{}"], "is a system folder"),
]
OTHER_CASES: list[tuple[list[str], str]] = [
    (["sweep", "--seeds", "1,-2"], "expected a seed"), (["sweep", "--label-noise", "0,nan"], "fraction"),
    (["sweep", "--experiment", "bad id\n"], "invalid run id"),
    (["layers", "--input-shape", "1,0,28"], "C,H,W"), (["layers", "--input-shape", "1,28"], "C,H,W"),
    (["layers", "--input-shape", "1,4,4"], "cannot take images of 1x4x4"), (["layers", "--classes", "0"], "positive"),
    (["gc", "--warehouse", "/nonexistent/x"], None),
    (["gc", "--warehouse", "/dev/null/x"], "/dev/null is not a folder, so it cannot hold the staging folder"),
    (["list", "--warehouse", "/etc/hostname"], "/etc/hostname is not a folder, so it cannot hold the runs folder"),
    (["experiment", "crossed-sevens", "--seed", str(2**64)], "expected a seed"),
    (["experiment", "crossed-sevens", "--seed", "-1"], "expected a seed"),
    (["experiment", "crossed-sevens", "--seed", "\u0663"], "expected a seed"),
    (["experiment", "crossed-sevens", "--seed", "1" * 5000], "expected a seed"),
    (["experiment", "crossed-sevens", "--run-id", "a\nb"], "invalid run id"),
    (["sweep", "--seeds", "0," + "1" * 5000], "expected a seed"),
    (["layers", "--classes", "2147483647"], "too large: 182,536,170,851 parameters"),
    (["layers", "--model", "mlp", "--widths", "9999999,9999999"], "too large"),
    (["layers", "--classes", "9" * 5000], "5,000 digits"),
    (["layers", "--input-shape", "3,65536,65536"], "use smaller images"),
]


def _call(main, argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own error: usage line and one error line
        code = e.code
    return code, capsys.readouterr().err


def _nothing_written(wh: Path) -> bool:
    return all(not (wh / sub).exists() or not any((wh / sub).iterdir()) for sub in ("runs", ".staging"))


@pytest.mark.parametrize("args,message", RUN_CASES, ids=[f"run{i:02d}" for i in range(len(RUN_CASES))])
def test_bad_run_arguments(tmp_path, capsys, args, message):
    wh = tmp_path / "wh"
    code, err = _call(compute_main, ["run", "--warehouse", str(wh), *QUICK, *args], capsys)
    assert code == 2 and "error:" in err and "Traceback" not in err
    import re

    assert re.search(message, err), err
    assert _nothing_written(wh)


@pytest.mark.parametrize("key,args,message", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_files(tmp_path, capsys, files, key, args, message):
    wh = tmp_path / "wh"
    argv = ["run", "--warehouse", str(wh), "--epochs", "1", "--no-images", *[a.format(files[key]) for a in args]]
    code, err = _call(compute_main, argv, capsys)
    import re

    assert code == 2 and re.search(message, err), err
    assert len(err.strip().splitlines()) == 1  # one paragraph, not torch's advice to unpickle
    assert not files["marker"].exists() and _nothing_written(wh)


def test_a_checkpoint_whose_outputs_overflow_is_refused(tmp_path, capsys):
    """Finite weights so large that the logits overflow: with --epochs 0 nothing trains to notice, and every
    statistic would be NaN. The run stops at its evaluation and publishes nothing."""
    weights = LeNet5((1, 28, 28), 10).state_dict()
    weights["fc1.weight"].fill_(1e38)
    torch.save(weights, tmp_path / "huge.pt")
    wh = tmp_path / "wh"
    code, err = _call(compute_main, ["run", "--warehouse", str(wh), *QUICK, "--epochs", "0", "--checkpoint",
                                     str(tmp_path / "huge.pt")], capsys)
    assert code == 2 and "the model's loss on the training set is nan" in err, err
    assert not (wh / "runs").exists() or not any((wh / "runs").iterdir())


@pytest.mark.parametrize("argv,message", OTHER_CASES, ids=[f"other{i}" for i in range(len(OTHER_CASES))])
def test_bad_arguments_of_other_commands(tmp_path, capsys, argv, message):
    code, err = _call(compute_main, [*argv[:1], *(["--warehouse", str(tmp_path)] if argv[0] == "sweep" else []),
                                     *argv[1:]], capsys)
    if message is None:  # gc on a warehouse that does not exist: nothing to do, no error
        assert code == 0
        return
    import re

    assert code == 2 and re.search(message, err), err


@pytest.mark.parametrize("limit,value,message", [("MAX_FOLDER_ENTRIES", 5, "more than 5 files and folders"),
                                                  ("MAX_FOLDER_DEPTH", 0, "nested more than 0 folders deep"),
                                                  ("MAX_DATASET_BYTES", 1000, "GiB decoded, more than"),
                                                  ("MAX_IMAGE_PIXELS", 100, "at most 100 pixels per image")])
def test_folder_limits_are_checked_before_decoding(tmp_path, capsys, files, monkeypatch, limit, value, message):
    """The folder walk's and the decoder's limits, lowered so a small folder reaches each of them."""
    import compute.datasets.sources as sources

    monkeypatch.setattr(sources, limit, value)
    folder = files["mixed"] if limit in ("MAX_FOLDER_ENTRIES", "MAX_IMAGE_PIXELS") else files["loop"]
    code, err = _call(compute_main, ["run", "--warehouse", str(tmp_path / "wh"), *QUICK, "--dataset", f"folder:{folder}"],
                      capsys)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_a_planted_stage_file_is_refused_on_resume(tmp_path, capsys, files):
    """--resume reads stage files with weights_only: one holding code is refused, the code never runs."""
    stages = tmp_path / ".staging" / "r.stages"
    stages.mkdir(parents=True)
    (stages / "config.json").write_text(json.dumps({"model": "lenet5", "dataset": "mnist-5k", "epochs": 1,
                                                    "train_size": 100, "eval_size": 50, "images": None}))
    torch.save({"epoch": 1, "payload": Planted(files["marker"])}, stages / "train-epoch.pt")
    code, err = _call(compute_main, ["run", "--warehouse", str(tmp_path), "--run-id", "r", "--resume"], capsys)
    assert code == 2 and "cannot be loaded safely" in err and not files["marker"].exists()
    (stages / "config.json").write_text("[]")
    code, err = _call(compute_main, ["run", "--warehouse", str(tmp_path), "--run-id", "r", "--resume"], capsys)
    assert code == 2 and "saved configuration" in err


@pytest.mark.parametrize("edit, message", [
    ({"epochs": "x"}, "epochs must be a whole number from 0, got 'x'"), ({"lr": -1}, "lr must be a finite number above 0"),
    ({"batch_size": 0}, "batch_size must be a whole number from 1"), ({"dataset": 5}, "dataset must be a name"),
    ({"widths": "ab"}, "widths must be positive whole numbers"), ({"label_noise": 2.0}, "label_noise .* up to 1"),
    ({"train_size": -5}, "train_size must be a whole number from 1 or None"), ({"lr": 1e999}, "lr must be a finite"),
])
def test_a_saved_configuration_with_wrong_values_is_one_paragraph_on_resume(tmp_path, capsys, edit, message):
    """Each of these failed deep inside a stage with a TypeError, ValueError or AttributeError traceback."""
    stages = tmp_path / ".staging" / "r.stages"
    stages.mkdir(parents=True)
    saved = {"model": "lenet5", "dataset": "mnist-5k", "epochs": 1, "train_size": 100, "eval_size": 50,
             "images": None, **edit}
    (stages / "config.json").write_text(json.dumps(saved))
    code, err = _call(compute_main, ["run", "--warehouse", str(tmp_path), "--run-id", "r", "--resume"], capsys)
    import re

    assert code == 2 and err.startswith("error: the saved configuration") and re.search(message, err), err
    assert len(err.strip().splitlines()) == 1 and "start the run again without --resume" in err


def test_run_config_rules_accept_what_the_command_line_makes():
    from compute.errors import ConfigError
    from compute.run.config import RunConfig

    RunConfig(lr=1, label_noise=0, until_train_acc=1, threads=0, train_size=None, widths=(1,), layers=("fc*",))
    with pytest.raises(ConfigError, match="train_curves must be true or false, got '1'"):
        RunConfig(train_curves=1)
    with pytest.raises(ConfigError, match="ablation_width must be a finite number above 0, got 'nan'"):
        RunConfig(ablation_width=float("nan"))


def test_stage_values_round_trip_through_weights_only_loading(tmp_path):
    from compute.ablation.outcome import LayerAblation, Outcome
    from compute.measure.train import TrainResult
    from compute.run.stage_store import StageStore

    value = {"base": Outcome(0.5, 0.25, np.arange(3.0), np.ones(3, np.float32)),
             "layers": {"fc1": LayerAblation(np.zeros(2), np.ones(2), np.eye(2), np.eye(2))},
             "result": TrainResult({"fc1": {"act": np.ones((1, 2, 3))}}, np.ones((1, 2), np.int64), [{"epoch": 1}]),
             "png": [b"\x89PNG"], "scalar": np.float32(1.5), "tuple": (1, "a", None)}
    store = StageStore(tmp_path)
    store.save("s", value)
    back = store.load("s")
    assert back["base"].loss == value["base"].loss and back["base"].class_accuracy.dtype == np.float32
    np.testing.assert_array_equal(back["result"].trace["fc1"]["act"], value["result"].trace["fc1"]["act"])
    assert back["png"] == [b"\x89PNG"] and back["scalar"].dtype == np.float32 and back["tuple"] == (1, "a", None)


EXPORT_CASES: list[tuple[list[str], str]] = [
    (["--limit", "1e30"], "positive number of units"), (["--limit", str(10**30)], "positive number of units"),
    (["--limit", "-1"], "positive number of units"), (["--limit", "0"], "positive number of units"),
    (["--limit", "\u0667"], "positive number of units"), (["--pref-class", str(10**30)], "class index"),
    (["--class", "-1"], "class index"), (["--format", "xml"], "invalid choice"),
    (["--limit", "1" * 5000], "5,000 digits"), (["--pref-class", "1" * 5000], "5,000 digits"),
    (["--class", "1" * 5000], "5,000 digits"), (["--layer", "fc1\n"], "layer name"),
    (["--range", "selectivity:" + "1" * 5000 + ":"], "selectivity"), (["--limit", "0" * 5000 + "5", "--pref-class", "x"],
                                                                    "class index"),
    (["--range", "selectivity:nan:"], "selectivity"), (["--range", "selectivity:1e999:"], "selectivity"),
]


@pytest.mark.parametrize("args,message", EXPORT_CASES, ids=[f"export{i}" for i in range(len(EXPORT_CASES))])
def test_bad_export_options(tmp_path, capsys, warehouse_root, args, message):
    out = tmp_path / "units.csv"
    code, err = _call(warehouse_main, ["export", "--warehouse", str(warehouse_root), "--run", RUN_ID, *args,
                                       "-o", str(out)], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_export_never_overwrites_without_force_nor_writes_into_the_warehouse(tmp_path, capsys, warehouse_root):
    run_dir = warehouse_root / "runs" / RUN_ID
    before = (run_dir / "units.parquet").read_bytes()
    for target, message in ((run_dir / "units.parquet", "inside the warehouse's runs/"),
                            (run_dir / "new.csv", "inside the warehouse's runs/"),
                            (warehouse_root / ".staging" / "x.csv", "inside the warehouse's .staging/"),
                            (tmp_path, "is a folder")):
        code, err = _call(warehouse_main, ["export", "--warehouse", str(warehouse_root), "--run", RUN_ID, "--force",
                                           "-o", str(target)], capsys)
        assert code == 2 and message in err, err
    link = tmp_path / "link.parquet"
    link.symlink_to(run_dir / "units.parquet")
    code, err = _call(warehouse_main, ["export", "--warehouse", str(warehouse_root), "--run", RUN_ID, "--force",
                                       "-o", str(link)], capsys)
    assert code == 2 and "inside the warehouse" in err
    assert (run_dir / "units.parquet").read_bytes() == before and not (run_dir / "new.csv").exists()
    out = tmp_path / "units.csv"
    out.write_text("keep me")
    code, err = _call(warehouse_main, ["export", "--warehouse", str(warehouse_root), "--run", RUN_ID, "-o", str(out)],
                      capsys)
    assert code == 2 and "--force" in err and out.read_text() == "keep me"
    assert warehouse_main(["export", "--warehouse", str(warehouse_root), "--run", RUN_ID, "--force", "-o", str(out)]) == 0
    assert out.read_text().startswith("run_id,") or "layer" in out.read_text().splitlines()[0]


def test_figures():
    """Bad inputs tried here, for the closing note: the parametrized corpora, the two planted or damaged
    stage-folder files and the seven export targets refused or protected."""
    tried = len(RUN_CASES) + len(FILE_CASES) + len(OTHER_CASES) + len(EXPORT_CASES) + 2 + 7 + 4
    print(f"bad inputs with a clear error (or a clean no-op) / tried: {tried} / {tried}")


@pytest.mark.parametrize("model,dataset", [("torchvision:resnet18", "mnist"), ("lenet5", "idx:../shared/data/mnist/"),
                                           ("mlp", "crossed-sevens:/data/mnist"), ("x" * 300, "folder:/a/b c/"),
                                           ("lenet5", "corner-mark:")])
def test_default_run_ids_are_valid(model, dataset):
    """A run without --run-id is named from its model and data; names with ':' or '/' must still be ids."""
    from compute.run.config import RunConfig, default_run_id
    from warehouse.layout import check_run_id

    rid = default_run_id(RunConfig(model=model, dataset=dataset))
    assert check_run_id(rid) == rid and ":" not in rid and "/" not in rid
