"""Supported architectures: probe points, units and the run time of a small run, per torchvision model.

For each model (random initial weights, adapted to 3 input channels and 3 classes): the probe
points and units of the whole model (unit counts do not depend on the image size: a unit is a
channel, a neuron or a token-wise neuron), the activation kinds found, the calls skipped and why,
and the wall time of ``compute.api.analyze`` on ``--eval-size`` real digits (3 classes, padded to
``--size`` pixels, repeated on three channels) probing ``--layers`` of the model (default: its last
probe point), without training and without the images stage (``--images`` adds it). Prints one
Markdown table row per model and the machine's load average, which the README's table quotes.

    .venv/bin/python benchmarks/architectures.py [--models resnet18,vit_b_32,...] [--eval-size 64]
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from compute.api import analyze  # noqa: E402
from compute.datasets.sources import ImageSet, load_dataset  # noqa: E402
from compute.images.config import ActMaxConfig, ImageConfig  # noqa: E402
from compute.nets.models import ModelSpec, _torchvision_model, layer_shapes  # noqa: E402
from compute.threads import torch_threads  # noqa: E402

MODELS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_32")


def digits(n: int, size: int, classes: int = 3) -> ImageSet:
    test = load_dataset("mnist-5k").test
    keep = torch.cat([torch.nonzero(test.labels == c).flatten()[:n // classes] for c in range(classes)])
    pad = (size - 28) // 2
    images = F.pad(test.images[keep], (pad, size - 28 - pad, pad, size - 28 - pad)).repeat(1, 3, 1, 1)
    return ImageSet(images.contiguous(), test.labels[keep], tuple(map(str, range(classes))), "rgb-digits")


def model(name: str, size: int):
    if name.startswith("vit_"):  # torchvision's ViTs take their own image size: build one for ours
        from torchvision.models import VisionTransformer

        patch = int(name.rsplit("_", 1)[1])
        net = VisionTransformer(image_size=size, patch_size=patch, num_layers=12, num_heads=12, hidden_dim=768,
                                mlp_dim=3072, num_classes=3)
        from compute.nets.discover import trace_probes

        return trace_probes(net, (3, size, size))
    return _torchvision_model(ModelSpec(f"torchvision:{name}", (3, size, size), 3))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--eval-size", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--layers", default=None, help="layer patterns for every model (default: its last probe point)")
    p.add_argument("--images", action="store_true")
    args = p.parse_args()
    data = digits(args.eval_size, args.size)
    print("| model | probe points | units | activations (probe points) | skipped calls | analyzed layers "
          "(units) | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        torch.manual_seed(0)
        with torch_threads(1):
            net = model(name, args.size)
            shapes = layer_shapes(net, data.shape)
            kinds = Counter(m.kind for m in net.probe_modules().values())
            skipped = Counter(why.split(":")[0] for why in net.skipped.values())
            layers = args.layers.split(",") if args.layers else [list(net.probes)[-1]]
            chosen = [n for n in net.probes if any(fnmatch.fnmatchcase(n, p) for p in layers)]
            images = ImageConfig(top_k=4, actmax=ActMaxConfig(steps=16, restarts=2)) if args.images else None
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                analyze(net, data, layers=layers, warehouse=tmp, run_id="bench", images=images)
                seconds = time.perf_counter() - start
        print(f"| {name} | {len(shapes)} | {sum(s[0] for s in shapes.values()):,} | "
              f"{', '.join(f'{k} ({v})' for k, v in kinds.items())} | "
              f"{', '.join(f'{v}: {k}' for k, v in skipped.items()) or 'none'} | "
              f"{', '.join(chosen)} ({sum(shapes[c][0] for c in chosen):,}) | {seconds:.0f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.eval_size} examples "
          f"{args.size}x{args.size}, images {'on' if args.images else 'off'}")


if __name__ == "__main__":
    main()
