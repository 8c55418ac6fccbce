r"""Victim training: K victims in one vmapped, jitted scan vs a Python loop over K victims.

For each width and K, both ways run the same number of epochs per call (`--epochs`, one
`lax.scan` chunk); the table gives seconds per victim-epoch (median over `--repetitions`,
after a compile/warm-up call, timed alternately) and the speed-up of vmap over the loop.

  python -m benchmarks.victims --widths=1000,100 --ks=1,2,4,8 --epochs=5 --repetitions=5

Synthetic data of CIFAR shape (n × 3072), float32, `jax_default_matmul_precision=highest`.
"""
from absl import app
from absl import flags
import jax

from benchmarks import common
from kktjax import victim

FLAGS = flags.FLAGS
flags.DEFINE_list("widths", ["1000", "100"], "Hidden widths.")
flags.DEFINE_list("ks", ["1", "2", "4", "8"], "Numbers of victims K.")
flags.DEFINE_integer("n", 300, "Training images per victim.")
flags.DEFINE_integer("epochs", 5, "Epochs per timed call (one scan chunk).")
flags.DEFINE_integer("repetitions", 5, "Timed calls per implementation (median reported).")
flags.DEFINE_enum("recipe", "adadelta", victim.RECIPES, "Training recipe.")


def make_single_trainer(recipe: str, num_epochs: int):
  """jit(train `num_epochs` epochs) of one victim (no vmap), state donated."""
  optimizer = victim.make_optimizer(recipe)
  fn = lambda s, x, y: victim.train_epochs(optimizer, s, x, y, num_epochs)
  return jax.jit(fn, donate_argnums=0)


def benchmark(width: int, k: int, n: int, epochs: int, repetitions: int,
              recipe: str) -> dict[str, float]:
  """Seconds per victim-epoch of the vmapped and the looped trainer (medians)."""
  kp, kd = jax.random.split(jax.random.PRNGKey(width * 100 + k))
  params = common.synthetic_params(kp, k, width)
  x, y = common.synthetic_data(kd, k, n)
  batched = victim.make_batched_trainer(recipe, epochs)
  single = make_single_trainer(recipe, epochs)
  # Donated states are threaded through the calls; their values do not affect timings.
  st = {"vmap": common.victim_state(params, recipe)}
  both = common.victim_state(params, recipe)
  st["loop"] = [jax.tree.map(lambda a, i=i: a[i], both) for i in range(k)]
  xs = [x[i] for i in range(k)]
  ys = [y[i] for i in range(k)]
  del both

  def run_vmap():
    st["vmap"], loss = batched(st["vmap"], x, y)
    return loss

  def run_loop():
    losses = []
    for i in range(k):  # Dispatch is asynchronous; wait once at the end.
      st["loop"][i], loss = single(st["loop"][i], xs[i], ys[i])
      losses.append(loss)
    return losses

  return common.vmap_vs_loop(run_vmap, run_loop, repetitions, k * epochs)


def main(argv):
  del argv
  common.setup_jax()
  common.set_clock(FLAGS.clock)
  print(common.machine_line() + f", clock {FLAGS.clock}")
  print(f"victim training, recipe {FLAGS.recipe}, n = {FLAGS.n}, {FLAGS.epochs} epochs per "
        f"call, median of {FLAGS.repetitions}, float32, matmul precision highest")
  rows = []
  for width in map(int, FLAGS.widths):
    p = victim.num_params(victim.init_params(jax.random.PRNGKey(0), width))
    for k in map(int, FLAGS.ks):
      r = benchmark(width, k, FLAGS.n, FLAGS.epochs, FLAGS.repetitions, FLAGS.recipe)
      gflops = common.train_flops(FLAGS.n, p) / r["vmap"] / 1e9
      rows.append([width, k, f"{1e3 * r['vmap']:.2f} {r['vmap_spread']}",
                   f"{1e3 * r['loop']:.2f} {r['loop_spread']}",
                   f"{r['loop'] / r['vmap']:.2f}", f"{gflops:.1f}"])
      print(f"  done width {width} K {k} ({common.load_line()})", flush=True)
  common.print_table(["width", "K", "vmap ms/victim-epoch", "loop ms/victim-epoch",
                      "loop/vmap", "vmap GFLOP/s"], rows)
  print(common.load_line())


if __name__ == "__main__":
  app.run(main)
