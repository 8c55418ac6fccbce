"""The demo pipeline (`make demo`): every stage of the mission at a CPU-sized scale.

Each stage is a plain function over a workdir, resumable like the jobs it calls, so the demo,
the notebooks and the tests share one code path with the launchers.
"""
from __future__ import annotations

import os

from kktjax import evaluate
from kktjax import generate
from kktjax import reconstruct
from kktjax import report
from kktjax import victim
from kktjax.configs import evaluate as evaluate_config
from kktjax.configs import generate as generate_config
from kktjax.configs import reconstruct as reconstruct_config
from kktjax.configs import victims as victims_config


def victims_stage(workdir: str):
  config = victims_config.get_config("tiny")
  batch = victim.train_victims(config, os.path.join(workdir, "victims"))
  rep = victim.victim_report(batch)
  for i, run in enumerate(rep["run_id"]):
    print(f"  victim {run}: train accuracy {rep['train_accuracy'][i]:.3f}, "
          f"min margin {rep['min_margin'][i]:.3f}, loss {rep['loss'][i]:.2e}")


def attack_stage(workdir: str):
  config = reconstruct_config.get_config("generate")
  config.m, config.num_iters, config.snapshot_iters = 20, 300, (100, 200, 300)
  summary = reconstruct.run(os.path.join(workdir, "victims"), config,
                            os.path.join(workdir, "attack"))
  for v in summary["victims"]:
    print(f"  victim {v['run_id']}: {v['good_reconstructions']}/{v['num_train']} training "
          f"images reconstructed with SSIM > 0.4 (grid: attack/grid_victim*.png)")


def dataset_config():
  return generate_config.get_config("tiny")


def dataset_stage(workdir: str):
  out = os.path.join(workdir, "dataset")
  stats = generate.run(dataset_config(), out)
  numbers = report.build_report(out)
  print(f"  {stats.get('runs', numbers.get('runs'))} runs, {numbers['pairs']} pairs, "
        f"{numbers['images_covered']} CIFAR images covered; report: dataset/report/report.md")


def restorer_stage(workdir: str, restorer_steps: int, dncnn_steps: int):
  from kktjax import restorers
  restorers.train_tiny(os.path.join(workdir, "dataset"), os.path.join(workdir, "restorer"),
                       os.path.join(workdir, "dncnn"), restorer_steps=restorer_steps,
                       dncnn_steps=dncnn_steps, batch_size=16)


def evaluate_stage(workdir: str):
  config = evaluate_config.get_config("tiny")
  # The demo's restorers were trained on width-100 victims' reconstructions; so is this victim.
  config.victim.width = dataset_config().victim.width
  config.victim.n_per_class = 20
  config.victim.epochs = 1000
  config.victim.chunk_epochs = 500
  config.attack.m = 20
  config.attack.num_iters = 400
  config.attack.snapshot_iters = (100, 200, 400)
  config.attack.abort_check_every = 100
  config.attack.abort_start = 200
  config.restorer_workdir = os.path.join(workdir, "restorer")
  config.dncnn_workdir = os.path.join(workdir, "dncnn")
  summary = evaluate.run(config, os.path.join(workdir, "evaluate"))
  for name, m in summary["methods"].items():
    print(f"  {name:>14}: {m['good_ssim']:3d}/{summary['num_train']} good (SSIM > 0.4), "
          f"worse than plain: {m.get('worse_ssim_than_plain', '-')}")


def stages(workdir: str, restorer_steps: int = 150, dncnn_steps: int = 150):
  return [
      ("victims: 4 MLPs trained at once with jax.vmap", lambda: victims_stage(workdir)),
      ("attack: KKT reconstruction of their training images", lambda: attack_stage(workdir)),
      ("dataset: augmented runs -> confident matches -> ArrayRecord pairs",
       lambda: dataset_stage(workdir)),
      ("restorer: tiny conditional EDM and BF-DnCNN on the pairs",
       lambda: restorer_stage(workdir, restorer_steps, dncnn_steps)),
      ("evaluate: held-out victim, sweep, restoration, matching, report",
       lambda: evaluate_stage(workdir)),
  ]
