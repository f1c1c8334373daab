"""The hierarchy loss: CE(H) + KL(L || H) + KL(M || H), H's distribution detached (the original's loss)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def per_clip_loss(logits: dict[str, jax.Array], labels: jax.Array) -> dict[str, jax.Array]:
    """Per-clip terms; the batch loss is their sum over valid clips divided by the valid count.

    KL(log_softmax(x) || softmax(H)) as torch's KLDivLoss(reduction='batchmean'):
    sum_c p_c (log p_c - log q_c) per clip, averaged over the batch.
    """
    log_h = jax.nn.log_softmax(logits["H"])
    ce = -jnp.take_along_axis(log_h, labels[:, None], axis=1)[:, 0]
    target_log = jax.lax.stop_gradient(log_h)
    target = jnp.exp(target_log)
    terms = {"ce": ce}
    for level in ("L", "M"):
        if level in logits:
            log_q = jax.nn.log_softmax(logits[level])
            terms[f"kl_{level}"] = jnp.sum(target * (target_log - log_q), axis=1)
    terms["total"] = sum(terms.values())
    return terms
