r"""Generates the pair dataset (victims, KKT attacks, confident matches); resumable.

  python -m launch.generate_dataset --config=kktjax/configs/generate.py:tiny --workdir=/tmp/gen
  python -m launch.generate_dataset --config=kktjax/configs/generate.py:paper \
      --config.runs_per_device=8 --workdir=runs/pairs --distributed   # one process per host
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from launch import common

flags.adopt_module_key_flags(common)   # --tfds_data_dir shows in --help

_CONFIG = config_flags.DEFINE_config_file("config", "kktjax/configs/generate.py:tiny",
                                          "Generation config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (pairs, run logs, stats).",
                               required=True)
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() "
                                 "(multi-host; settings from the cluster environment).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv):
  del argv
  config = _CONFIG.value
  common.setup_jax(x64=config.victim.dtype == "float64", matmul_precision=config.matmul_precision)
  import jax
  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from kktjax import generate
  stats = common.run_or_exit(generate.run, config, _WORKDIR.value)
  print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in stats.items()))


if __name__ == "__main__":
  app.run(main)
