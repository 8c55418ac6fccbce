r"""`make demo`: the whole pipeline on real CIFAR-10 at a tiny scale.

  python -m launch.demo --workdir=demo_out

Stages (each resumable, each writes into its own sub-directory of --workdir):
  1. victims: a vmapped batch of victims, trained on balanced CIFAR-10 subsets.
"""
import os
import time

from absl import app
from absl import flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Where the demo writes everything.")


def main(argv):
  del argv
  common.setup_jax()
  from kktjax import victim
  from kktjax.configs import victims as victims_config
  t0 = time.time()
  workdir = _WORKDIR.value
  print("== 1. victims: 4 MLPs (3072-1000-1000-1) trained at once with jax.vmap")
  config = victims_config.get_config("tiny")
  batch = common.run_or_exit(victim.train_victims, config, os.path.join(workdir, "victims"))
  common.print_victim_report(victim.victim_report(batch))
  print(f"demo finished in {time.time() - t0:.0f} s; outputs in {os.path.abspath(workdir)}")


if __name__ == "__main__":
  app.run(main)
