r"""Attacks saved victims with the KKT reconstruction attack and scores the candidates.

  python -m launch.reconstruct --victims=/tmp/victims --workdir=/tmp/recon \
      --config=kktjax/configs/reconstruct.py:generate --config.num_iters=2000
  python -m launch.reconstruct --victims=/tmp/victims --workdir=/tmp/sweep \
      --config=kktjax/configs/reconstruct.py:evaluate --config.num_runs=16

Writes snapshots_victim<k>.npz, summary.json (per run: status, final loss, confident matches,
best SSIM) and grid_victim<k>.png (best reconstruction over original, sorted by SSIM).
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from launch import common

flags.adopt_module_key_flags(common)   # --tfds_data_dir shows in --help

_CONFIG = config_flags.DEFINE_config_file("config", "kktjax/configs/reconstruct.py:generate",
                                          "Attack config file[:variant].", lock_config=True)
_VICTIMS = flags.DEFINE_string("victims", None, "Workdir of launch.train_victims.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the candidate init and the sweep.")
_X64 = flags.DEFINE_bool("x64", False, "Enable float64 (needed for float64 victims).")


def main(argv):
  del argv
  common.setup_jax(x64=_X64.value, matmul_precision=_CONFIG.value.matmul_precision)
  from kktjax import reconstruct
  summary = common.run_or_exit(reconstruct.run, _VICTIMS.value, _CONFIG.value, _WORKDIR.value,
                               seed=_SEED.value)
  for v in summary["victims"]:
    statuses = [r["status"] for r in v["runs"]]
    print(f"victim {v['run_id']}: {v['good_reconstructions']}/{v['num_train']} training images "
          f"with SSIM > 0.4; runs: {', '.join(f'{s}={statuses.count(s)}' for s in set(statuses))}")
  print(f"{summary['iterations_per_second']:.1f} iterations/s; outputs in {_WORKDIR.value}")


if __name__ == "__main__":
  app.run(main)
