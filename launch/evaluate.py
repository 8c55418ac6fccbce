r"""The paper's evaluation (SPEC §9) as one command with resumable stages.

  python -m launch.evaluate --config=kktjax/configs/evaluate.py:tiny --workdir=/tmp/eval
  python -m launch.evaluate --config=kktjax/configs/evaluate.py:paper --workdir=runs/eval \
      --config.restorer_workdir=runs/restorer --config.dncnn_workdir=runs/dncnn
  python -m launch.evaluate ... --stages=match,report     # rerun single stages

Stages: victim (train the held-out victim), sweep (the random hyperparameter sweep of attacks),
restore (every candidate by every available method), match (best SSIM / HaarPSI per training
image), report (report.md, report.json and figures under <workdir>/report).
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from launch import common

flags.adopt_module_key_flags(common)   # --tfds_data_dir shows in --help

_CONFIG = config_flags.DEFINE_config_file("config", "kktjax/configs/evaluate.py:tiny",
                                          "Evaluation config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_STAGES = flags.DEFINE_list("stages", "victim,sweep,restore,match,report", "Stages to run.")


def main(argv):
  del argv
  config = _CONFIG.value
  common.setup_jax(x64=config.victim.dtype == "float64")
  from kktjax import evaluate
  summary = common.run_or_exit(evaluate.run, config, _WORKDIR.value, stages=_STAGES.value)
  if summary:
    for name, m in summary["methods"].items():
      print(f"{name:>14}: {m['good_ssim']:4d}/{summary['num_train']} good (SSIM > "
            f"{summary['good_threshold']}), mean best SSIM {m['mean_best_ssim']:.3f}, "
            f"worse than plain: {m.get('worse_ssim_than_plain', '-')}")
    print(f"report: {_WORKDIR.value}/report/report.md")


if __name__ == "__main__":
  app.run(main)
