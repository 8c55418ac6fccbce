r"""Trains the BF-DnCNN baseline on the pair stream; resumes from workdir.

  python -m launch.train_dncnn --config=edm_flax/configs/dncnn.py:tiny --synthetic \
      --workdir=/tmp/dncnn
  python -m launch.train_dncnn --data_dir=runs/pairs --workdir=runs/dncnn --num_workers=8
"""
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from launch import common
from launch import pair_flags

flags.adopt_module_key_flags(common)   # --tfds_data_dir shows in --help
flags.adopt_module_key_flags(pair_flags)

_CONFIG = config_flags.DEFINE_config_file("config", "edm_flax/configs/dncnn.py",
                                          "BF-DnCNN config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, stats.jsonl).",
                               required=True)


def main(argv):
  del argv
  config = _CONFIG.value
  pair_flags.check()
  common.setup_jax(matmul_precision="highest")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  from edm_flax import train_dncnn  # after setup_jax
  data = pair_flags.batches(config)
  state = common.train_on_pairs(train_dncnn.train, config, _WORKDIR.value, data,
                                pair_flags.NUM_STEPS.value)
  print(f"step={int(state.step)} workdir={_WORKDIR.value}")


if __name__ == "__main__":
  app.run(main)
