"""Shared launcher plumbing: JAX options, one-line errors instead of tracebacks."""
import os
import sys

import jax
from absl import logging


def setup_jax(x64: bool = False, matmul_precision: str = "highest") -> None:
  """Victims and the attack run in true fp32 (or fp64): no TF32 on Ampere/Hopper (SPEC §2)."""
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
