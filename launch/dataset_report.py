r"""Writes a Markdown + PNG report on a generated pair dataset.

  python -m launch.dataset_report --workdir=/tmp/gen      # writes /tmp/gen/report/report.md
"""
from absl import app
from absl import flags

from launch import common

flags.adopt_module_key_flags(common)   # --tfds_data_dir shows in --help

_WORKDIR = flags.DEFINE_string("workdir", None, "A generate_dataset workdir.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory; default <workdir>/report.")
_MAX_RECORDS = flags.DEFINE_integer("max_records", 4000, "Pairs decoded for the SSIM sample.")
_SAMPLES = flags.DEFINE_integer("samples", 8, "Matched candidates shown in samples.png.")


def main(argv):
  del argv
  from kktjax import report
  numbers = common.run_or_exit(report.build_report, _WORKDIR.value, _OUT.value,
                               max_records=_MAX_RECORDS.value, num_samples=_SAMPLES.value)
  out = _OUT.value or f"{_WORKDIR.value}/report"
  print(f"runs={numbers['runs']} pairs={numbers['pairs']} "
        f"pairs/run={numbers['pairs_per_run']:.1f} images={numbers['images_covered']} "
        f"report={out}/report.md")


if __name__ == "__main__":
  app.run(main)
