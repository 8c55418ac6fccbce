"""Shared launcher plumbing: JAX options, one-line errors instead of tracebacks."""
import os
import sys

import jax
from absl import flags
from absl import logging

# Every launcher takes it: where tensorflow-datasets finds a prepared cifar10 (offline copies).
_TFDS_DATA_DIR = flags.DEFINE_string(
    "tfds_data_dir", None, "tensorflow-datasets data dir holding cifar10 (default: "
    "$TFDS_DATA_DIR, else tfds's own default).")


def setup_jax(x64: bool = False, matmul_precision: str = "highest") -> None:
  """Victims and the attack run in true fp32 (or fp64): no TF32 on Ampere/Hopper (SPEC §2)."""
  if _TFDS_DATA_DIR.value:
    os.environ["TFDS_DATA_DIR"] = _TFDS_DATA_DIR.value   # read by kktjax.data.load_cifar10
  # orbax and tfds log every step at INFO; progress bars carry the useful information.
  if logging.get_verbosity() == logging.INFO:
    logging.set_verbosity(logging.WARNING)
  jax.config.update("jax_default_matmul_precision", matmul_precision)
  if x64:
    jax.config.update("jax_enable_x64", True)


def run_or_exit(fn, *args, **kwargs):
  """Runs a library entry point; user errors (bad paths, bad config) end in one line."""
  try:
    return fn(*args, **kwargs)
  except (ValueError, FileNotFoundError, NotADirectoryError) as e:
    if os.environ.get("KKTJAX_TRACEBACK"):
      raise
    sys.exit(f"error: {e}")


def print_victim_report(report: dict) -> None:
  print(f"{'run':>6} {'epoch':>8} {'loss':>10} {'train acc':>9} {'min margin':>11} failed")
  for i in range(len(report["run_id"])):
    print(f"{report['run_id'][i]:>6} {report['epoch'][i]:>8} {report['loss'][i]:>10.3e} "
          f"{report['train_accuracy'][i]:>9.3f} {report['min_margin'][i]:>11.4f} "
          f"{report['failed'][i]}")


def pair_batches(data_dir: str | None, synthetic: bool, batch_size: int, seed: int,
                 noise_fraction: float, num_workers: int):
  """The restorers' input: the balanced pair stream of a dataset, or edm_flax's synthetic pairs.

  This is where the pair records meet edm_flax, which never imports kktjax.
  """
  if synthetic:
    from edm_flax import input_pipeline  # pylint: disable=g-import-not-at-top
    return input_pipeline.SyntheticPairSource(batch_size, seed=seed)
  from kktjax import restorers, stream  # pylint: disable=g-import-not-at-top
  source = run_or_exit(restorers.pair_source, data_dir)
  return run_or_exit(stream.make_train_stream, source, batch_size, seed, noise_fraction,
                     num_workers=num_workers)


def train_on_pairs(train_fn, config, workdir: str, data, num_steps):
  """Runs a restorer trainer on `data`, closing the stream (grain workers) however it ends."""
  try:
    return run_or_exit(train_fn, config, workdir, data, num_steps=num_steps)
  finally:
    if hasattr(data, "close"):
      data.close()
