"""One numpy reference of SEVEN's official loop (spec 2.1-2.4), for every parity test.

Written from the spec, independently of the library, in float64: masked
gradient, optional SGD step of every leaf, then (inside the window) the EMAs,
the accumulated score on the post-step weights with pruned scores set to 0,
the cubic keep ratio, a global sort-based top-k (ties with the k-th score all
kept, as ``S >= topk(S, k)[-1]`` in the official code) and the masked
weights.

* SEVEN_dyn (``seven_mask``): ``window = n_iter - 1`` steps from ``start``,
  schedule length ``n_iter``.
* SEVEN_pre (``prune_before_finetuning``): ``window = schedule_n = K`` from
  step 0; ``train=False`` unless an optimizer is given.
* ``correction=False``: the ablation without the noise correction, the
  increment is ``|W_p g|``.
"""

from __future__ import annotations

import numpy as np


def seven_loop(
  weights,
  grad_at,
  steps,
  *,
  prunable,
  sparsity,
  start,
  window,
  schedule_n,
  lr=0.0,
  train=True,
  b1=0.8,
  b2=0.9,
  eps=1e-9,
  correction=True,
):
  """Runs the loop; returns ``(masks after every step, final weights)``.

  Args:
    weights: dict name -> array (any names; a flat view of the params).
    grad_at: ``(t, weights) -> dict name -> gradient`` at the current
      (already masked) weights.
    prunable: dict name -> bool.
  """
  w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
  names = [k for k in w if prunable[k]]
  mask = {k: np.ones(w[k].shape, bool) for k in names}
  m = {k: np.zeros(w[k].shape) for k in names}
  v = {k: np.zeros(w[k].shape) for k in names}
  s = {k: np.zeros(w[k].shape) for k in names}
  total = sum(w[k].size for k in names)
  history = []
  for t in range(steps):
    g = {k: np.asarray(x, np.float64) for k, x in grad_at(t, w).items()}
    g = {k: g[k] * mask[k] if k in mask else g[k] for k in g}
    if train:
      for k in w:
        w[k] = w[k] - lr * g[k]
    if start <= t < start + window:
      p = t - start
      for k in names:
        a = np.abs(g[k])
        if correction:
          m[k] = b1 * m[k] + (1 - b1) * a
          v[k] = b2 * v[k] + (1 - b2) * a**2
          m_hat = m[k] / (1 - b1 ** (p + 1))
          denominator = np.sqrt(v[k] / (1 - b2 ** (p + 1))) + eps
          increment = np.abs(w[k] * a * m_hat / denominator)
        else:
          increment = np.abs(w[k] * a)
        s[k] = np.where(mask[k], s[k] + increment, 0.0)
      ratio = (1 - sparsity) + sparsity * (1 - (p + 1) / schedule_n) ** 3
      keep = int(np.float32(ratio) * np.float32(total))
      flat = np.concatenate([s[k].ravel() for k in names])
      tau = np.sort(flat)[::-1][keep - 1]
      for k in names:
        mask[k] = s[k] >= tau
        w[k] = w[k] * mask[k]
    history.append({k: mask[k].copy() for k in names})
  return history, w


def grads_from_sequence(seq):
  """``grad_at`` for a fixed gradient sequence (SEVEN_dyn parity tests)."""
  return lambda t, w: seq[t]
