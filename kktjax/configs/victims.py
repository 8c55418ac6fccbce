"""Victim training configs: `get_config("tiny" | "gen" | "eval")`.

  gen:  the data-generation recipe (300 CIFAR-10 train images, Adadelta lr 1, 50k epochs).
  eval: the evaluation recipe (500 held-out test images, GD lr 0.01, 1M epochs).
  tiny: a CPU-sized batch of victims on real CIFAR-10 for the demo and tests.
"""
import ml_collections


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.first_run_id = 0        # victim k uses run id first_run_id + k
  c.num_victims = 4
  c.split = "train"         # "train" or "heldout" (test minus ciFAIR duplicates)
  c.duplicate_lists = ()    # CSV files for "heldout"; default: $KKTJAX_CIFAR_DUPLICATES
  c.data_dir = ""           # tfds data dir; "" means $TFDS_DATA_DIR
  c.n_per_class = 150
  c.width = 1000
  c.first_layer_bias = False
  c.init = "torch"
  c.w1_std = 1e-4
  c.recipe = "adadelta"
  c.learning_rate = 1.0
  c.epochs = 50_000
  c.chunk_epochs = 500      # epochs per jitted scan; progress and checkpoints between chunks
  c.checkpoint_every = 10   # chunks
  c.dtype = "float32"
  if arg == "gen":
    pass
  elif arg == "eval":
    c.num_victims = 1
    c.split = "heldout"
    c.n_per_class = 250
    c.recipe = "gd"
    c.learning_rate = 0.01
    c.epochs = 1_000_000
    c.chunk_epochs = 5_000
  elif arg == "tiny":
    c.num_victims = 4
    c.n_per_class = 10
    c.width = 1000
    c.epochs = 300
    c.chunk_epochs = 50
    c.checkpoint_every = 1
  else:
    raise ValueError(f"unknown victims config {arg!r}; expected 'tiny', 'gen' or 'eval'")
  return c
