"""Activation maximization: inputs that drive a unit up ("HappyMap") or down ("SadMap").

Gradient ascent on the input, from noise, on the unit's *pre-activation averaged over positions*
(for a conv unit: the whole channel; for a linear unit: the neuron). The pre-activation keeps a
gradient where the ReLU is off, so a SadMap can be found too. Regularizers keep the images
natural-looking rather than adversarial noise:

- L2 decay: ``l2 * sum (x - m)^2``, pulling pixels towards the data's mean pixel m (default 5e-4);
- total variation: ``tv * sum |x[i+1] - x[i]|`` over rows and columns (default 5e-4);
- jitter: the image is shifted by up to ``jitter`` pixels (cyclically) at each step (default 2);
- Gaussian blur (sigma ``blur_sigma``, default 0.5) every ``blur_every`` steps (default 4);
- pixels are clipped to the input range [0, 1] after each step.

Adam (torch's update rule, written out on the stack) with step size ``lr`` (default 0.1) for at
most ``steps`` steps (default 64), ``restarts`` restarts (default 3) from m + ``init_std``
(default 0.1) x Gaussian noise. All settings: ``ActMaxConfig``.

**Convergence.** The steps are cut into windows of ``window`` steps (default 8). An image has
converged when the mean of its objective (the unit's activation, sign-adjusted: up for a HappyMap,
down for a SadMap) over a window improved on the previous window's mean by less than ``tol``
(default 0.01) relative to that mean's size (at least 1e-3). A converged image is frozen and leaves
the stack; the stack stops when every image has converged, or after ``steps``; ``tol=0`` never
stops early. The objective decides, not the image: with Adam's fixed step size and the jitter, an
image keeps changing by about 8% (``||x_t - x_(t-8)|| / ||x_t||``, median) per window long after
its activation has stopped rising. The defaults come from ``benchmarks/atlas.py``'s figure of how
much images and activations still change after N steps (README.md, "Speed of a whole run").

**The stack.** Every unit of a layer (in chunks of at most ``batch`` images), both directions and
every restart are optimised as one batch; jitter, blur, decay and the Adam update are tensor
operations on the whole stack, with no per-image Python work in the steps. The model is in eval
mode, the update is per element, the jitter of step t is the same for every image and a frozen
image no longer moves, so each image follows exactly the path it would alone. Restarts use
different noise seeds; their **consistency** is the mean pairwise Pearson correlation of the final
images (1 = the same picture every time, about 0 = unrelated pictures, so a single map would mislead).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from compute.images.config import ActMaxConfig
from compute.nets.convs import fast_convs
from compute.nets.forward import run_to
from compute.nets.pools import fast_pools
from compute.nets.probe import units_of
from compute.progress import bar

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
ADAM_EPS = 1e-8

# Called every `window` steps with (steps done, relative change ||x_t - x_(t-window)|| / ||x_t|| and
# mean sign-adjusted objective over the window, of each image still in the stack).
WindowHook = Callable[[int, torch.Tensor, torch.Tensor], None]
OBJECTIVE_FLOOR = 1e-3  # the smallest objective size a relative gain is taken against


@dataclass
class Maps:
    """Final images (U, R, C, H, W), best restart first; the activation each reached (U, R); the
    consistency across restarts (U,); and the steps each image took (U, R), ``steps`` if it never
    converged."""

    images: np.ndarray
    values: np.ndarray
    consistency: np.ndarray
    steps: np.ndarray


def chunk_units(cfg: ActMaxConfig) -> int:
    """Units per stack: ``cfg.batch`` images of 2 directions x ``cfg.restarts`` restarts."""
    return max(1, cfg.batch // (2 * cfg.restarts))


def concat(parts: Sequence[Maps]) -> Maps:
    """Maps of consecutive unit ranges as one, in order."""
    return Maps(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("images", "values", "consistency", "steps")))


def consistency(images: torch.Tensor) -> torch.Tensor:
    """Mean pairwise Pearson correlation of the R images of each unit, (U, R, ...) -> (U,).

    A constant image has no defined correlation; it counts as 1 with an identical constant image
    and 0 otherwise.
    """
    u, r = images.shape[:2]
    if r < 2:
        return torch.ones(u)
    flat = images.reshape(u, r, -1).double()
    centred = flat - flat.mean(2, keepdim=True)
    norm = centred.norm(dim=2, keepdim=True)
    z = centred / torch.where(norm > 0, norm, 1.0)
    corr = z @ z.transpose(1, 2)  # (U, R, R)
    flat_const = norm.squeeze(2) == 0
    same = (flat[:, :, None, :] == flat[:, None, :, :]).all(3)
    corr = torch.where(flat_const[:, :, None] & flat_const[:, None, :], same.double(), corr)
    off = ~torch.eye(r, dtype=torch.bool)
    return corr[:, off].mean(1).float()


def _objective(model: nn.Module, module: nn.Module, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    pre, _ = run_to(model, module, x)
    return units_of(module, pre)[torch.arange(len(x), device=x.device), units].mean(1)


def _noise(cfg: ActMaxConfig, restart: int, unit: int, in_shape: tuple[int, int, int]) -> torch.Tensor:
    """The starting noise of one unit and restart: its own seed, whatever else is in the batch."""
    seed = (cfg.seed * 1_000_003 + restart * 100_003 + unit) % (2**63)
    return torch.randn(in_shape, generator=torch.Generator().manual_seed(seed))


def _tv_grad(x: torch.Tensor) -> torch.Tensor:
    """Gradient of sum |x[i+1] - x[i]| over rows and columns (sign(0) = 0, as autograd's abs)."""
    g = torch.zeros_like(x)
    dy = torch.sign(x[..., 1:, :] - x[..., :-1, :])
    dx = torch.sign(x[..., :, 1:] - x[..., :, :-1])
    g[..., 1:, :] += dy
    g[..., :-1, :] -= dy
    g[..., :, 1:] += dx
    g[..., :, :-1] -= dx
    return g


class _Blur:
    """torchvision's ``gaussian_blur`` (kernel 2*ceil(3 sigma)+1, reflect padding) as one grouped conv."""

    def __init__(self, sigma: float, channels: int, device: torch.device | str) -> None:
        half = int(math.ceil(3 * sigma))
        t = torch.linspace(-half, half, 2 * half + 1)
        k1 = torch.exp(-0.5 * (t / sigma) ** 2)
        k1 /= k1.sum()
        self.kernel = (k1[:, None] * k1[None, :]).expand(channels, 1, -1, -1).contiguous().to(device)
        self.pad = half

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        return F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), self.kernel, groups=x.shape[1])


@contextmanager
def _aten_conv_backward() -> Iterator[None]:
    """Convolution backward by ATen's own kernels instead of oneDNN's (the forward keeps oneDNN): on one
    CPU thread oneDNN's input gradient of a few-channel input is several times slower (LeNet-5's conv1
    on 720 digits: 103 ms against 21 ms), and a step is a forward and a backward (``benchmarks/atlas.py``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # flags() warns that TF32 on oneDNN needs an Intel GPU
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def _ascend(model: nn.Module, module: nn.Module, x: torch.Tensor, units: torch.Tensor, sign: torch.Tensor,
            mean: torch.Tensor, cfg: ActMaxConfig, progress, on_window: WindowHook | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimise the stack ``x`` (N, C, H, W); (final images, steps each took)."""
    out, n = x.clone(), len(x)
    steps = torch.full((n,), cfg.steps, dtype=torch.long)
    active = torch.arange(n, device=x.device)
    m, v, anchor = torch.zeros_like(x), torch.zeros_like(x), x.clone()
    score, last = torch.zeros(n, device=x.device), torch.full((n,), float("nan"), device=x.device)
    (b1, b2), shifts = ADAM_BETAS, torch.Generator().manual_seed(cfg.seed)
    blur = _Blur(cfg.blur_sigma, x.shape[1], x.device)
    for step in range(1, cfg.steps + 1):
        progress.update()
        dy, dx = (torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=shifts).tolist()
                  if cfg.jitter else (0, 0))
        xg = x.detach().requires_grad_()
        act = _objective(model, module, torch.roll(xg, (dy, dx), (2, 3)), units)
        with _aten_conv_backward():
            (g,) = torch.autograd.grad(-(sign * act).sum(), xg)
        with torch.no_grad():
            score += sign * act
            if cfg.l2:
                g.add_(x - mean, alpha=2 * cfg.l2)
            if cfg.tv:
                g.add_(_tv_grad(x), alpha=cfg.tv)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2 ** step)).add_(ADAM_EPS)
            x.addcdiv_(m, denom, value=-cfg.lr / (1 - b1 ** step))
            if step % cfg.blur_every == 0:
                x = blur(x)
            x.clamp_(0, 1)
            if step % cfg.window:
                continue
            score /= cfg.window
            if on_window is not None:
                change = (x - anchor).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)
                on_window(step, change.cpu(), score.cpu())
                anchor = x.clone()
            done = (score - last) < cfg.tol * last.abs().clamp_min(OBJECTIVE_FLOOR)  # False while last is NaN
            if cfg.tol > 0 and bool(done.any()):
                out[active[done]] = x[done]
                steps[active[done].cpu()] = step
                keep = ~done
                x, m, v, units, sign, active = x[keep], m[keep], v[keep], units[keep], sign[keep], active[keep]
                score, anchor = score[keep], anchor[keep]
                if not len(active):
                    break
            last, score = score, torch.zeros_like(score)
    out[active] = x
    return out, steps


def activation_maps(model: nn.Module, module: nn.Module, unit_ids: Sequence[int], in_shape: tuple[int, int, int],
                    mean_pixel: torch.Tensor, cfg: ActMaxConfig = ActMaxConfig(),
                    device: str = "cpu", desc: str | None = "actmax",
                    on_window: WindowHook | None = None) -> tuple[Maps, Maps]:
    """(HappyMaps, SadMaps) of units ``unit_ids`` of the layer whose probe is ``module``, in that order.

    Units are optimised in chunks of ``chunk_units(cfg)``, each chunk on its own, so any run of whole
    chunks computed apart (a work item) gives the same floats. ``desc`` names the progress bar (None:
    no bar); ``on_window`` sees each stack's relative changes every ``cfg.window`` steps (for the
    figure that chose the defaults).
    """
    cfg.check()
    model.eval()
    r, unit_ids = cfg.restarts, list(unit_ids)
    per_chunk = chunk_units(cfg)
    chunks = [unit_ids[i:i + per_chunk] for i in range(0, len(unit_ids), per_chunk)]
    mean = mean_pixel.reshape(1, -1, 1, 1).to(device)
    total = cfg.steps * len(chunks)
    progress = bar(None, desc, unit="step", total=total) if desc is not None else tqdm(total=total, disable=True)
    images, values, steps = [], [], []
    with fast_pools(model), fast_convs(model):  # the same values and gradients, faster (compute/nets/)
        for chunk in chunks:
            n = len(chunk)
            # Stack order: direction (happy, sad), restart, unit.
            units = torch.as_tensor(chunk).repeat(2 * r).to(device)
            sign = torch.cat([torch.ones(n * r), -torch.ones(n * r)]).to(device)
            noise = torch.stack([_noise(cfg, i, int(u), in_shape) for i in range(r) for u in chunk])
            x = (mean + cfg.init_std * torch.cat([noise, noise]).to(device)).clamp(0, 1)
            base = progress.n
            x, took = _ascend(model, module, x, units, sign, mean, cfg, progress, on_window)
            progress.update(base + cfg.steps - progress.n)
            with torch.no_grad():
                x = x.mul(255).round().div(255)  # 8-bit, as stored: the value is what the PNG does
                final = _objective(model, module, x, units).cpu()
            images.append(x.cpu().reshape(2, r, n, *in_shape))
            values.append(final.reshape(2, r, n))
            steps.append(took.reshape(2, r, n))
    progress.close()
    all_images = torch.cat(images, 2).transpose(1, 2)  # (2, U, R, C, H, W)
    all_values = torch.cat(values, 2).permute(0, 2, 1)  # (2, U, R)
    all_steps = torch.cat(steps, 2).permute(0, 2, 1)
    out = []
    for d, direction in enumerate((1.0, -1.0)):
        order = torch.argsort(-direction * all_values[d], dim=1)
        imgs = all_images[d][torch.arange(len(unit_ids))[:, None], order]
        out.append(Maps(imgs.numpy(), all_values[d].gather(1, order).numpy(), consistency(imgs).numpy(),
                        all_steps[d].gather(1, order).numpy()))
    return out[0], out[1]
