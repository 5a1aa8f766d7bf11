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

Adam with step size ``lr`` (default 0.1) for ``steps`` steps (default 128), ``restarts`` restarts
(default 3) from m + ``init_std`` (default 0.1) x Gaussian noise. All settings: ``ActMaxConfig``.

Every unit of a layer, both directions and every restart are optimised together as one batch:
the model is in eval mode and Adam's update is per element, so each image follows exactly the
path it would alone. Restarts use different noise seeds; their **consistency** is the mean
pairwise Pearson correlation of the final images (1 = the same picture every time, about 0 =
unrelated pictures, so a single map would mislead).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from compute.images.config import ActMaxConfig
from compute.nets.forward import run_to
from compute.nets.probe import by_position
from compute.progress import bar


@dataclass
class Maps:
    """Final images (U, R, C, H, W), best restart first; the activation each reached (U, R); and
    the consistency across restarts (U,)."""

    images: np.ndarray
    values: np.ndarray
    consistency: np.ndarray


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().sum((1, 2, 3)) + (x[..., :, 1:] - x[..., :, :-1]).abs().sum((1, 2, 3))


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
    return by_position(pre)[torch.arange(len(x), device=x.device), units].mean(1)


def _noise(cfg: ActMaxConfig, restart: int, unit: int, in_shape: tuple[int, int, int]) -> torch.Tensor:
    """The starting noise of one unit and restart: its own seed, whatever else is in the batch."""
    seed = (cfg.seed * 1_000_003 + restart * 100_003 + unit) % (2**63)
    return torch.randn(in_shape, generator=torch.Generator().manual_seed(seed))


def activation_maps(model: nn.Module, module: nn.Module, unit_ids: Sequence[int], in_shape: tuple[int, int, int],
                    mean_pixel: torch.Tensor, cfg: ActMaxConfig = ActMaxConfig(),
                    device: str = "cpu", desc: str = "actmax") -> tuple[Maps, Maps]:
    """(HappyMaps, SadMaps) of units ``unit_ids`` of the layer whose probe is ``module``, in that order."""
    cfg.check()
    model.eval()
    r, n_units = cfg.restarts, len(unit_ids)
    # Batch order: direction (happy, sad), restart, unit.
    units = torch.as_tensor(list(unit_ids)).repeat(2 * r).to(device)
    sign = torch.cat([torch.ones(n_units * r), -torch.ones(n_units * r)]).to(device)
    mean = mean_pixel.reshape(1, -1, 1, 1).to(device)
    noise = torch.stack([_noise(cfg, i, int(u), in_shape) for i in range(r) for u in unit_ids])
    x = (mean + cfg.init_std * torch.cat([noise, noise]).to(device)).clamp(0, 1).requires_grad_()
    opt = torch.optim.Adam([x], lr=cfg.lr)
    shifts = torch.Generator().manual_seed(cfg.seed)
    kernel = 2 * int(np.ceil(3 * cfg.blur_sigma)) + 1
    for step in bar(range(cfg.steps), desc, unit="step"):
        dy, dx = (torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=shifts).tolist()
                  if cfg.jitter else (0, 0))
        act = _objective(model, module, torch.roll(x, (dy, dx), (2, 3)), units)
        loss = (-(sign * act) + cfg.l2 * ((x - mean) ** 2).sum((1, 2, 3)) + cfg.tv * _total_variation(x)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            if (step + 1) % cfg.blur_every == 0:
                x.copy_(gaussian_blur(x, [kernel, kernel], [cfg.blur_sigma, cfg.blur_sigma]))
            x.clamp_(0, 1)
    with torch.no_grad():
        x = x.detach().mul(255).round().div(255)  # 8-bit, as stored: the value is what the PNG does
        final = _objective(model, module, x, units).cpu()
    images = x.cpu().reshape(2, r, n_units, *in_shape).transpose(1, 2)  # (2, U, R, C, H, W)
    values = final.reshape(2, r, n_units).permute(0, 2, 1)  # (2, U, R)
    out = []
    for d, direction in enumerate((1.0, -1.0)):
        order = torch.argsort(-direction * values[d], dim=1)
        imgs = images[d][torch.arange(n_units)[:, None], order]
        out.append(Maps(imgs.numpy(), values[d].gather(1, order).numpy(), consistency(imgs).numpy()))
    return out[0], out[1]
