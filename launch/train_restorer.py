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

flags.adopt_module_key_flags(common)   # --tfds_data_dir shows in --help

_CONFIG = config_flags.DEFINE_config_file("config", "edm_flax/configs/default.py:cifar",
                                          "Restorer config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, stats.jsonl).",
                               required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "A generate_dataset workdir or one pair folder.")
_SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Train on the synthetic stand-in pairs.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 0, "grain worker processes for the stream.")
_NOISE_FRACTION = flags.DEFINE_float("noise_fraction", 0.1, "Share of noise examples (SPEC §6).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Stop after this many steps in total.")


def main(argv):
  del argv
  config = _CONFIG.value
  if bool(_DATA_DIR.value) == _SYNTHETIC.value:
    raise app.UsageError("give exactly one of --data_dir and --synthetic")
  common.setup_jax(x64=config.network.dtype == "float64",
                   matmul_precision=config.training.matmul_precision)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  from edm_flax import train  # after setup_jax
  data = common.pair_batches(_DATA_DIR.value, _SYNTHETIC.value, config.training.batch_size,
                             config.training.seed, _NOISE_FRACTION.value, _NUM_WORKERS.value)
  state = common.train_on_pairs(train.train_and_evaluate, config, _WORKDIR.value, data, _NUM_STEPS.value)
  print(f"step={int(state.step)} workdir={_WORKDIR.value}")


if __name__ == "__main__":
  app.run(main)
