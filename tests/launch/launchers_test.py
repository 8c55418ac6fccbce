"""Every launcher explains its flags with --help and fails fast, in one line, on missing input."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# launcher -> (a flag its --help must explain, arguments that point at missing input).
LAUNCHERS = {
    "train_victims": ("--tfds_data_dir", ["--workdir={tmp}/v", "--tfds_data_dir={tmp}/nope"]),
    "reconstruct": ("--victims", ["--victims={tmp}/nope", "--workdir={tmp}/r"]),
    "generate_dataset": ("--workdir", ["--workdir={tmp}/g", "--config.data_dir={tmp}/nope"]),
    "dataset_report": ("--workdir", ["--workdir={tmp}/nope"]),
    "train_restorer": ("--data_dir", ["--workdir={tmp}/t", "--data_dir={tmp}/nope"]),
    "train_dncnn": ("--data_dir", ["--workdir={tmp}/d", "--data_dir={tmp}/nope"]),
    "restore": ("--input", ["--workdir={tmp}/nope", "--input={tmp}/nope.npz",
                            "--output={tmp}/o"]),
    "evaluate": ("--stages", ["--workdir={tmp}/e", "--stages=report"]),
    "demo": ("--workdir", None),
}


def _start(args, tmp):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("KKTJAX_TRACEBACK", None)
  return subprocess.Popen([sys.executable, "-m"] + [a.format(tmp=tmp) for a in args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
  """Runs all launchers at once (each is mostly import time), help and missing-input."""
  tmp = str(tmp_path_factory.mktemp("launch"))
  procs = {}
  for name, (_, bad) in LAUNCHERS.items():
    procs[(name, "help")] = _start([f"launch.{name}", "--help"], tmp)
    if bad is not None:
      procs[(name, "bad")] = _start([f"launch.{name}"] + bad, tmp)
  out = {}
  for key, p in procs.items():
    stdout, stderr = p.communicate(timeout=300)
    out[key] = (p.returncode, stdout, stderr)
  return out


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_help_explains_flags(outputs, name):
  code, stdout, stderr = outputs[(name, "help")]
  text = stdout + stderr
  assert code in (0, 1), text[-2000:]   # absl's --help exits with status 1
  assert "Traceback" not in text and "flags:" in text, text[-2000:]
  assert LAUNCHERS[name][0] in text
  assert f"launch.{name}" in text or "python -m launch" in text   # the usage docstring


@pytest.mark.parametrize("name", sorted(n for n, (_, bad) in LAUNCHERS.items() if bad))
def test_missing_input_is_one_clear_line(outputs, name):
  code, stdout, stderr = outputs[(name, "bad")]
  assert code != 0
  assert "Traceback" not in stderr, stderr[-3000:]
  last = [line for line in stderr.strip().splitlines() if line.strip()][-1]
  assert last.startswith(("error:", "FATAL Flags parsing error")), stderr[-2000:]
  assert "nope" in last or "does not exist" in last or "no " in last, last
