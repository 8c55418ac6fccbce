r"""KKT attack: K runs in one vmapped, jitted chunk vs a Python loop over K single runs.

`--layout=victims` batches K victims × 1 run (data generation); `--layout=runs` batches
1 victim × K runs sharing θ (the evaluation sweep). Both ways call `kkt.make_attack_chunk`
for `--iters` iterations per call; the table gives seconds per run-iteration (median over
`--repetitions`, after a compile/warm-up call, timed alternately) and the speed-up.

  python -m benchmarks.attack --width=1000 --m=200 --ks=1,2,4 --iters=2 --repetitions=3

Float32, `jax_default_matmul_precision=highest`, freshly initialised victims (the cost of an
iteration does not depend on the weights' values).
"""
from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import common
from kktjax import kkt
from kktjax import victim

FLAGS = flags.FLAGS
flags.DEFINE_integer("width", 1000, "Victim hidden width.")
flags.DEFINE_integer("m", 200, "Candidates per class (N = 2m).")
flags.DEFINE_list("ks", ["1", "2", "4"], "Numbers of runs K.")
flags.DEFINE_integer("iters", 2, "Attack iterations per timed call (one chunk).")
flags.DEFINE_integer("repetitions", 3, "Timed calls per implementation (median reported).")
flags.DEFINE_enum("recipe", "generate", kkt.RECIPES, "Attack recipe.")
flags.DEFINE_enum("layout", "victims", ["victims", "runs"],
                  "Batch K victims × 1 run, or 1 victim × K runs.")


def benchmark(width: int, m: int, k: int, iters: int, repetitions: int, recipe: str,
              layout: str) -> dict[str, float]:
  """Seconds per run-iteration of the vmapped chunk and of a loop of K single-run chunks."""
  kp, ks = jax.random.split(jax.random.PRNGKey(k))
  v, r = (k, 1) if layout == "victims" else (1, k)
  params = common.synthetic_params(kp, v, width)
  chunk = kkt.make_attack_chunk(recipe)
  n_iters = jnp.asarray(iters, jnp.int32)
  st = {"vmap": common.attack_state(recipe, v, r, m, ks)}
  # The loop: K separate [1, 1] states, each with its victim's θ ([1] leading axis).
  one_params = [jax.tree.map(lambda a, i=(i if layout == "victims" else 0): a[i:i + 1], params)
                for i in range(k)]
  st["loop"] = [common.attack_state(recipe, 1, 1, m, jax.random.fold_in(ks, i))
                for i in range(k)]

  def run_vmap():
    st["vmap"] = chunk(st["vmap"], params, n_iters)
    return st["vmap"].loss

  def run_loop():
    for i in range(k):  # Dispatch is asynchronous; wait once at the end.
      st["loop"][i] = chunk(st["loop"][i], one_params[i], n_iters)
    return [s.loss for s in st["loop"]]

  return common.vmap_vs_loop(run_vmap, run_loop, repetitions, k * iters)


def main(argv):
  del argv
  common.setup_jax()
  common.set_clock(FLAGS.clock)
  print(common.machine_line() + f", clock {FLAGS.clock}")
  n = 2 * FLAGS.m
  p = victim.num_params(victim.init_params(jax.random.PRNGKey(0), FLAGS.width))
  units = common.xla_attack_units(FLAGS.width, FLAGS.m, FLAGS.recipe)
  print(f"KKT attack, recipe {FLAGS.recipe}, layout {FLAGS.layout}, width {FLAGS.width} "
        f"(P = {p:,}), N = {n}, {FLAGS.iters} iterations per call, median of "
        f"{FLAGS.repetitions}, float32, matmul precision highest")
  rows = []
  for k in map(int, FLAGS.ks):
    r = benchmark(FLAGS.width, FLAGS.m, k, FLAGS.iters, FLAGS.repetitions, FLAGS.recipe,
                  FLAGS.layout)
    g9 = common.attack_flops(n, p) / r["vmap"] / 1e9
    gx = common.attack_flops(n, p, units) / r["vmap"] / 1e9
    rows.append([k, f"{r['vmap']:.3f} {r['vmap_spread']}", f"{r['loop']:.3f} {r['loop_spread']}",
                 f"{r['loop'] / r['vmap']:.2f}", f"{g9:.1f}", f"{gx:.1f}"])
    print(f"  done K {k} ({common.load_line()})", flush=True)
  common.print_table(["K", "vmap s/run-iter", "loop s/run-iter", "loop/vmap",
                      "GFLOP/s (9 units)", f"GFLOP/s (XLA: {units:.2f} units)"], rows)
  print(common.load_line())


if __name__ == "__main__":
  app.run(main)
