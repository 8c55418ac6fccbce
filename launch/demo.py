r"""`make demo`: the whole pipeline on real CIFAR-10 at a tiny scale, in minutes on a CPU.

  python -m launch.demo --workdir=demo_out

Stages (each resumable; each writes into its own sub-directory of --workdir):
  1. victims   a vmapped batch of 3072-1000-1000-1 victims on balanced CIFAR-10 subsets
  2. attack    the KKT reconstruction attack on them; best reconstruction per training image
  3. dataset   a tiny pair dataset (augmented runs, confident matches, ArrayRecord) + report
  4. restorer  a short training of a tiny conditional EDM restorer and a BF-DnCNN on the pairs
  5. evaluate  the paper's evaluation protocol on a held-out victim, with the report's figures
"""
import os
import time

from absl import app
from absl import flags

from launch import common

flags.adopt_module_key_flags(common)   # --tfds_data_dir shows in --help

_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Where the demo writes everything.")
_RESTORER_STEPS = flags.DEFINE_integer("restorer_steps", 150, "Tiny EDM training steps.")
_DNCNN_STEPS = flags.DEFINE_integer("dncnn_steps", 150, "Tiny BF-DnCNN training steps.")


def _banner(i, text, t0):
  print(f"\n== {i}. {text}   [{time.time() - t0:.0f} s]", flush=True)


def main(argv):
  del argv
  common.setup_jax()
  from kktjax import demo
  t0 = time.time()
  workdir = os.path.abspath(_WORKDIR.value)
  stages = demo.stages(workdir, restorer_steps=_RESTORER_STEPS.value,
                       dncnn_steps=_DNCNN_STEPS.value)
  for i, (title, fn) in enumerate(stages, start=1):
    _banner(i, title, t0)
    common.run_or_exit(fn)
  print(f"\ndemo finished in {time.time() - t0:.0f} s")
  print(f"evaluation report: {os.path.join(workdir, 'evaluate', 'report', 'report.md')}")
  print(f"dataset report:    {os.path.join(workdir, 'dataset', 'report', 'report.md')}")


if __name__ == "__main__":
  app.run(main)
