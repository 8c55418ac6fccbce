r"""Restorer throughput: DDPM++ training img/s and restorations/s (35 NFE) per batch size.

For each training batch size B the jitted `edm_flax.train` step (EDM loss, Adam, EMA) runs
`--iters` times on a fixed synthetic batch after an untimed compile call; for each restore
batch size the full `edm_flax.restore.restore` call (one sample per image, 2·num_steps − 1
network evaluations) is timed the same way. XLA's FLOP count of the compiled functions gives
the achieved GFLOP/s, and the forward FLOPs per image are printed for SPEC §10's estimate
(≈ 42 GFLOP per 32×32 DDPM++ forward).

  python -m benchmarks.restorer --config=tiny --batch_sizes=2,4 --restore_batch_sizes=2,4
  python -m benchmarks.restorer --config=cifar --batch_sizes=64,128,256,512 \
      --restore_batch_sizes=256,1024 --iters=10          # on a GPU
"""
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import common
from edm_flax import input_pipeline
from edm_flax import restore as restore_lib
from edm_flax import train
from edm_flax.configs import default

FLAGS = flags.FLAGS
flags.DEFINE_enum("config", "cifar", ["cifar", "tiny"], "Restorer config variant.")
flags.DEFINE_list("batch_sizes", ["2", "4"], "Training batch sizes.")
flags.DEFINE_list("restore_batch_sizes", ["2", "4"], "Restoration batch sizes.")
flags.DEFINE_integer("iters", 3, "Timed calls per batch size (median reported).")
flags.DEFINE_integer("num_steps", 18, "Sampler steps (2·N − 1 network evaluations).")
flags.DEFINE_string("matmul_precision", "highest", "jax_default_matmul_precision.")
flags.DEFINE_bool("skip_train", False, "Only time restoration.")
flags.DEFINE_bool("skip_restore", False, "Only time training.")


def flops_of(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def time_calls(fn, iters: int) -> list[float]:
  common.block(fn())  # compile / warm up
  out = []
  for _ in range(iters):
    t0 = time.perf_counter()
    common.block(fn())
    out.append(time.perf_counter() - t0)
  return out


def bench_train(config, batch_size: int, iters: int) -> list[object]:
  config = config.copy_and_resolve_references()
  config.training.batch_size = batch_size
  mesh = train.make_mesh()
  trainer = train.get_trainer(config, mesh)
  state = trainer.init_fn(train.make_rng(0, config))
  batch = train.shard_batch(next(input_pipeline.SyntheticPairSource(batch_size)), mesh)
  t0 = time.perf_counter()
  compiled = trainer.step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  flops = flops_of(compiled)
  holder = [state]

  def step():
    holder[0], metrics = compiled(holder[0], batch)
    return metrics

  ts = time_calls(step, iters)
  t = common.median(ts)
  return [batch_size, f"{batch_size / t:.2f}", f"{t * 1e3:.1f}", common.spread(ts),
          f"{flops / t / 1e9:.1f}", f"{flops / batch_size / 1e9:.1f}", f"{compile_s:.0f}"]


def bench_restore(config, batch_size: int, iters: int, num_steps: int) -> list[object]:
  model = train.create_model(config)
  params = jax.jit(lambda k: train.init_params(model, k, config))(train.make_rng(0, config))
  denoise = restore_lib.make_denoise_apply(model)
  cond = next(input_pipeline.SyntheticPairSource(batch_size))['noisy']
  kwargs = {**dict(config.sampler), "num_steps": num_steps}
  run = lambda: restore_lib.restore(denoise, params, cond, jax.random.key(0), num_samples=1,
                                    batch_size=batch_size, **kwargs)["mean"]
  ts = time_calls(run, iters)
  t = common.median(ts)
  r = config.network.img_resolution
  x = jnp.zeros((batch_size, r, r, 3), jnp.float32)
  fwd = jax.jit(lambda p, x: denoise(p, x, jnp.ones(()), x)).lower(params, x).compile()
  fwd_flops = flops_of(fwd) / batch_size
  nfe = 2 * num_steps - 1
  return [batch_size, f"{batch_size / t:.2f}", f"{t:.3f}", common.spread(ts), nfe,
          f"{batch_size * nfe / t:.1f}", f"{fwd_flops / 1e9:.2f}",
          f"{fwd_flops * nfe * batch_size / t / 1e9:.1f}"]


def main(argv):
  del argv
  common.setup_jax(FLAGS.matmul_precision)
  config = default.get_config(FLAGS.config)
  print(common.machine_line())
  print(f"config {FLAGS.config}: model_channels {config.network.model_channels}, "
        f"channel_mult {tuple(config.network.channel_mult)}, num_blocks "
        f"{config.network.num_blocks}; precision {FLAGS.matmul_precision}; "
        f"{jax.device_count()} device(s)")
  if not FLAGS.skip_train:
    rows = [bench_train(config, int(b), FLAGS.iters) for b in FLAGS.batch_sizes]
    print("\nTraining (EDM loss + Adam + EMA, one jitted step)")
    common.print_table(["batch", "img/s", "ms/step", "spread", "GFLOP/s", "GFLOP/img",
                        "compile s"], rows)
  if not FLAGS.skip_restore:
    rows = [bench_restore(config, int(b), FLAGS.iters, FLAGS.num_steps)
            for b in FLAGS.restore_batch_sizes]
    print(f"\nRestoration (×1, {2 * FLAGS.num_steps - 1} NFE per image)")
    common.print_table(["batch", "restorations/s", "s/call", "spread", "NFE", "NFE img/s",
                        "fwd GFLOP/img", "GFLOP/s"], rows)
  print(common.load_line())


if __name__ == "__main__":
  app.run(main)
