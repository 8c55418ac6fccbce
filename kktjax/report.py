"""A report on a generated pair dataset: totals, coverage, SSIM by snapshot, sample pairs.

`build_report(workdir)` reads a `kktjax.generate` workdir (ledgers, run logs, the shards' index
records and a random sample of pairs) and writes into `<workdir>/report/`:

  report.md            the summary table and the figures below
  report.json          the same numbers, machine-readable
  image_counts.png     histogram of z_j, the pairs per covered CIFAR image (SPEC §6 balancing)
  ssim_by_snapshot.png per snapshot iteration: b1 (best SSIM to any training image) of every
                       candidate, from the run logs; and the SSIM to the matched image of the
                       stored snapshots, from the sampled pairs
  samples.png          matched candidates: the post-processed snapshots, then the clean image

Only the sampled pairs are decoded, so the report costs the same for 1k or 60M pairs.
"""
from __future__ import annotations

import json
import os
from typing import Any

import matplotlib
from matplotlib.figure import Figure  # no pyplot: no global backend, no open figures
import numpy as np

from kktjax import generate
from kktjax import records


def _sample_groups(source: records.PairDataSource, num_snapshots: int, num_groups: int,
                   rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
  """Whole candidates (all their snapshots) around random keys; pairs of a candidate are stored
  consecutively (run, candidate, snapshot order)."""
  groups, seen = [], set()
  n = len(source)
  for k in rng.permutation(n)[:4 * num_groups]:
    lo, hi = max(0, k - num_snapshots + 1), min(n, k + num_snapshots)
    win = source.read_batch(np.arange(lo, hi))
    i = k - lo
    key = (int(win["run_id"][i]), int(win["candidate"][i]))
    if key in seen:
      continue
    seen.add(key)
    sel = (win["run_id"] == key[0]) & (win["candidate"] == key[1])
    order = np.argsort(win["snapshot_iter"][sel])
    groups.append({f: v[sel][order] for f, v in win.items()})
    if len(groups) == num_groups:
      break
  return groups


def _plot_counts(z: np.ndarray, path: str) -> None:
  fig = Figure(figsize=(6, 3.5))
  ax = fig.subplots()
  covered = z[z > 0]
  if covered.size:
    bins = np.arange(0, covered.max() + 2) if covered.max() < 60 else 50
    ax.hist(covered, bins=bins, color="tab:blue")
    ax.set_yscale("log")
  ax.set_xlabel("pairs per covered CIFAR image (z_j)")
  ax.set_ylabel("images")
  ax.set_title(f"{covered.size} images covered, {int(z.sum())} pairs")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def _plot_ssim(snaps: list[int], b1_hist: np.ndarray | None, sample: dict | None,
               path: str) -> None:
  fig = Figure(figsize=(11, 4))
  axes = fig.subplots(1, 2)
  ax = axes[0]
  if b1_hist is not None and b1_hist.sum():
    edges = generate.B1_HIST_EDGES
    centres = (edges[:-1] + edges[1:]) / 2
    cmap = matplotlib.colormaps["viridis"]
    for s, t in enumerate(snaps):
      h = b1_hist[s] / max(1, b1_hist[s].sum())
      ax.plot(centres, h, color=cmap(s / max(1, len(snaps) - 1)), label=str(t))
    ax.legend(title="iteration", fontsize=7, ncol=2)
  ax.axvline(0.4, color="grey", ls="--", lw=1)
  ax.set_xlabel("b1: best SSIM of a candidate to any training image")
  ax.set_ylabel("fraction of candidates")
  ax.set_title("all candidates (run logs)")
  ax = axes[1]
  if sample is not None and len(sample["ssim"]):
    data = [sample["ssim"][sample["snapshot_iter"] == t] for t in snaps]
    ax.boxplot([d if d.size else [np.nan] for d in data], showfliers=False)
    ax.set_xticks(np.arange(1, len(snaps) + 1), [str(t) for t in snaps], rotation=45)
  ax.axhline(0.4, color="grey", ls="--", lw=1)
  ax.set_xlabel("snapshot iteration")
  ax.set_ylabel("SSIM to the matched image")
  ax.set_title("stored pairs (sample)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def _plot_samples(groups: list[dict], path: str) -> None:
  rows = max(1, len(groups))
  cols = max([len(g["snapshot_iter"]) for g in groups] + [1]) + 1
  fig = Figure(figsize=(1.1 * cols, 1.2 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for r, g in enumerate(groups):
    for c in range(len(g["snapshot_iter"])):
      axes[r, c].imshow(np.clip(g["noisy"][c].astype(np.float32), 0, 1))
      axes[r, c].set_title(f"{g['snapshot_iter'][c]}\n{g['ssim'][c]:.2f}", fontsize=6)
    axes[r, -1].imshow(np.clip(g["clean"][0].astype(np.float32), 0, 1))
    axes[r, -1].set_title(f"#{g['cifar_index'][0]}\nrun {g['run_id'][0]}", fontsize=6)
  fig.tight_layout(pad=0.2)
  fig.savefig(path, dpi=110)


def build_report(workdir: str, out_dir: str | None = None, *, max_records: int = 4000,
                 num_samples: int = 8, seed: int = 0) -> dict[str, Any]:
  """Writes the report of a generation workdir; returns its numbers.

  Args:
    workdir: a `kktjax.generate.run` workdir.
    out_dir: where to write; default `<workdir>/report`.
    max_records: pairs decoded for the SSIM-by-snapshot sample.
    num_samples: matched candidates shown in samples.png.
    seed: seed of the sampling.

  Returns:
    The numbers of report.json.
  """
  if not generate.dataset_dirs(workdir):
    raise ValueError(f"{workdir!r} holds no generated pairs (no pairs/process-*/ledger.jsonl)")
  out_dir = out_dir or os.path.join(workdir, "report")
  os.makedirs(out_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  config = {}
  cfg_path = os.path.join(workdir, generate.CONFIG_NAME)
  if os.path.exists(cfg_path):
    with open(cfg_path) as f:
      config = json.load(f)

  stats = generate.dataset_stats(workdir)
  entries = generate.run_entries(workdir)
  z = np.zeros(records.NUM_CIFAR_TRAIN, np.int64)
  for path in generate.shard_paths(workdir):
    z += np.bincount(records.read_index(path)["cifar_index"], minlength=z.size)
  snaps = list(entries[0]["snapshot_iters"]) if entries else []
  b1_hist = None
  if entries:
    b1_hist = np.sum([np.asarray(e["b1_hist"]) for e in entries], axis=0)

  source = generate.open_dataset(workdir)
  sample, groups = None, []
  if len(source):
    keys = np.sort(rng.choice(len(source), min(max_records, len(source)), replace=False))
    sample = source.read_batch(keys)
    groups = _sample_groups(source, max(1, len(snaps)), num_samples, rng)

  _plot_counts(z, os.path.join(out_dir, "image_counts.png"))
  _plot_ssim(snaps, b1_hist, sample, os.path.join(out_dir, "ssim_by_snapshot.png"))
  _plot_samples(groups, os.path.join(out_dir, "samples.png"))

  covered = z[z > 0]
  numbers = dict(stats)
  numbers.update({
      "runs_planned": (config.get("phase1_runs", 0) + config.get("phase2_runs", 0)) or None,
      "pairs_per_image_mean": float(covered.mean()) if covered.size else 0.0,
      "pairs_per_image_median": float(np.median(covered)) if covered.size else 0.0,
      "pairs_per_image_max": int(covered.max()) if covered.size else 0,
      "snapshot_iters": snaps,
      "b1_above_0.4_by_snapshot": ([int(b1_hist[s, 8:].sum()) for s in range(len(snaps))]
                                   if b1_hist is not None else []),
      "sampled_pairs": 0 if sample is None else int(len(sample["ssim"])),
      "sample_ssim_median_by_snapshot": (
          [float(np.median(sample["ssim"][sample["snapshot_iter"] == t]))
           if np.any(sample["snapshot_iter"] == t) else None for t in snaps]
          if sample is not None else []),
      "ssim_variant": config.get("match", {}).get("ssim_variant"),
      "postprocess": config.get("match", {}).get("postprocess"),
  })
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(numbers, f, indent=1)

  v, a = config.get("victim", {}), config.get("attack", {})
  lines = [
      f"# Pair dataset report: `{os.path.abspath(workdir)}`", "",
      f"Victims: width {v.get('width')}, {v.get('epochs')} {v.get('recipe')} epochs, "
      f"{2 * config.get('n_per_class', 0)} images per run. Attack: {2 * a.get('m', 0)} "
      f"candidates, {a.get('num_iters')} iterations. Match: SSIM `{numbers['ssim_variant']}`, "
      f"post-processing `{numbers['postprocess']}`, b1 > {config.get('match', {}).get('threshold')}"
      f", margin >= {config.get('match', {}).get('gap')}.", "",
      "| quantity | value |", "|---|---|"]
  for k in ("runs", "runs_planned", "pairs", "pairs_per_run", "images_covered",
            "pairs_per_image_mean", "pairs_per_image_median", "pairs_per_image_max",
            "runs_phase1", "runs_phase2", "pairs_phase1", "pairs_phase2",
            "confident_candidates", "runs_with_matches", "conflicts", "failed_victims",
            "diverged_runs", "victims_not_separating"):
    val = numbers[k]
    lines.append(f"| {k} | {val:.3g} |" if isinstance(val, float) else f"| {k} | {val} |")
  lines += ["", "Candidates with b1 > 0.4, by snapshot iteration: " + ", ".join(
      f"{t}: {c}" for t, c in zip(snaps, numbers["b1_above_0.4_by_snapshot"])), "",
      "## Pairs per covered image", "", "![counts](image_counts.png)", "",
      "## SSIM by snapshot iteration", "",
      f"Left: all candidates of all runs. Right: {numbers['sampled_pairs']} sampled stored "
      "pairs.", "", "![ssim](ssim_by_snapshot.png)", "",
      "## Sample pairs", "",
      "Each row: one matched candidate's post-processed snapshots (iteration, SSIM to the "
      "matched image), then the clean augmented image (CIFAR index, run).", "",
      "![samples](samples.png)", ""]
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write("\n".join(lines))
  return numbers
