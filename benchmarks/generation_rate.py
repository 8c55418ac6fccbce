r"""Data-generation runs per device-hour at the paper's configuration, extrapolated from timed
chunks (SPEC §10: the paper reached about 27 runs per A100-hour).

A run = 50,000 Adadelta epochs of a 3072-1000-1000-1 victim on 300 images, 11,900 attack
iterations with 400 candidates, and scoring 11 snapshots (r-scaling + SSIM against the 300
images). K runs are vmapped on one device; each phase is timed on a short jitted chunk (median of
`--repetitions`, after a compile call) and scaled to its full length.

  python -m benchmarks.generation_rate --ks=8,32 --matmul_precision=highest
  python -m benchmarks.generation_rate --ks=32 --matmul_precision=tensorfloat32
"""
from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks import throughput
from kktjax import data as data_lib
from kktjax import match
from kktjax import metrics

FLAGS = flags.FLAGS
# --epochs, --iters and --repetitions are benchmarks.throughput's flags (chunk lengths, median).
flags.DEFINE_list("ks", ["4"], "Runs vmapped per device.")
flags.DEFINE_string("matmul_precision", "highest", "'highest' (true fp32) or 'tensorfloat32'.")

N_IMAGES, M, WIDTH, SNAPSHOTS = 300, 200, 1000, 11


def main(argv):
  del argv
  common.setup_jax(FLAGS.matmul_precision)
  print(common.machine_line())
  print(f"matmul precision {FLAGS.matmul_precision}; chunks: {FLAGS.epochs} epochs, "
        f"{FLAGS.iters} iterations; median of {FLAGS.repetitions}")
  rows = []
  for k in map(int, FLAGS.ks):
    pipe = throughput.KktjaxPipeline(k, WIDTH, N_IMAGES, M, FLAGS.epochs, FLAGS.iters,
                                     "adadelta", "generate")
    mu = jnp.full((32, 32, 3), 0.5)
    targets = jax.random.uniform(jax.random.PRNGKey(1), (k, N_IMAGES, 32, 32, 3))

    @jax.jit
    def score(x, targets):   # one snapshot of K runs: post-process, SSIM vs 300 images
      img = data_lib.unflatten_chw(x)
      post, _ = jax.vmap(lambda a: match._postprocess_rscale(a, mu))(img)
      return jax.vmap(lambda a, t: metrics._ssim_matrix(a, t, "haim", 16))(post, targets)

    x = pipe.attack_state.x[:, 0]
    t = {}
    for name, fn in (("train", pipe.train), ("attack", pipe.attack),
                     ("score", lambda: score(x, targets))):
      common.block(fn())   # compile
      t[name] = common.median([common.timed(fn) for _ in range(FLAGS.repetitions)])
    per_batch = (t["train"] * 50_000 / FLAGS.epochs + t["attack"] * 11_900 / FLAGS.iters +
                 t["score"] * SNAPSHOTS)
    rows.append([k, f"{t['train'] / FLAGS.epochs * 1e3:.2f}",
                 f"{t['attack'] / FLAGS.iters * 1e3:.2f}", f"{t['score'] * 1e3:.1f}",
                 f"{per_batch / k:.1f}", f"{3600 * k / per_batch:.1f}",
                 f"{3600 * k / per_batch / 27:.2f}"])
  common.print_table(["K", "ms/epoch (K)", "ms/iter (K)", "ms/score (K)", "s/run",
                      "runs/hour", "× paper (27/A100-h)"], rows)


if __name__ == "__main__":
  app.run(main)
