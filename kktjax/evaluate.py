"""The paper's evaluation (SPEC §9) as resumable stages, each with its own outputs.

  workdir/victim/          launch.train_victims-style checkpoint of the evaluation victim
  workdir/sweep/           batch_XXXX.npz: post-processed snapshots of the kept runs, runs.json
  workdir/restored/<m>/    batch_XXXX.npz: each method's restoration of every candidate
  workdir/match/<m>.npz    best SSIM / HaarPSI (and candidate index) per training image
  workdir/report/          report.json, report.md and the figures

Every stage skips work whose output already exists, so the experiment can be killed and
continued at any point, and each stage can be rerun alone (delete its folder).
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kktjax import data as data_lib
from kktjax import kkt
from kktjax import match
from kktjax import plotting
from kktjax import seeding
from kktjax import victim as victim_lib

STAGES = ("victim", "sweep", "restore", "match", "report")
Restorer = Callable[[np.ndarray, jax.Array], np.ndarray]


def _save_npz(path: str, **arrays) -> None:
  """Atomic write: a killed job never leaves a truncated stage output behind."""
  tmp = f"{path}.tmp{os.getpid()}.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _save_json(path: str, obj) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


# ------------------------------------------------------------------------------------------
# Stage 1: the evaluation victim.
# ------------------------------------------------------------------------------------------
def stage_victim(config, workdir: str, progress: bool = True) -> victim_lib.VictimBatch:
  """Trains (or resumes) the victim on held-out images (evaluation recipe by default)."""
  return victim_lib.train_victims(config.victim, os.path.join(workdir, "victim"), progress)


def victim_images(batch: victim_lib.VictimBatch) -> tuple[np.ndarray, np.ndarray]:
  """(training images [n, 32, 32, 3] in [0, 1], μ [32, 32, 3]) of the (single) victim."""
  mu = np.asarray(batch.mu[0])
  return np.asarray(data_lib.unflatten_chw(batch.x[0])) + mu, mu


# ------------------------------------------------------------------------------------------
# Stage 2: the sweep.
# ------------------------------------------------------------------------------------------
def sweep_hparams(config) -> kkt.AttackHParams:
  key = seeding.stream_key(config.seed, 0, "attack")
  return kkt.hparams_from_config(config.attack, jax.random.fold_in(key, 0), 1)


def stage_sweep(config, workdir: str, batch: victim_lib.VictimBatch,
                progress: bool = True) -> list[dict]:
  """Runs the sweep in batches of `runs_per_batch` vmapped runs; returns per-run records."""
  out = os.path.join(workdir, "sweep")
  os.makedirs(out, exist_ok=True)
  hp = sweep_hparams(config)
  num_runs = int(config.attack.num_runs)
  init_key = jax.random.fold_in(seeding.stream_key(config.seed, 0, "attack"), 1)
  _, mu = victim_images(batch)
  runs = []
  for b, start in enumerate(range(0, num_runs, config.runs_per_batch)):
    stop = min(start + config.runs_per_batch, num_runs)
    path = os.path.join(out, f"batch_{b:04d}.npz")
    if not os.path.exists(path):
      sub = kkt.AttackHParams(*(np.asarray(v)[:, start:stop] for v in hp))
      t0 = time.time()
      res = kkt.run_from_config(batch.state.params, config.attack,
                                jax.random.fold_in(init_key, b), hparams=sub,
                                train_images=jnp.asarray(batch.x), progress=progress)
      kept = res.status[0] == kkt.RUNNING          # finished all iterations
      snaps = res.snapshots[0][kept]               # [R_kept, S, N, D]
      r, s, n, _ = snaps.shape
      images = data_lib.unflatten_chw(snaps.reshape(r * s * n, -1))
      post = np.asarray(match.postprocess_rscale(jnp.asarray(images), jnp.asarray(mu))[0]) \
          if len(images) else np.zeros((0, 32, 32, 3), np.float32)
      run_ids = np.arange(start, stop)
      _save_npz(path, images=post.astype(np.float32),
                run=np.repeat(run_ids[kept], s * n),
                snapshot_iter=np.tile(np.repeat(np.asarray(res.snapshot_iters), n), r),
                candidate=np.tile(np.arange(n), r * s),
                status=res.status[0], abort_iter=res.abort_iter[0], loss=res.loss[0],
                seconds=time.time() - t0)
    with np.load(path) as f:
      for i, run_id in enumerate(range(start, stop)):
        runs.append({"run": run_id, "status": int(f["status"][i]),
                     "abort_iter": int(f["abort_iter"][i]), "loss": float(f["loss"][i]),
                     **{k: float(np.asarray(v)[0, run_id]) for k, v in hp._asdict().items()}})
  _save_json(os.path.join(out, "runs.json"), runs)
  return runs


def sweep_batches(workdir: str) -> list[str]:
  out = os.path.join(workdir, "sweep")
  return sorted(os.path.join(out, f) for f in os.listdir(out)
                if f.startswith("batch_") and f.endswith(".npz"))


def load_candidates(workdir: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """All kept post-processed candidates [M, 32, 32, 3] and their (run, iter, candidate) ids."""
  images, meta = [], {"run": [], "snapshot_iter": [], "candidate": []}
  for p in sweep_batches(workdir):
    with np.load(p) as f:
      images.append(f["images"])
      for k in meta:
        meta[k].append(f[k])
  if not images:
    raise ValueError(f"no sweep outputs in {workdir}/sweep; run the sweep stage first")
  return np.concatenate(images), {k: np.concatenate(v) for k, v in meta.items()}


# ------------------------------------------------------------------------------------------
# Stage 3: restoration with each method.
# ------------------------------------------------------------------------------------------
def build_restorers(config) -> tuple[dict[str, Restorer], dict[str, str]]:
  """The available methods, and for the unavailable ones why they were skipped."""
  from kktjax import restorers
  methods, skipped = {}, {}
  for name in config.methods:
    try:
      methods[name] = restorers.build(name, config)
    except restorers.Unavailable as e:
      skipped[name] = str(e)
  return methods, skipped


def stage_restore(config, workdir: str, methods: dict[str, Restorer],
                  progress: bool = True) -> None:
  """Applies every method to every kept candidate, one output file per sweep batch."""
  from tqdm import tqdm
  for name, fn in methods.items():
    out = os.path.join(workdir, "restored", name)
    os.makedirs(out, exist_ok=True)
    for i, src in enumerate(tqdm(sweep_batches(workdir), desc=f"restore {name}",
                                 disable=not progress)):
      dst = os.path.join(out, os.path.basename(src))
      if os.path.exists(dst):
        continue
      with np.load(src) as f:
        images = f["images"]
      key = jax.random.fold_in(seeding.stream_key(config.seed, 0, "noise"), i)
      restored = fn(images, key) if len(images) else images
      _save_npz(dst, images=np.asarray(restored, np.float32))


def load_restored(workdir: str, method: str) -> np.ndarray:
  if method == "plain":
    return load_candidates(workdir)[0]
  out = os.path.join(workdir, "restored", method)
  return np.concatenate([np.load(os.path.join(out, os.path.basename(p)))["images"]
                         for p in sweep_batches(workdir)])


# ------------------------------------------------------------------------------------------
# Stage 4: matching.
# ------------------------------------------------------------------------------------------
def stage_match(config, workdir: str, batch: victim_lib.VictimBatch,
                methods: list[str]) -> dict[str, dict[str, np.ndarray]]:
  """Best SSIM and HaarPSI per training image for each method (SPEC §4.4)."""
  train, mu = victim_images(batch)
  out = os.path.join(workdir, "match")
  os.makedirs(out, exist_ok=True)
  results = {}
  for name in methods:
    path = os.path.join(out, f"{name}.npz")
    if not os.path.exists(path):
      images = load_restored(workdir, name)
      best = match.best_match_per_train(images, train - mu, mu, mode=config.match_mode,
                                        assignment=config.assignment, restored=True,
                                        ssim_variant=config.ssim_variant,
                                        haarpsi_subsample=config.haarpsi_subsample,
                                        chunk_size=min(4096, len(images)))
      _save_npz(path, **{k: np.asarray(v) for k, v in best._asdict().items()})
    with np.load(path) as f:
      results[name] = {k: f[k] for k in f.files}
  return results


# ------------------------------------------------------------------------------------------
# Stage 5: report.
# ------------------------------------------------------------------------------------------
def _good(scores, threshold):
  return int(np.sum(np.nan_to_num(scores, nan=-np.inf) > threshold))


def summarize(config, results: dict[str, dict[str, np.ndarray]], runs: list[dict],
              skipped: dict[str, str]) -> dict:
  """Every number of the report: good counts, worse-after-restoration counts, run statistics."""
  plain = results.get("plain")
  summary = {
      "num_train": int(len(next(iter(results.values()))["best_ssim"])),
      "runs": len(runs),
      "runs_kept": sum(r["status"] == kkt.RUNNING for r in runs),
      "runs_aborted": sum(r["status"] == kkt.ABORTED for r in runs),
      "runs_diverged": sum(r["status"] == kkt.DIVERGED for r in runs),
      "ssim_variant": config.ssim_variant, "haarpsi_subsample": bool(config.haarpsi_subsample),
      "match_mode": config.match_mode, "assignment": config.assignment,
      "good_threshold": config.good_threshold, "skipped_methods": skipped,
      "paper": {"plain_good": 59, "diffusion_x20_good": 214, "num_train": 500,
                "worse_after_x20": 0},
      "methods": {}}
  for name, r in results.items():
    m = {"good_ssim": _good(r["best_ssim"], config.good_threshold),
         "mean_best_ssim": float(np.nanmean(np.where(np.isfinite(r["best_ssim"]),
                                                     r["best_ssim"], np.nan))),
         "mean_best_haarpsi": float(np.nanmean(np.where(np.isfinite(r["best_haarpsi"]),
                                                        r["best_haarpsi"], np.nan))),
         "best_ssim": [float(v) for v in r["best_ssim"]],
         "best_haarpsi": [float(v) for v in r["best_haarpsi"]]}
    if plain is not None and name != "plain":
      m["worse_ssim_than_plain"] = int(np.sum(r["best_ssim"] < plain["best_ssim"] - 1e-6))
      m["worse_haarpsi_than_plain"] = int(np.sum(r["best_haarpsi"] <
                                                 plain["best_haarpsi"] - 1e-6))
      m["good_gained"] = m["good_ssim"] - _good(plain["best_ssim"], config.good_threshold)
    summary["methods"][name] = m
  return summary


def _figures(config, workdir, out, summary, results, train, mu, batch_methods) -> list[str]:
  from matplotlib.figure import Figure  # no pyplot: no global backend, no open figures
  files = []
  # Fig. 2: sorted best scores per method.
  fig = Figure(figsize=(9, 3.5))
  axes = fig.subplots(1, 2)
  for ax, metric in zip(axes, ("best_ssim", "best_haarpsi")):
    for name, r in results.items():
      ax.plot(np.sort(np.nan_to_num(r[metric], neginf=0))[::-1], label=name)
    ax.set_xlabel("rank"), ax.set_ylabel(metric.replace("best_", "best ")), ax.grid(alpha=.3)
  axes[0].axhline(config.good_threshold, color="k", ls=":", lw=1)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "fig2_sorted_scores.png"), dpi=80)
  files.append("fig2_sorted_scores.png")
  # Fig. 3: plain vs the last (strongest) method.
  best_name = [n for n in results if n != "plain"]
  if "plain" in results and best_name:
    other = "diffusion_x20" if "diffusion_x20" in results else best_name[-1]
    fig = Figure(figsize=(8, 4))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("best_ssim", "best_haarpsi")):
      a = np.nan_to_num(results["plain"][metric], neginf=0)
      b = np.nan_to_num(results[other][metric], neginf=0)
      ax.scatter(a, b, s=6)
      ax.plot([0, 1], [0, 1], "k:", lw=1)
      ax.set_xlabel(f"plain {metric}"), ax.set_ylabel(f"{other} {metric}")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fig3_scatter.png"), dpi=80)
    files.append("fig3_scatter.png")
  # Fig. 1: best reconstructions per method over the originals (black = no match).
  order_key = results.get("diffusion_x20", results.get("plain", next(iter(results.values()))))
  order = np.argsort(-np.nan_to_num(order_key["best_ssim"], neginf=-1))[:config.grid_best]
  rows = []
  for name in results:
    images = batch_methods(name)
    idx = results[name]["best_ssim_index"]
    rows.append([images[idx[t]] if idx[t] >= 0 else None for t in order])
  rows.append([train[t] for t in order])
  plotting.save_png(os.path.join(out, "fig1_best_grid.png"), plotting.image_grid(rows))
  files.append("fig1_best_grid.png")
  # Fig. 4: hallucinations: plain candidates that match nothing, and what the restorers make.
  if "plain" in results:
    plain = batch_methods("plain")
    worst = np.argsort(np.nan_to_num(results["plain"]["best_ssim"], neginf=-1))
    picks = []
    for t in worst[:config.hallucination_examples]:
      i = results["plain"]["best_ssim_index"][t]
      if i >= 0:
        picks.append((t, i))
    rows = [[plain[i] for _, i in picks]]
    for name in results:
      if name != "plain":
        rows.append([batch_methods(name)[i] for _, i in picks])
    rows.append([train[t] for t, _ in picks])
    if picks:
      plotting.save_png(os.path.join(out, "fig4_hallucinations.png"), plotting.image_grid(rows))
      files.append("fig4_hallucinations.png")
  return files


def stage_report(config, workdir: str, batch: victim_lib.VictimBatch,
                 results: dict[str, dict[str, np.ndarray]], runs: list[dict],
                 skipped: dict[str, str]) -> dict:
  out = os.path.join(workdir, "report")
  os.makedirs(out, exist_ok=True)
  train, mu = victim_images(batch)
  summary = summarize(config, results, runs, skipped)
  cache = {}
  def images_of(name):
    if name not in cache:
      cache[name] = load_restored(workdir, name)
    return cache[name]
  summary["figures"] = _figures(config, workdir, out, summary, results, train, mu, images_of)
  _save_json(os.path.join(out, "report.json"), summary)
  lines = [
      "# Evaluation report", "",
      f"Victim: {summary['num_train']} held-out training images. Sweep: {summary['runs']} runs, "
      f"{summary['runs_kept']} kept, {summary['runs_aborted']} aborted, "
      f"{summary['runs_diverged']} diverged.",
      f"Matching: {summary['match_mode']} ({summary['assignment']}), SSIM variant "
      f"'{summary['ssim_variant']}', HaarPSI subsampling {summary['haarpsi_subsample']}. "
      "CIFAR-10 here is decoded from JPEG copies and the held-out pool is the test split minus "
      "the ciFAIR duplicate lists (no ciFAIR replacement images).", "",
      f"| method | good (SSIM > {config.good_threshold}) | mean best SSIM | mean best HaarPSI "
      "| worse SSIM than plain | worse HaarPSI than plain |",
      "|---|---|---|---|---|---|"]
  for name, m in summary["methods"].items():
    lines.append(f"| {name} | {m['good_ssim']} | {m['mean_best_ssim']:.3f} | "
                 f"{m['mean_best_haarpsi']:.3f} | {m.get('worse_ssim_than_plain', '–')} | "
                 f"{m.get('worse_haarpsi_than_plain', '–')} |")
  lines += ["", "Paper (500 images): plain 59 good, diffusion ×20 214 good, none worse.", ""]
  for name, why in skipped.items():
    lines.append(f"- `{name}` skipped: {why}")
  lines.append("")
  for f in summary["figures"]:
    lines += [f"![{f}]({f})", ""]
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines))
  return summary


def run(config, workdir: str, stages=STAGES, progress: bool = True) -> dict | None:
  """Runs the requested stages in order (each resumes from what is already on disk)."""
  unknown = set(stages) - set(STAGES)
  if unknown:
    raise ValueError(f"unknown evaluation stages {sorted(unknown)}; expected some of {STAGES}")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "evaluate_config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  if "victim" in stages:
    batch = stage_victim(config, workdir, progress)
  else:
    batch = victim_lib.restore_victims(os.path.join(workdir, "victim"))
  if batch.run_ids.shape[0] != 1:
    raise ValueError("evaluation attacks exactly one victim; set config.victim.num_victims=1")
  runs = None
  if "sweep" in stages:
    runs = stage_sweep(config, workdir, batch, progress)
  methods, skipped = ({}, {})
  if "restore" in stages or "report" in stages or "match" in stages:
    methods, skipped = build_restorers(config)
  if "restore" in stages:
    stage_restore(config, workdir, {k: v for k, v in methods.items() if k != "plain"}, progress)
  results = None
  if "match" in stages or "report" in stages:
    results = stage_match(config, workdir, batch, list(methods))
  if "report" in stages:
    if runs is None:
      with open(os.path.join(workdir, "sweep", "runs.json")) as f:
        runs = json.load(f)
    return stage_report(config, workdir, batch, results, runs, skipped)
  return None
