"""PTH-Net on one clip's raw window features: class probabilities, as `pthnet evaluate` computes them.

    from pthnet_jax import load_model
    from pthnet_jax.inference import clip_probabilities

    model, variables = load_model("runs/ferv39k/best")           # or the original's .pth
    rv_model, rv_variables = load_model("runs/ferv39k_rv/best")
    probs = clip_probabilities(model, variables, features_h,       # (num_windows, 1408): all windows
                               rv=(rv_model, rv_variables, features_h_rv), mu=0.7)

Evaluation reads the H level only (stride-4 windows, `th14_vit_g_16_4[_rv]`): of a clip's
`num_windows` windows it takes all when there are fewer than `max_len` (16), else `max_len` of them,
window `start_i + int(seg / 2)` of segment i with `seg = num_windows / max_len` and
`start_i = round(seg * i)` (numpy's round half to even), zero-padded and masked, exactly as
`pthnet_jax.data.sampling` does for `pthnet evaluate`. Forward and backward models are fused on
logits, `mu * forward + (1 - mu) * backward`, and the probabilities are the softmax of the result.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pthnet_jax.data.sampling import pick_windows


def _as_windows(features: Any, n_in: int, what: str) -> np.ndarray:
    """One clip's features -> (num_windows, n_in) float32; refuses channel-first and batched input."""
    if isinstance(features, Mapping):
        if "H" not in features:
            raise ValueError(f"{what}: evaluation reads the H level (stride-4 windows); got levels {sorted(features)}")
        features = features["H"]
    array = np.asarray(features)
    if array.ndim == 3:
        if array.shape[1] == n_in and array.shape[2] != n_in:
            raise ValueError(f"{what}: got shape {array.shape}, which looks channel-first (B, C, T) as in the "
                             f"original's PyTorch code; pass ONE clip's windows as (num_windows, {n_in}) "
                             "(e.g. features[0].T)")
        if array.shape[0] != 1:
            raise ValueError(f"{what}: got a batch of shape {array.shape}; pass one clip's windows as "
                             f"(num_windows, {n_in}) (use `clips_logits` for many clips)")
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{what}: expected one clip's windows as (num_windows, {n_in}), got shape {array.shape}")
    if array.shape[1] != n_in:
        if array.shape[0] == n_in:
            raise ValueError(f"{what}: got shape {array.shape}, which looks channel-first (C, T); pass "
                             f"(num_windows, {n_in}) (transpose it)")
        raise ValueError(f"{what}: windows have {array.shape[1]} features but the model expects {n_in}")
    if array.shape[0] < 1:
        raise ValueError(f"{what}: a clip needs at least one window")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{what}: features contain NaN or Inf")
    return array


def sample_for_evaluation(windows: np.ndarray, max_len: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(num_windows, D) -> the evaluation input (max_len, D) zero-padded and its (max_len,) mask."""
    count = len(windows)
    picks = np.asarray(pick_windows(jax.random.key(0), jnp.int32(count), max_len, train=False))
    mask = np.arange(max_len) < min(count, max_len)
    sampled = np.where(mask[:, None], windows[np.where(mask, picks, 0)], 0.0).astype(np.float32)
    return sampled, mask


def clips_logits(model, variables: Mapping[str, Any], clips: Sequence[Any]) -> np.ndarray:
    """H-level logits (n, num_classes) of several clips, each given as its (num_windows, D) windows."""
    max_len = model.config.max_len
    sampled = [sample_for_evaluation(_as_windows(c, model.config.n_in, f"clip {i}"), max_len)
               for i, c in enumerate(clips)]
    features = np.stack([s for s, _ in sampled])
    masks = np.stack([m for _, m in sampled])
    logits = _apply(model, variables, features, masks)
    return np.asarray(logits, np.float32)


_JITTED: dict[int, tuple[Any, Any]] = {}


def _apply(model, variables, features, masks):
    """The H-level evaluation forward pass, compiled once per model object (one shape: (n, max_len, D))."""
    entry = _JITTED.get(id(model))
    if entry is None or entry[0] is not model:
        fn = jax.jit(lambda v, f, m: model.apply(v, {"H": f}, {"H": m}, train=False)["H"])
        entry = _JITTED[id(model)] = (model, fn)
    return entry[1](variables, jnp.asarray(features), jnp.asarray(masks))


def clip_logits(model, variables: Mapping[str, Any], features: Any) -> np.ndarray:
    """(num_classes,) H-level logits of one clip from its (num_windows, D) window features."""
    return clips_logits(model, variables, [features])[0]


def fuse_logits(forward: np.ndarray, backward: np.ndarray, mu: float) -> np.ndarray:
    """The original's fusion of a forward and a backward model: mu * forward + (1 - mu) * backward."""
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"mu must be in [0, 1], got {mu}")
    return mu * np.asarray(forward) + (1.0 - mu) * np.asarray(backward)


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


def clip_probabilities(model, variables: Mapping[str, Any], features: Any, *,
                       rv: tuple[Any, Mapping[str, Any], Any] | None = None, mu: float = 0.7) -> np.ndarray:
    """Class probabilities (num_classes,) of ONE clip.

    features: the clip's window features, any number of windows: an array (num_windows, D) of the
        H level (stride 4), or a dict with an "H" entry (other levels are ignored, as in evaluation).
    rv: optional (backward model, its variables, the reversed clip's features) for fusion.
    mu: weight of the forward logits in the fusion (the published FERv39k command uses 0.7).
    """
    logits = clip_logits(model, variables, features)
    if rv is not None:
        rv_model, rv_variables, rv_features = rv
        if rv_model.config.num_classes != model.config.num_classes:
            raise ValueError(f"the backward model has {rv_model.config.num_classes} classes, the forward "
                             f"{model.config.num_classes}")
        logits = fuse_logits(logits, clip_logits(rv_model, rv_variables, rv_features), mu)
    return softmax(logits)
