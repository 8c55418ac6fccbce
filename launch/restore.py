r"""Restores reconstructions (a folder of PNGs or an .npz) with a trained EDM restorer.

  python -m launch.restore --workdir=runs/restorer --input=recons/ --output=/tmp/restored
  python -m launch.restore --workdir=runs/restorer --input=recons.npz --output=/tmp/restored \
      --num_samples=1

Writes <output>/<name>.png (mean of the samples), grid.png (rows: input, restored) and
restored.npz (mean, spread, names).
"""
from absl import app
from absl import flags

from launch import common

flags.adopt_module_key_flags(common)   # --tfds_data_dir shows in --help

_WORKDIR = flags.DEFINE_string("workdir", None, "Restorer run directory (with checkpoints/).",
                               required=True)
_INPUT = flags.DEFINE_string("input", None, "Folder of PNGs, or an .npz ('images' or its first "
                             "array), NHWC in [0,1] or uint8.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output folder.", required=True)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Samples averaged per image "
                                    "(default: the config's restore.num_samples, 20).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 512, "Sampler jobs per device call.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the latents.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def main(argv):
  del argv
  common.setup_jax(matmul_precision="highest")
  from edm_flax import restore  # after setup_jax
  result = common.run_or_exit(restore.restore_files, _WORKDIR.value, _INPUT.value, _OUTPUT.value,
                              num_samples=_NUM_SAMPLES.value, batch_size=_BATCH_SIZE.value,
                              seed=_SEED.value, step=_STEP.value)
  print(f"restored {len(result['mean'])} images to {_OUTPUT.value}; mean spread "
        f"{result['spread'].mean():.4f}")


if __name__ == "__main__":
  app.run(main)
