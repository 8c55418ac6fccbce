#!/usr/bin/env bash
# One ~8-minute call on an H200 (the `device` machine): correctness on a small case, then
# data-generation runs per GPU-hour at the paper's configuration (extrapolated from timed chunks,
# with true-fp32 and TF32 matmuls), then the restorer's training img/s and restorations/s.
#
# That machine has jax (CUDA), flax, optax, orbax, chex, tqdm, matplotlib and pytest, but not
# dm-pix, ml-collections, grain, array-record or tensorflow-datasets: download their wheels here
# into .whl/ (see the device README) and carry `.whl`. Usage, from the repository root:
#   bash benchmarks/device_h200.sh 2>&1 | tee $OUT/h200.log
set -uo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import jax; print('jax', jax.__version__, jax.devices())"

echo "== 1. correctness on the GPU (float64 gradients vs the reference formula, batch == one by one, metrics anchors)"
timeout 180 $PY -m pytest -q -x -p no:cacheprovider tests/kktjax/kkt_test.py \
  -k "reference or fast or batch or nan or diverg" tests/kktjax/metrics_test.py \
  tests/kktjax/surrogate_test.py 2>&1 | tail -5

echo "== 2. data-generation runs per GPU-hour (paper configuration)"
for prec in highest tensorfloat32; do
  timeout 150 $PY -m benchmarks.generation_rate --ks=16,64 --epochs=500 --iters=100 \
    --repetitions=3 --matmul_precision=$prec 2>&1 | grep -v "^[IW][0-9]"
done

echo "== 3. restorer (DDPM++ cifar config): training img/s and restorations/s (35 NFE)"
timeout 120 $PY -m benchmarks.restorer --config=cifar --batch_sizes=128,512 \
  --restore_batch_sizes=512,2048 --iters=3 2>&1 | grep -v "^[IW][0-9]"
