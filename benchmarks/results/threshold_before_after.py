"""Before (threshold.py at main, 2fc8b24) vs after (this branch), interleaved.

Usage: PYTHONPATH=$PWD python benchmarks/results/threshold_before_after.py 1M 10.8M 85.5M
"""

import importlib.util, json, subprocess, sys, tempfile, time
import numpy as np, jax, jax.numpy as jnp

src = subprocess.run(
  ["git", "show", "2fc8b24:seven_jax/threshold.py"], check=True, capture_output=True, text=True
).stdout
path = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
path.write(src)
path.close()
spec = importlib.util.spec_from_file_location("old_threshold", path.name)
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)
from seven_jax import threshold as new
from benchmarks.threshold_bench import make_scores

out = {}
for name in sys.argv[1:]:
  for dist in ["uniform", "heavy"]:
    leaves = make_scores(name, dist)
    D = sum(x.size for x in leaves)
    k = jnp.int32(int(0.4 * D))
    fs = {
      "sum": jax.jit(lambda L, k: sum(jnp.sum(x) for x in L)),
      "before": jax.jit(old.kth_largest_threshold),
      "after": jax.jit(new.kth_largest_threshold),
    }
    taus = {n: jax.block_until_ready(f(leaves, k)) for n, f in fs.items()}
    same = all(bool(jnp.all((x >= taus["before"]) == (x >= taus["after"]))) for x in leaves)
    res = {n: [] for n in fs}
    reps = 5 if D > 5e7 else 9
    for rep in range(reps):
      for n, f in fs.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(leaves, k))
        res[n].append((time.perf_counter() - t0) * 1e3)
    med = {n: float(np.median(v)) for n, v in res.items()}
    passes = int(new.threshold_and_passes(leaves, k)[1])
    print(
      f"{name} {dist}: sum {med['sum']:.1f} ms | before {med['before']:.1f} ms | after {med['after']:.1f} ms "
      f"| speedup {med['before'] / med['after']:.1f}x | after/sum {med['after'] / med['sum']:.1f} | passes {passes} | same mask {same} | reps {reps}",
      flush=True,
    )
    out[f"{name}/{dist}"] = dict(med, passes=passes, same=same, reps=reps)
json.dump(out, sys.stdout, indent=1)
