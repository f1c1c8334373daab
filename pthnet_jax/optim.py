"""The original's optimiser: SGD (momentum 0.9, no dampening) with coupled L2 weight decay on every
parameter, and a MultiStepLR schedule stepped once per epoch."""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import optax


class Optimizer(NamedTuple):
    """The optax transformation that trains and the learning-rate schedule inside it (for logging)."""

    transform: optax.GradientTransformation
    schedule: optax.Schedule


def multistep_schedule(base_lr: float, milestones: Sequence[int], gamma: float,
                       steps_per_epoch: int) -> optax.Schedule:
    """lr(step) = base_lr * gamma ** (number of milestones <= epoch), epoch = step // steps_per_epoch."""
    boundaries = {int(m) * steps_per_epoch: gamma for m in sorted(milestones)}
    return optax.piecewise_constant_schedule(base_lr, boundaries)


def optimizer_options(optim) -> dict:
    """The optional optimiser keys of `config.optim` (absent: SGD): name ("sgd" | "adam"), b1, b2, eps."""
    get = optim.get if hasattr(optim, "get") else (lambda key, default: default)
    return dict(name=str(get("name", "sgd")), b1=float(get("b1", 0.9)), b2=float(get("b2", 0.999)),
                eps=float(get("eps", 1e-8)))


def make_optimizer(*, lr: float, momentum: float, weight_decay: float, milestones: Sequence[int],
                   gamma: float, steps_per_epoch: int, name: str = "sgd", b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> Optimizer:
    """torch.optim.SGD(params, lr, momentum, weight_decay) + MultiStepLR(milestones, gamma).

    torch adds `weight_decay * param` to the gradient before the momentum buffer: that is
    `add_decayed_weights` first, then the momentum trace, then the learning rate.
    `name="adam"`: torch.optim.Adam(params, lr, (b1, b2), eps, weight_decay) (HTNet): coupled L2
    first, then Adam with eps added to the square root of the bias-corrected second moment.
    """
    if name not in ("sgd", "adam"):
        raise ValueError(f"config.optim.name must be 'sgd' or 'adam', got {name!r}")
    # One object per distinct setting, so the pmapped steps built on it are reused (steps.pmapped).
    return _cached_optimizer(float(lr), float(momentum), float(weight_decay),
                             tuple(int(m) for m in milestones), float(gamma), int(steps_per_epoch),
                             name, float(b1), float(b2), float(eps))


@functools.lru_cache(maxsize=16)
def _cached_optimizer(lr: float, momentum: float, weight_decay: float, milestones: tuple[int, ...],
                      gamma: float, steps_per_epoch: int, name: str = "sgd", b1: float = 0.9,
                      b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    schedule = multistep_schedule(lr, milestones, gamma, steps_per_epoch)
    update = optax.adam(schedule, b1=b1, b2=b2, eps=eps) if name == "adam" else \
        optax.sgd(schedule, momentum=momentum or None, nesterov=False)
    transform = optax.chain(optax.add_decayed_weights(weight_decay), update)
    return Optimizer(transform, schedule)
