"""Attack saved victims and score the reconstructions (the `launch/reconstruct.py` job).

For each victim of a saved batch (`kktjax.victim.train_victims`), run the KKT attack with a
`configs/reconstruct.py` config (fixed hyperparameters or a random sweep, vmapped over victims
and runs), post-process every snapshot, and score it against the victim's training images:
confident matches (SPEC §4.3) per run, and each training image's best SSIM over all runs and
snapshots. Writes `snapshots.npz`, `summary.json` and `grid.png` per victim.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from kktjax import data as data_lib
from kktjax import kkt
from kktjax import match
from kktjax import metrics
from kktjax import plotting
from kktjax import seeding
from kktjax import victim as victim_lib


def score_snapshots(snapshots: np.ndarray, valid: np.ndarray, train: np.ndarray, mu: np.ndarray,
                    ssim_variant: str = "haim"):
  """Confident matches and best SSIMs of one victim's runs.

  Args:
    snapshots: [R, S, N, D] mean-subtracted candidates (C,H,W flattened); NaN where invalid.
    valid: [R, S] the snapshot was taken while the run was still running.
    train: [n, 32, 32, 3] the victim's clean training images in [0, 1].
    mu: [32, 32, 3] the victim's mean.

  Returns:
    (ConfidentMatch with fields [R, N], ssim [R, S, N, n] post-processed snapshot vs train,
     post-processed images [R, S, N, 32, 32, 3]).
  """
  r, s, n, _ = snapshots.shape
  images = data_lib.unflatten_chw(np.nan_to_num(snapshots.reshape(r * s * n, -1)))
  post, _ = match.postprocess_rscale(jnp.asarray(images), jnp.asarray(mu))
  scores = metrics.ssim_matrix(post, jnp.asarray(train), variant=ssim_variant)
  scores = np.asarray(scores).reshape(r, s, n, -1)
  scores = np.where(valid[:, :, None, None], scores, -np.inf)
  # confident_matches wants [..., S, T] per candidate.
  cm = match.confident_matches(jnp.asarray(np.moveaxis(scores, 1, 2)))
  return cm, scores, np.asarray(post).reshape(r, s, n, *train.shape[1:])


def run(victims_workdir: str, config, workdir: str, *, seed: int = 0,
        progress: bool = True) -> dict:
  """Attacks every victim saved in `victims_workdir`; returns the JSON summary it writes."""
  batch = victim_lib.restore_victims(victims_workdir)
  params = batch.state.params
  num_victims = int(batch.run_ids.shape[0])
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "reconstruct_config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  key = seeding.stream_key(seed, int(batch.run_ids[0]), "attack")
  t0 = time.time()
  result = kkt.run_from_config(params, config, key, train_images=jnp.asarray(batch.x),
                               progress=progress)
  elapsed = time.time() - t0
  summary = {"victims_workdir": os.path.abspath(victims_workdir), "seconds": elapsed,
             "iterations": int(result.num_iters),
             "iterations_per_second": result.num_iters / max(elapsed, 1e-9), "victims": []}
  status_names = {kkt.RUNNING: "finished", kkt.ABORTED: "aborted", kkt.DIVERGED: "diverged"}
  for v in range(num_victims):
    train = np.asarray(data_lib.unflatten_chw(batch.x[v]) + batch.mu[v])
    cm, scores, post = score_snapshots(result.snapshots[v], result.snapshot_valid[v], train,
                                       batch.mu[v])
    best = scores.max(axis=(0, 1, 2))                      # per training image
    flat = scores.reshape(-1, scores.shape[-1])
    best_flat = flat.argmax(axis=0)
    runs = []
    for r in range(scores.shape[0]):
      runs.append({"status": status_names[int(result.status[v, r])],
                   "steps": int(result.steps[v, r]),
                   "final_loss": float(result.loss[v, r]),
                   "final_loss_kkt": float(result.loss_kkt[v, r]),
                   "confident_matches": int(np.sum(cm.matched[r])),
                   "distinct_images_matched": int(len(set(np.asarray(cm.target[r])[
                       np.asarray(cm.matched[r])].tolist()))),
                   "best_ssim": float(np.max(scores[r])) if np.isfinite(scores[r]).any()
                   else None,
                   "hparams": {k: float(np.asarray(getattr(result.hparams, k))[v, r])
                               for k in kkt.AttackHParams._fields}})
    good = int(np.sum(best > 0.4))
    summary["victims"].append({
        "run_id": int(batch.run_ids[v]), "num_train": int(train.shape[0]),
        "good_reconstructions": good,
        "best_ssim_per_train_image": [float(b) for b in best], "runs": runs})
    np.savez_compressed(os.path.join(workdir, f"snapshots_victim{v}.npz"),
                        snapshots=result.snapshots[v].astype(np.float32),
                        snapshot_iters=np.asarray(result.snapshot_iters),
                        valid=result.snapshot_valid[v], status=result.status[v],
                        lam=result.lam[v], mu=batch.mu[v])
    order = np.argsort(-best)
    picks = [post.reshape(-1, *train.shape[1:])[best_flat[t]] for t in order]
    grid = plotting.image_grid([picks, [train[t] for t in order]])
    plotting.save_png(os.path.join(workdir, f"grid_victim{v}.png"), grid)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary
