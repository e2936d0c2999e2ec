"""The training loss: label-smoothed cross entropy on the logits plus 0.4 × the
same on the auxiliary logits (the paper, Sections 4 and 7; Google's
`inception_train.py`).

Google's code is `softmax_cross_entropy(..., label_smoothing=0.1)` on both
heads, weights 1.0 and 0.4, which smooths uniformly over all K logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_cross_entropy(logits, labels, smoothing: float = 0.1):
  """Per-example −Σ_k q′(k) log p(k) with q′ = (1 − ε)·onehot(y) + ε/K
  (Section 7, u(k) = 1/K over the K = logits.shape[-1] classes), in float32
  (float64 for float64 logits).

  `labels` are integer class ids of shape logits.shape[:-1].
  """
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  num_classes = logits.shape[-1]
  log_p = jax.nn.log_softmax(logits, axis=-1)
  target = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  target = (1.0 - smoothing) * target + smoothing / num_classes
  return -jnp.sum(target * log_p, axis=-1)


def _mean(values, mask):
  if mask is None:
    return values.mean()
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def inception_loss(logits, aux_logits, labels, *, smoothing: float = 0.1,
                   aux_weight: float = 0.4, mask=None):
  """Mean main loss + `aux_weight` × mean aux loss (docs/paper_notes.md#loss).

  `aux_logits` may be None (no aux head, or evaluation). `mask` (1 for a real
  example, 0 for padding) averages over the real examples only; an all-zero
  mask gives 0. Returns `(total, parts)`, parts = {'loss', 'main_loss'} and
  'aux_loss' when there is an aux head.
  """
  main = _mean(smoothed_cross_entropy(logits, labels, smoothing), mask)
  parts = {'main_loss': main}
  total = main
  if aux_logits is not None:
    aux = _mean(smoothed_cross_entropy(aux_logits, labels, smoothing), mask)
    parts['aux_loss'] = aux
    total = main + aux_weight * aux
  parts['loss'] = total
  return total, parts
