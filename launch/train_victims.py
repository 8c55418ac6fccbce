r"""Trains a batch of victims (vmapped), resumable.

  python -m launch.train_victims --config=kktjax/configs/victims.py:tiny --workdir=/tmp/victims
  python -m launch.train_victims --config=kktjax/configs/victims.py:gen \
      --config.num_victims=64 --workdir=runs/victims
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from launch import common

flags.adopt_module_key_flags(common)   # --tfds_data_dir shows in --help

_CONFIG = config_flags.DEFINE_config_file("config", "kktjax/configs/victims.py:tiny",
                                          "Victim config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, victims.json).",
                               required=True)


def main(argv):
  del argv
  config = _CONFIG.value
  common.setup_jax(x64=config.dtype == "float64")
  from kktjax import victim
  batch = common.run_or_exit(victim.train_victims, config, _WORKDIR.value)
  common.print_victim_report(victim.victim_report(batch))


if __name__ == "__main__":
  app.run(main)
