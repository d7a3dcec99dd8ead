"""AdamW with warmup + cosine decay to a floor, global-norm clipping, and no
weight decay on norms and biases (decided by parameter name: the layer stack
makes norm scales 2-D, so a rank rule would decay them)."""
from __future__ import annotations

from typing import Any

import jax
import optax


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int,
                           final_fraction: float) -> optax.Schedule:
    """0 -> peak linearly over warmup, then cosine to peak * final_fraction at total_steps
    (R1-Distill: cosine to 1/10 of the peak)."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=peak * final_fraction)


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: every weight but norm scales and biases."""
    def decays(path, _):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return not ("norm" in name or name.endswith("bias"))
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(c, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """From config `c` (train section): learning_rate, warmup_steps, final_lr_fraction,
    weight_decay, b1, b2, eps, max_grad_norm (0 disables clipping)."""
    schedule = learning_rate_schedule(c.learning_rate, total_steps, c.warmup_steps,
                                      c.final_lr_fraction)
    parts = []
    if c.max_grad_norm:
        parts.append(optax.clip_by_global_norm(c.max_grad_norm))
    parts.append(optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts), schedule
