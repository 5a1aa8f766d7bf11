"""The built-in networks and how their hidden units are probed.

Each model names its probe points in ``probes``: layer name -> the ``ProbePoint`` (an activation,
ReLU by default, ``--activation`` for another kind) whose input is the layer's pre-activation and
whose output is the activity that statistics, gradients and ablations refer to. Activations are
never in-place so that both tensors survive the forward pass.
"""

from __future__ import annotations

import io
import math
import pickle
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.modules.utils import _pair, consume_prefix_in_state_dict_if_present

from compute.nets.activations import BY_NAME, ProbePoint, fill_of, unit_dim, units_first
from compute.nets.catalog import MODEL_NAMES, OPTIONS, TORCHVISION_PREFIX, ModelOption
from compute.nets.discover import trace_probes
from compute.nets.probe import Probe
from compute.nets.size import check_model_size
from compute.errors import ConfigError
from warehouse.publish import write_file
from warehouse.parse import shown

@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model before loading its weights."""

    name: str
    in_shape: tuple[int, int, int]
    n_classes: int
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["in_shape"] = list(self.in_shape)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ModelSpec:
        return ModelSpec(d["name"], tuple(d["in_shape"]), int(d["n_classes"]), dict(d.get("options", {})))


class Probed(Protocol):
    """What every stage needs of a network: its probe points. ``probes`` maps layer name to the path
    of the activation module read at that layer; ``probe_modules`` resolves them to the modules."""

    probes: dict[str, str]

    def probe_modules(self) -> dict[str, nn.Module]: ...


class ProbedModel(nn.Module):
    """A classifier that lists its probe points (the built-in models and traced graphs; see ``Probed``)."""

    probes: dict[str, str]

    def probe_modules(self) -> dict[str, nn.Module]:
        return {layer: self.get_submodule(path) for layer, path in self.probes.items()}


def activation(kind: str = "relu") -> ProbePoint:
    """A probe point of activation ``kind`` (a name of ``compute.nets.activations.KINDS``) on dimension 1."""
    return ProbePoint(BY_NAME[kind].modules[0](), kind)


def _flat_size(body: nn.Sequential, in_shape: tuple[int, int, int]) -> int:
    """Features per example after ``body`` (convolutions, max-pools and layers that keep the shape), by
    torch's output-size formula rather than a forward pass: under ``check_model_size``'s meta device a
    forward imports torch._dynamo and sympy, ~2 s of every fresh process. A layer left with no pixels
    raises RuntimeError, as the forward pass would."""
    channels, size = in_shape[0], list(in_shape[1:])
    for m in body:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k, s, p, d = (_pair(getattr(m, a)) for a in ("kernel_size", "stride", "padding", "dilation"))
            size = [(n + 2 * pi - di * (ki - 1) - 1) // si + 1 for n, ki, si, pi, di in zip(size, k, s, p, d)]
            channels = m.out_channels if isinstance(m, nn.Conv2d) else channels
            if min(size) < 1:
                raise RuntimeError(f"{type(m).__name__} {k[0]}x{k[1]} leaves no pixels of the image")
        elif not isinstance(m, (nn.BatchNorm2d, ProbePoint, nn.Dropout)):
            raise TypeError(f"_flat_size does not know the output size of {type(m).__name__}")
    return channels * math.prod(size)


class LeNet5(ProbedModel):
    """LeCun's LeNet-5 with ReLUs (or ``activation``): conv 6@5x5, pool, conv 16@5x5, pool, fc 120, fc 84,
    fc out.

    28x28 inputs are padded by 2 so the layer sizes match the original 32x32 design.
    """

    def __init__(self, in_shape: tuple[int, int, int], n_classes: int, activation_kind: str = "relu") -> None:
        super().__init__()
        c, h, _ = in_shape
        self.conv1 = nn.Conv2d(c, 6, 5, padding=2 if h < 32 else 0)
        self.relu1 = activation(activation_kind)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = activation(activation_kind)
        self.pool2 = nn.MaxPool2d(2)
        body = nn.Sequential(self.conv1, self.relu1, self.pool1, self.conv2, self.relu2, self.pool2)
        self.fc1 = nn.Linear(_flat_size(body, in_shape), 120)
        self.relu3 = activation(activation_kind)
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = activation(activation_kind)
        self.fc3 = nn.Linear(84, n_classes)
        self.probes = {"conv1": "relu1", "conv2": "relu2", "fc1": "relu3", "fc2": "relu4"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(x.flatten(1)))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


class MLP(ProbedModel):
    """Morcos et al.'s MNIST multi-layer perceptron: ReLU hidden layers fc1..fcN, linear output."""

    def __init__(self, in_shape: tuple[int, int, int], n_classes: int, widths: tuple[int, ...] = (128, 128),
                 activation_kind: str = "relu") -> None:
        super().__init__()
        if not widths or any(w < 1 for w in widths):
            raise ConfigError(f"mlp widths must be positive integers, got {list(widths)}.")
        dims = [in_shape[0] * in_shape[1] * in_shape[2], *widths]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.relus = nn.ModuleList(activation(activation_kind) for _ in widths)
        self.out = nn.Linear(dims[-1], n_classes)
        self.probes = {f"fc{i + 1}": f"relus.{i}" for i in range(len(widths))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for lin, relu in zip(self.hidden, self.relus):
            x = relu(lin(x))
        return self.out(x)


# Morcos et al.'s CIFAR-10 net has 11 weight layers; this keeps that depth (8 conv + 2 hidden fc
# + output) with channel counts scaled by a width multiplier so it trains on a CPU.
#: What wrappers put before every parameter name: DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_CIFAR_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M")
_CIFAR_FC = (512, 512)


class CifarConvNet(ProbedModel):
    """An 11-weight-layer VGG-style conv net (conv-BN-ReLU blocks) with a width multiplier."""

    def __init__(self, in_shape: tuple[int, int, int], n_classes: int, width: float = 0.25,
                 activation_kind: str = "relu") -> None:
        super().__init__()
        if width <= 0:
            raise ConfigError(f"cifar-convnet width multiplier must be > 0, got {width}.")
        layers: list[nn.Module] = []
        self.probes = {}
        channels, n_conv = in_shape[0], 0
        for item in _CIFAR_PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, round(int(item) * width))
            n_conv += 1
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), activation(activation_kind)]
            self.probes[f"conv{n_conv}"] = f"features.{len(layers) - 1}"
            channels = out
        self.features = nn.Sequential(*layers)
        dims = [_flat_size(self.features, in_shape), *(max(1, round(w * width)) for w in _CIFAR_FC)]
        head: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims, dims[1:])):
            head += [nn.Linear(a, b), activation(activation_kind)]
            self.probes[f"fc{i + 1}"] = f"classifier.{len(head) - 1}"
        head.append(nn.Linear(dims[-1], n_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _adapt_input_channels(net: nn.Module, channels: int) -> None:
    """Replace the first conv with one reading ``channels`` input channels (e.g. greyscale)."""
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels != channels:
                new = nn.Conv2d(channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                                module.dilation, module.groups, module.bias is not None, module.padding_mode)
                parent, _, child = name.rpartition(".")
                setattr(net.get_submodule(parent) if parent else net, child, new)
            return


def _torchvision_model(spec: ModelSpec) -> ProbedModel:
    import torchvision

    name = spec.name.removeprefix(TORCHVISION_PREFIX)
    try:
        # A ViT is built for one image size: the dataset's (square, a multiple of the patch size).
        size = {"image_size": spec.in_shape[1]} if name.startswith("vit_") else {}
        net = torchvision.models.get_model(name, weights=None, num_classes=spec.n_classes, **size)
    except (ValueError, TypeError) as e:
        known = ", ".join(m for m in torchvision.models.list_models(torchvision.models) if "resnet" in m or "vgg" in m)
        raise ConfigError(f"unknown or unsupported torchvision model {name!r} ({e}). Classifiers such as: {known}.") from e
    _adapt_input_channels(net, spec.in_shape[0])
    return trace_probes(net, spec.in_shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., ProbedModel]  # (in_shape, n_classes, **options)
    options: tuple[ModelOption, ...] = ()


# Called with every option of the model (``_build`` fills in the catalog's defaults), so none here.
_BUILDERS: dict[str, Callable[..., ProbedModel]] = {
    "lenet5": lambda s, k, activation: LeNet5(s, k, activation),
    "mlp": lambda s, k, widths, activation: MLP(s, k, tuple(widths), activation),
    "cifar-convnet": lambda s, k, width, activation: CifarConvNet(s, k, float(width), activation),
}
#: Each built-in model of ``compute.nets.catalog`` (its name and options) with how it is built.
REGISTRY: dict[str, ModelEntry] = {name: ModelEntry(name, _BUILDERS[name], options) for name, options in OPTIONS.items()}


def input_error(model: str, in_shape: tuple[int, ...], error: Exception) -> ConfigError:
    """The error for images a model cannot take (too small for its convolutions and pooling)."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    size = "x".join(map(str, in_shape))
    return ConfigError(
        f"model {model} cannot take images of {size} (channels x height x width): {first}. Resize the images, "
        f"e.g. to 28x28 for lenet5 and mlp or 32x32 for cifar-convnet (PIL: Image.open(p).resize((28, 28)).save(p); "
        f"or torchvision.transforms.Resize), or choose a model that takes this size.")


def build_model(spec: ModelSpec) -> ProbedModel:
    """A freshly initialised model for ``spec`` (seed torch first for reproducible weights), after
    checking that it fits in memory (``compute.nets.size``)."""
    check_model_size(lambda: _build(spec), spec.in_shape, f"model {spec.name} ({spec.n_classes:,} classes)")
    try:
        return _build(spec)
    except MemoryError:
        raise ConfigError(f"model {spec.name} does not fit in this machine's memory; choose smaller widths or "
                          f"fewer classes.") from None
    except (RuntimeError, AssertionError) as e:  # a conv or pool left with no pixels; a size a ViT refuses
        raise input_error(spec.name, spec.in_shape, e) from None


def _build(spec: ModelSpec) -> ProbedModel:
    if spec.name.startswith(TORCHVISION_PREFIX):
        return _torchvision_model(spec)
    entry = REGISTRY.get(spec.name)
    if entry is None:
        raise ConfigError(f"unknown model {spec.name!r}; choose one of: {', '.join(MODEL_NAMES)}.")
    return entry.build(spec.in_shape, spec.n_classes, **{o.name: spec.options.get(o.name, o.default)
                                                           for o in entry.options})


def save_checkpoint(model: ProbedModel, spec: ModelSpec | None, path: Path) -> None:
    """Weights, the spec to rebuild the model (None for a model given from Python: only weights) and
    the probe points' mean-ablation values if the run set them.

    Only tensors and plain values, so ``torch.load(weights_only=True)`` reads it back: no code runs.
    """
    buffer = io.BytesIO()
    fills = {layer: m.fill.cpu() for layer, m in model.probe_modules().items() if fill_of(m) is not None}
    torch.save({"spec": spec.to_dict() if spec else None, "state_dict": model.state_dict(), "fills": fills}, buffer)
    write_file(path, buffer.getbuffer(), "the checkpoint")


def _load_safely(source: Path | bytes, what: str) -> Any:
    """``torch.load(weights_only=True)`` with its errors as one paragraph: code in a file is never run."""
    if isinstance(source, Path) and not source.is_file():
        raise ConfigError(f"{what} {source} is not a file; pass the path of a file saved with torch.save.")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(source) if isinstance(source, bytes) else source, map_location="cpu",
                              weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # damaged bytes, not a refused class or function
            raise ConfigError(f"cannot read {what} {source if isinstance(source, Path) else ''}: it is not a file "
                              f"written by torch.save (or it is damaged).") from None
        raise ConfigError(
            f"{what} {source if isinstance(source, Path) else ''} holds Python objects beyond tensors (e.g. a whole "
            f"pickled model), which are never unpickled because loading them can run code. Save the weights with "
            f"torch.save(model.state_dict(), path) and pass that file.") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {source if isinstance(source, Path) else ''}: {e.strerror or e}. "
                          f"Check the path and its permissions.") from None
    except Exception as e:  # noqa: BLE001 - damaged bytes make the unpickler raise almost anything (IndexError...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = f"{type(e).__name__}: {first}" if isinstance(e, (IndexError, KeyError)) else first
        raise ConfigError(f"cannot read {what} {source if isinstance(source, Path) else ''}: it is not a file "
                          f"written by torch.save, or it is damaged ({first}). It must be a file written by "
                          f"torch.save holding a state dict.") from None


def _plain_tensor(v: torch.Tensor) -> bool:
    """A dense real tensor with values: what the finiteness check and ``load_state_dict`` can read."""
    return v.layout == torch.strided and not (v.is_meta or v.is_complex() or v.is_quantized)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load trained weights into ``model`` from a file of ours or a plain state dict.

    Accepts ``{"spec", "state_dict"}`` (this project's checkpoints), ``{"state_dict": ...}`` or
    ``{"model": ...}`` (common training scripts), or a bare state dict; names that all start with
    ``module.`` (a model saved inside DataParallel or DistributedDataParallel) or ``_orig_mod.`` (one
    saved after torch.compile) lose that prefix, as loading them into the plain model needs.
    """
    state = _load_safely(Path(path), "--checkpoint")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ConfigError(f"--checkpoint {path} holds no state dict (a mapping of parameter names to tensors); "
                          f"save one with torch.save(model.state_dict(), path).")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):  # (renamed in place: the mapping was just loaded)
            consume_prefix_in_state_dict_if_present(state, prefix)
    odd = next((k for k, v in state.items() if not _plain_tensor(v)), None)
    if odd is not None:  # no values to check or copy (meta), or ops the checks and load_state_dict lack (sparse)
        v = state[odd]
        kind = ("meta" if v.is_meta else "complex" if v.is_complex() else "quantized" if v.is_quantized
                else str(v.layout))
        raise ConfigError(f"--checkpoint {path} holds a {kind} tensor ({shown(odd)}), not plain weights: every value "
                          f"must be a dense real tensor holding its values (a meta tensor holds none; a sparse one "
                          f"needs tensor.to_dense()). Save the state dict of a loaded model again.")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:  # every statistic of the run would be NaN, published as if it meant something
        raise ConfigError(f"--checkpoint {path} holds NaN or infinite weights (first in {shown(bad)}), as a diverged "
                          f"training leaves them; use an earlier checkpoint or retrain with a lower --lr.")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ConfigError(f"--checkpoint {path} does not fit the model: {str(e).strip().splitlines()[-1].strip()} "
                          f"Check --model and the dataset's channels/classes.") from None
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"--checkpoint {path} does not fit the model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}. Check --model and the dataset's channels/classes."
        )


def load_checkpoint(source: Path | bytes) -> tuple[ProbedModel, ModelSpec | None]:
    """Rebuild a model saved by ``save_checkpoint``, in eval mode (``weights_only`` loading only).

    ``source`` is a path or the file's bytes (``warehouse.validate.verified_bytes``, checked against the
    run's manifest). A run of a model given from Python holds only weights: rebuild that model and
    use ``load_weights``.
    """
    blob = _load_safely(source, "checkpoint")
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        raise ConfigError("the checkpoint is not one of this project's (no state_dict); recompute the run.")
    if blob.get("spec") is None:
        raise ConfigError("this run's model was given from Python (compute.api.analyze), so its checkpoint holds "
                          "only weights: build the model in Python and load them with "
                          "compute.nets.models.load_weights.")
    try:
        spec = ModelSpec.from_dict(blob["spec"])
        model = build_model(spec)
        model.load_state_dict(blob["state_dict"])
        modules = model.probe_modules()
        for layer, fill in (blob.get("fills") or {}).items():  # the run's mean-ablation values
            modules[layer].fill = fill
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"the checkpoint does not rebuild its model: {str(e).strip().splitlines()[0]}. "
                          f"Recompute the run.") from None
    return model.eval(), spec


def layer_shapes(model: ProbedModel, in_shape: tuple[int, int, int], device: str = "cpu",
                 n_classes: int | None = None) -> dict[str, tuple[int, ...]]:
    """Activation shape of one example at each probe point, units first: (C, H, W) for conv maps,
    (U,) for linear layers, (C, T) for token units, (C, H, W) for channels-last maps too.

    A probe point whose output has no (batch, units) layout is a ConfigError naming it. With ``n_classes``,
    the same pass checks the model returns a logit per class (more are allowed: a pretrained head scored on
    some of its classes); a model given from Python with fewer, or outputs of another shape, would fail in
    the first loss with torch's IndexError or a shape error."""
    modules = model.probe_modules()
    with torch.no_grad(), Probe(modules) as probe:
        out = model.eval()(torch.zeros(1, *in_shape, device=device))
    if n_classes is not None and not (isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] >= n_classes):
        got = f"of shape {tuple(out.shape[1:])}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ConfigError(f"the model's output for one image is {got}, but the data has {n_classes} classes: a "
                          f"classifier must return logits of shape (batch, {n_classes}), one per class. Give the "
                          f"model a head of {n_classes} outputs, or check the labels and class names of the data.")
    shapes = {}
    for name, t in probe.post.items():
        if t.dim() < 2:
            raise ConfigError(f"probe point {name} outputs a tensor of shape {tuple(t.shape)}, which has no "
                              f"(batch, units) layout to reduce per example. Leave it out with --layers.")
        shapes[name] = tuple(units_first(t, unit_dim(modules[name])).shape[1:])
    return shapes
