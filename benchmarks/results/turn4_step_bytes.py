"""XLA's byte count of the whole compiled training step outside the pruning window:
adamw, fixed_mask, seven_mask with this engine and with the engine of 8feb828.

    python benchmarks/results/turn4_step_bytes.py minilm     # from the repository root
"""

import os, sys

os.environ["HF_HUB_OFFLINE"] = "1"
import optax
import seven_jax, seven_jax.transform as T, seven_jax.engine as en
import importlib.util as iu, subprocess, tempfile

# The engine before this turn's change (commit 8feb828), loaded beside the current one.
_old = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
_old.write(
  subprocess.run(
    ["git", "show", "8feb828:seven_jax/engine.py"], capture_output=True, text=True, check=True
  ).stdout
)
_old.close()
spec = iu.spec_from_file_location("seven_jax._engine_old", _old.name)
eo = iu.module_from_spec(spec)
spec.loader.exec_module(eo)
from benchmarks import bert as B
from benchmarks.common import hlo_bytes

name = sys.argv[1] if len(sys.argv) > 1 else "minilm"
model, batch = B.make_model(name)
prunable = B.bert_prunable(model.params)
n = B.num_prunable(model.params, prunable)


def entry_bytes(tx):
  state = tx.init(model.params)
  hlo = B._make_step(model, tx).lower(model.params, state, batch).compile().as_text()
  return hlo_bytes(hlo)


base = entry_bytes(optax.adamw(2e-5))
mk = lambda: seven_jax.seven_mask(
  optax.adamw(2e-5), sparsity=0.6, start_step=0, pruning_steps=2, prunable=prunable
)
frozen = seven_jax.fixed_mask(optax.adamw(2e-5), seven_jax.masks(mk().init(model.params)))
print("adamw step bytes", base, "per prunable", base / n)
print("fixed_mask", (entry_bytes(frozen) - base) / n)
for label, mod in (("new", en), ("old", eo)):
  T.engine = mod
  print(
    label, "seven outside the window, B/prunable weight over adamw:", (entry_bytes(mk()) - base) / n
  )
