r"""Per-victim throughput: the PyTorch baseline vs kktjax (one victim, and K victims vmapped).

For one configuration (width, n training images, N = 2m candidates), each implementation
trains a victim for E epochs and attacks it for R iterations; the table gives the time per
victim (median over `--repetitions` rounds in which the implementations take turns, each
after an untimed warm-up/compile call), the speed-up over the baseline and the achieved
GFLOP/s by SPEC §10's counts:
  training  3 · 2 · n · P per epoch, and XLA's count of kktjax's compiled train step;
  attack    9 · 2 · N · P per iteration (upper estimate; PyTorch's double backward in Haim's
            `loss.backward()` form), and XLA's count of kktjax's compiled attack step (about
            5.5 units of 2·N·P with the θ-VJP form of SPEC §3.1),
and the fp32 peak of one big jitted matmul measured in the same command, for context. The
GFLOP/s of every row use the same counts, so they are the per-victim rates in FLOP units.

  make bench                                     # installs the 'bench' extra (torch==2.13.0)
  python -m benchmarks.throughput --epochs=10 --iters=4 --k=2 --repetitions=3

Implementations:
  torch       benchmarks/torch_baseline.py: one victim at a time, Haim's structure.
  kktjax K=1  `victim.make_batched_trainer` and `kkt.make_attack_chunk` on a batch of 1.
  kktjax K=k  the same, K victims vmapped; time divided by K.
"""
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import common
from kktjax import kkt
from kktjax import victim

FLAGS = flags.FLAGS
flags.DEFINE_integer("width", 1000, "Victim hidden width.")
flags.DEFINE_integer("n", 300, "Training images per victim.")
flags.DEFINE_integer("m", 200, "Candidates per class (N = 2m).")
flags.DEFINE_integer("epochs", 10, "Training epochs E per victim and repetition.")
flags.DEFINE_integer("iters", 4, "Attack iterations R per victim and repetition.")
flags.DEFINE_integer("k", 2, "Victims in the vmapped kktjax batch.")
flags.DEFINE_integer("repetitions", 3, "Rounds (median reported).")
flags.DEFINE_enum("victim_recipe", "adadelta", victim.RECIPES, "Victim training recipe.")
flags.DEFINE_enum("attack_recipe", "generate", kkt.RECIPES, "Attack recipe.")
flags.DEFINE_enum("torch_attack_mode", "fast", ["fast", "haim"],
                  "PyTorch: gradients w.r.t. (x, λ) only, or Haim's loss.backward().")
flags.DEFINE_integer("threads", 0, "PyTorch intra-op threads (0: all cores).")
flags.DEFINE_bool("torch_omp_passive", True,
                  "Set OMP_WAIT_POLICY=PASSIVE before importing torch. On a loaded shared machine "
                  "OpenMP's spin-waiting makes torch several times slower; passive waiting "
                  "removes that (the variable is only set if not already set).")
flags.DEFINE_integer("peak_size", 2048, "Side of the square matmul timed for the fp32 peak.")

# SPEC §2-§3: the data-generation recipe, for the extrapolated time of one full run.
FULL_EPOCHS = 50_000
FULL_ITERS = 11_900


class KktjaxPipeline:
  """K victims: jitted vmapped training chunk and attack chunk, states threaded through."""

  def __init__(self, k: int, width: int, n: int, m: int, epochs: int, iters: int,
               victim_recipe: str, attack_recipe: str, seed: int = 0):
    kp, kd, ka = jax.random.split(jax.random.PRNGKey(seed), 3)
    self.k = k
    params = common.synthetic_params(kp, k, width)
    self.x, self.y = common.synthetic_data(kd, k, n)
    self.train_state = common.victim_state(params, victim_recipe)
    self.trainer = victim.make_batched_trainer(victim_recipe, epochs)
    # The attack runs on fixed weights (its cost does not depend on their values).
    self.params = params
    self.attack_state = common.attack_state(attack_recipe, k, 1, m, ka)
    self.chunk = kkt.make_attack_chunk(attack_recipe)
    self.iters = jnp.asarray(iters, jnp.int32)

  def train(self):
    self.train_state, loss = self.trainer(self.train_state, self.x, self.y)
    return loss

  def attack(self):
    self.attack_state = self.chunk(self.attack_state, self.params, self.iters)
    return self.attack_state.loss


def main(argv):
  del argv
  if FLAGS.torch_omp_passive:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  try:
    from benchmarks import torch_baseline  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    if e.name != "torch":
      raise
    raise SystemExit("PyTorch is not installed: run `make bench`, which installs the 'bench' "
                     "extra (torch==2.13.0), or `pip install -e '.[bench]'`.")
  import torch  # pylint: disable=g-import-not-at-top

  common.setup_jax()
  common.set_clock(FLAGS.clock)
  clock = common.CLOCKS[FLAGS.clock]
  threads = torch_baseline.set_threads(FLAGS.threads or None)
  width, n, m, e, r, k = (FLAGS.width, FLAGS.n, FLAGS.m, FLAGS.epochs, FLAGS.iters, FLAGS.k)
  num = 2 * m
  p = victim.num_params(victim.init_params(jax.random.PRNGKey(0), width))
  attack_units = common.xla_attack_units(width, m, FLAGS.attack_recipe)
  train_units = common.xla_train_units(width, n, FLAGS.victim_recipe)
  print(common.machine_line() + f", clock {FLAGS.clock}")
  print(f"torch {torch.__version__} ({threads} threads, attack mode {FLAGS.torch_attack_mode}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})")
  print(f"width {width} (P = {p:,}), n = {n}, N = {num}, E = {e} epochs "
        f"({FLAGS.victim_recipe}), R = {r} iterations ({FLAGS.attack_recipe}), K = {k}, "
        f"median of {FLAGS.repetitions} rounds, float32, matmul precision highest")

  pipes = {"kktjax K=1": KktjaxPipeline(1, width, n, m, e, r, FLAGS.victim_recipe,
                                        FLAGS.attack_recipe)}
  if k > 1:
    pipes[f"kktjax K={k}"] = KktjaxPipeline(k, width, n, m, e, r, FLAGS.victim_recipe,
                                            FLAGS.attack_recipe, seed=1)
  for pipe in pipes.values():  # Compile and warm up.
    common.block(pipe.train())
    common.block(pipe.attack())

  def torch_round():
    te = torch_baseline.train_epochs_torch(width, n, e, FLAGS.victim_recipe, threads=threads,
                                           clock=clock)
    ta = torch_baseline.attack_iters_torch(width, m, r, FLAGS.attack_recipe,
                                           attack_mode=FLAGS.torch_attack_mode, threads=threads,
                                           clock=clock)
    return te * e, ta * r

  def jax_round(pipe):
    return common.timed(pipe.train) / pipe.k, common.timed(pipe.attack) / pipe.k

  rounds = {name: [] for name in ["torch"] + list(pipes)}
  names = list(rounds)
  for rep in range(FLAGS.repetitions):
    shift = rep % len(names)
    for name in names[shift:] + names[:shift]:
      rounds[name].append(torch_round() if name == "torch" else jax_round(pipes[name]))
    print(f"  round {rep + 1}/{FLAGS.repetitions} ({common.load_line()})", flush=True)

  peak = common.matmul_peak_gflops(FLAGS.peak_size)
  torch_peak = torch_baseline.matmul_peak_gflops(FLAGS.peak_size)
  med = {name: (common.median([t for t, _ in v]), common.median([a for _, a in v]))
         for name, v in rounds.items()}
  base_train, base_attack = med["torch"]
  train_gf3 = common.train_flops(n, p) * e / 1e9
  train_gfx = train_gf3 * train_units / 3.0
  attack_gf9 = common.attack_flops(num, p) * r / 1e9
  attack_gfx = common.attack_flops(num, p, attack_units) * r / 1e9
  rows = []
  for name, (t, a) in med.items():
    full_h = (t / e * FULL_EPOCHS + a / r * FULL_ITERS) / 3600
    rows.append([name, f"{t:.3f}", f"{a:.3f}", f"{t + a:.3f}",
                 f"{base_train / t:.2f}", f"{base_attack / a:.2f}",
                 f"{(base_train + base_attack) / (t + a):.2f}",
                 f"{train_gf3 / t:.1f}", f"{train_gfx / t:.1f}", f"{attack_gf9 / a:.1f}",
                 f"{attack_gfx / a:.1f}",
                 f"{full_h:.1f}"])
  print()
  common.print_table(
      ["implementation", f"train s/victim ({e} ep)", f"attack s/victim ({r} it)",
       "total s/victim", "train ×torch", "attack ×torch", "total ×torch", "train GF/s (3u)",
       f"train GF/s ({train_units:.2f}u)", "attack GF/s (9u)",
       f"attack GF/s ({attack_units:.2f}u)", "full run h"], rows)
  print(f"\nfp32 matmul peak ({FLAGS.peak_size}² matmul): jnp {peak:.1f} GFLOP/s, torch "
        f"{torch_peak:.1f} GFLOP/s. "
        f"'×torch' = torch time / implementation time (> 1: faster than the baseline). "
        f"GF/s: units of 2·n·P (training) and 2·N·P (attack); 3u and 9u are SPEC §10's "
        f"counts, {train_units:.2f}u and {attack_units:.2f}u XLA's counts of kktjax's "
        f"compiled steps. "
        f"'full run h' = hours for one data-generation run ({FULL_EPOCHS:,} epochs + "
        f"{FULL_ITERS:,} iterations) at this rate; spreads (max−min)/2 of the rounds:")
  for name, v in rounds.items():
    print(f"  {name}: train {common.spread([t for t, _ in v])}, "
          f"attack {common.spread([a for _, a in v])}")
  print(common.load_line())


if __name__ == "__main__":
  app.run(main)
