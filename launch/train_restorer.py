r"""Trains the conditional EDM (DDPM++) restorer on the pair stream; resumes from workdir.

  python -m launch.train_restorer --config=edm_flax/configs/default.py:tiny --synthetic \
      --workdir=/tmp/restorer
  python -m launch.train_restorer --config=edm_flax/configs/default.py:cifar \
      --data_dir=runs/pairs --workdir=runs/restorer --num_workers=8
"""
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from launch import common
from launch import pair_flags

flags.adopt_module_key_flags(common)   # --tfds_data_dir shows in --help
flags.adopt_module_key_flags(pair_flags)

_CONFIG = config_flags.DEFINE_config_file("config", "edm_flax/configs/default.py:cifar",
                                          "Restorer config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, stats.jsonl).",
                               required=True)


def main(argv):
  del argv
  config = _CONFIG.value
  pair_flags.check()
  common.setup_jax(x64=config.network.dtype == "float64",
                   matmul_precision=config.training.matmul_precision)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  from edm_flax import train  # after setup_jax
  data = pair_flags.batches(config)
  state = common.train_on_pairs(train.train_and_evaluate, config, _WORKDIR.value, data,
                                pair_flags.NUM_STEPS.value)
  print(f"step={int(state.step)} workdir={_WORKDIR.value}")


if __name__ == "__main__":
  app.run(main)
