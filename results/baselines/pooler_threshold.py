"""Where the global gradual-magnitude threshold falls for the pretrained MiniLM.

For the cubic schedule of the main job (sparsity 0.6, N = 80 from step 20),
print the global |W| threshold over the prunable set of ``bert.prunable`` (the
encoder kernels and the pooler kernel) and the share of the pooler kernel that
survives it, on the checkpoint's weights (20 fine-tuning steps at lr 5e-5 move
a weight by at most ~1e-3, far less than these thresholds)::

    python results/baselines/pooler_threshold.py
"""

import numpy as np
from safetensors.numpy import load_file

from seven_jax.models import bert

weights = load_file(f"{bert.default_model_path()}/model.safetensors")
# The PyTorch names of the kernels bert.prunable selects: encoder dense weights and the pooler.
names = [
  k
  for k in weights
  if k.endswith(".weight") and "LayerNorm" not in k and ("encoder." in k or "pooler." in k)
]
magnitudes = np.sort(np.concatenate([np.abs(weights[k]).ravel() for k in names]))
pooler = np.abs(weights["pooler.dense.weight"])
print(f"{len(names)} prunable kernels, {magnitudes.size} weights")
print(
  f"pooler kernel: mean |W| {pooler.mean():.4f}, max |W| {pooler.max():.4f}; "
  f"pooler bias: max |b| {np.abs(weights['pooler.dense.bias']).max():.4f}"
)
encoder = np.concatenate([np.abs(weights[k]).ravel() for k in names if "encoder." in k])
print(f"encoder kernels: mean |W| {encoder.mean():.4f}")
sparsity, start, n = 0.6, 20, 80
for p in (0, 2, 4, 8, 10, 15, 20, 30, 40, 50, 78):
  keep = (1 - sparsity) + sparsity * (1 - (p + 1) / n) ** 3
  threshold = magnitudes[int((1 - keep) * magnitudes.size)]
  print(
    f"step {start + p:3d}: keep {keep:.3f}, global |W| threshold {threshold:.4f}, "
    f"pooler kept {(pooler >= threshold).mean():.3f}"
  )
