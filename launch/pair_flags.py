"""Flags shared by the two restorer trainers (train_restorer, train_dncnn): where their pairs
come from. Importing this module defines them; `batches` turns them into the input stream."""
from absl import app
from absl import flags

from launch import common

DATA_DIR = flags.DEFINE_string("data_dir", None, "A generate_dataset workdir or one pair folder.")
SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Train on the synthetic stand-in pairs.")
NUM_WORKERS = flags.DEFINE_integer("num_workers", 0, "grain worker processes for the stream.")
NOISE_FRACTION = flags.DEFINE_float("noise_fraction", 0.1, "Share of noise examples (SPEC §6).")
NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Stop after this many steps in total.")


def check() -> None:
  """Fails fast, before any side effect, unless exactly one source is given."""
  if bool(DATA_DIR.value) == SYNTHETIC.value:
    raise app.UsageError("give exactly one of --data_dir and --synthetic")


def batches(config):
  """The pair batches of `config.training.batch_size` the flags ask for."""
  return common.pair_batches(DATA_DIR.value, SYNTHETIC.value, config.training.batch_size,
                             config.training.seed, NOISE_FRACTION.value, NUM_WORKERS.value)
