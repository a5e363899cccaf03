#!/usr/bin/env bash
# One session's GPU work, as a single script: the GPU tests, then a GEMM sweep and a
# whole-network sweep on cuda:0, each into one SQLite store under OUT_DIR, with the machine's
# description beside it. Every step is time-bounded and later steps run even if one fails, so a
# short device lease always brings back what was measured (each row is committed as it ends).
#
# Usage: bash benchmarks/gpu_collect.sh OUT_DIR [GEMM_COUNT] [NET_COUNT]
#   GEMM_COUNT random shapes (x 4 dtypes; 0 skips the GEMM sweep), NET_COUNT architectures per
#   family.
#
# Environment (all optional):
#   DEVICE          default cuda:0
#   DTYPES          default fp32,tf32,fp16,bf16 (a dry run on a CPU needs one without tf32)
#   SKIP_TESTS=1    skip tests/test_gpu.py
#   STORE_FROM      a SQLite store to start from instead of an empty one (an earlier call's
#                   gpu.sqlite, brought back and carried to the machine again): its unfinished
#                   GEMM sweeps are resumed first, each for up to RESUME_TIMEOUT s (default
#                   120); --resume refuses a sweep of another GPU, and the script goes on
#   GEMM_TIMEOUT    default 330 s
#   GEMM_SEED       default 0 (another seed gives a machine new random shapes)
#   GEMM_ALIGNED    default 0.5: the share of random shapes whose dimensions are multiples of
#                   8..128, as real layers are (the data in data/gpu/ before h200_aligned_* has
#                   almost none, and there tensor-core GEMMs ran 3-4x slower unaligned)
#   GEMM_BATCHED    default 0.25: the share of random shapes run as a batch of 2..64 matrices
#                   (--batched; before h200_network_shapes every GPU GEMM here had batch 1)
#   GEMM_MIN_SIZE   default 16 (on the H200, 87% of the random shapes with a dimension under 128
#                   took under 0.03 ms, where CuPy's dispatch sets the time; 44% of the others)
#   QUEUE_AHEAD     default 1; 0 times GEMMs as a plain loop of launches, as the data in
#                   data/gpu/ taken before it was, to compare
#   SQUARE_TIMEOUT  default 0 (none); else a second GEMM sweep, in a random order and for as
#                   long as this allows, over the grid of 4096, 8192, 16384 in each dimension
#                   (108 configs in 4 dtypes; 146 s on an H200: data/gpu/h200_aligned_square.*;
#                   models trained on unaligned shapes alone predict these 2-3.8x too slow)
#   ADAPTIVE_TIMEOUT default 0 (none); else benchmarks/adaptive_sampling.py measures its pool
#                   and test set on DEVICE into OUT_DIR/adaptive.csv (each measurement goes to
#                   OUT_DIR/adaptive.csv.partial as it is taken: a run cut short brings back
#                   what it measured, and resumes from that file put there again), then prints
#                   both samplers' learning curves; ADAPTIVE_ARGS replaces its default arguments
#   NETGEMM_TIMEOUT default 0 (none); else a GEMM sweep over the shapes real networks run
#                   (`--shapes networks`: ResNet-50 / MobileNetV2 convs as implicit GEMMs,
#                   transformer projections and attention, batch 1 and 8), in DTYPES: the
#                   model's check on real layers, with m odd beside k and n aligned (7x7
#                   feature maps: m = 49), which count as aligned (predictor.features.is_aligned)
#                   on the evidence of 24 such configs in data/gpu/
#   NET_TIMEOUT     default 90 s; 0 skips the network sweep. NET_SEED: its architectures;
#                   NET_DTYPE (fp32, fp16 or bf16; default fp32): the dtype they run in (the
#                   same architectures in each: a second call with NET_DTYPE=bf16 pairs them)
#   LAYER_TIMEOUT   default 0 (no layer sweep)
#   RNN_TIMEOUT     default 0 (no sweep of recurrent layers)
#   VERIFY_TIMEOUT  default 60; 0 skips measuring the searched networks of data/gpu/search_*/
#                   with `hwnas verify`, on the GPU model they were searched for unless
#                   VERIFY_ANY=1; copies of their arch.json or pareto.json, with the results
#                   appended, come back under OUT_DIR/verify/
#
# Python packages the machine lacks can be put as wheels in .whl/ (data/gpu/README.md names the
# ones a CUDA image with torch and CuPy lacked).
set -u
out=${1:?usage: gpu_collect.sh OUT_DIR [GEMM_COUNT] [NET_COUNT]}
gemm_count=${2:-50}
net_count=${3:-6}
device=${DEVICE:-cuda:0}
dtypes=${DTYPES:-fp32,tf32,fp16,bf16}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export HWNAS_DB="sqlite:///$out/gpu.sqlite"
if [ -n "${STORE_FROM:-}" ]; then
    cp "$STORE_FROM" "$out/gpu.sqlite" || exit 1
fi

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$out/run.log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0))s"
}

nvidia-smi -q > "$out/nvidia-smi.txt" 2>&1
python3 - > "$out/software.txt" 2>&1 <<'EOF'
import platform, numpy, sklearn, torch
print("python", platform.python_version(), "numpy", numpy.__version__,
      "scikit-learn", sklearn.__version__, "torch", torch.__version__,
      "cuda", torch.version.cuda)
try:
    import cupy
    print("cupy", cupy.__version__, "cuda runtime", cupy.cuda.runtime.runtimeGetVersion())
except Exception as exc:
    print("cupy unavailable:", exc)
EOF
cat "$out/software.txt"

[ -n "${SKIP_TESTS:-}" ] || step gpu-tests 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py
step devices 30 python3 -m hwnas.cli devices
# GPU sizes: up to 1024, an H200's GEMMs are nearly all launch-bound (data/gpu/README.md).
adaptive_args=${ADAPTIVE_ARGS:---dtypes fp32,bf16 --pool 500 --test 125 --min-size 32 \
--max-size 8192 --aligned 0.5 --rounds 2 --min-time 0.03 --repeats 5}
# shellcheck disable=SC2086 # the arguments are split on purpose
[ "${ADAPTIVE_TIMEOUT:-0}" -gt 0 ] && step adaptive "$ADAPTIVE_TIMEOUT" python3 \
    benchmarks/adaptive_sampling.py --on "$device" --latencies "$out/adaptive.csv" \
    --plot "$out/adaptive.png" --csv "$out/adaptive_curves.csv" $adaptive_args
if [ -n "${STORE_FROM:-}" ]; then
    unfinished=$(python3 - <<'EOF3'
import os, sqlite3
db = os.environ["HWNAS_DB"].removeprefix("sqlite:///")
print(" ".join(str(i) for (i,) in sqlite3.connect(db).execute(
    "select id from sweep where kind = 'gemm' and status != 'done' and device_id is not null"
    " order by id")))
EOF3
)
    for id in $unfinished; do
        step "resume gemm sweep $id" "${RESUME_TIMEOUT:-120}" python3 -m hwnas.cli collect gemm \
            --resume "$id" --no-progress
    done
fi
[ "$gemm_count" -gt 0 ] && step gemm "${GEMM_TIMEOUT:-330}" python3 -m hwnas.cli collect gemm --device "$device" --shapes random \
    --count "$gemm_count" --seed "${GEMM_SEED:-0}" --aligned "${GEMM_ALIGNED:-0.5}" \
    --batched "${GEMM_BATCHED:-0.25}" \
    --dtype "$dtypes" \
    --min-size "${GEMM_MIN_SIZE:-16}" \
    --max-size 8192 --min-time 0.1 \
    "$([ "${QUEUE_AHEAD:-1}" = 0 ] && echo --no-queue-ahead || echo --queue-ahead)" --no-progress
# How the GEMM rows were timed (params.timer): cuda_events_queued unless the spin kernel failed.
[ "$gemm_count" -gt 0 ] && python3 - <<'EOF2' 2>&1 | tee -a "$out/run.log"
import collections, json, os, sqlite3
db = os.environ["HWNAS_DB"].removeprefix("sqlite:///")
rows = sqlite3.connect(db).execute(
    "select params from measurement where op_kind = 'gemm' and status = 'ok'").fetchall()
print("GEMM rows by timer:", dict(collections.Counter(
    (json.loads(p or "{}") or {}).get("timer") for (p,) in rows)))
EOF2
[ "${SQUARE_TIMEOUT:-0}" -gt 0 ] && step square-gemm "$SQUARE_TIMEOUT" python3 -m hwnas.cli collect gemm \
    --device "$device" --shapes grid --points 3 --min-size 4096 --max-size 16384 \
    --dtype "$dtypes" --min-time 0.1 --skip-peaks --no-progress
[ "${NETGEMM_TIMEOUT:-0}" -gt 0 ] && step network-gemm "$NETGEMM_TIMEOUT" python3 -m hwnas.cli \
    collect gemm --device "$device" --shapes networks --max-size 16384 --dtype "$dtypes" \
    --min-time 0.1 --no-progress
[ "${NET_TIMEOUT:-90}" -gt 0 ] && step network "${NET_TIMEOUT:-90}" python3 -m hwnas.cli collect network --device "$device" \
    --family nb201,proxyless,resnet,mobilenet,transformer --count "$net_count" --min-time 0.1 \
    --seed "${NET_SEED:-0}" --dtype "${NET_DTYPE:-fp32}" --no-progress
# Single layers over the layer grid, in random order: a time limit keeps a random subset.
[ "${LAYER_TIMEOUT:-0}" -gt 0 ] && step layers "$LAYER_TIMEOUT" python3 -m hwnas.cli collect \
    network --device "$device" --family layers --min-time 0.1 --no-progress
# Recurrent layers (RNN, GRU, LSTM) as cuDNN runs them, at batches 1, 8 and 32.
[ "${RNN_TIMEOUT:-0}" -gt 0 ] && step recurrent "$RNN_TIMEOUT" python3 -m hwnas.cli collect \
    network --device "$device" --family layers --layer-kinds recurrent --batch 1,8,32 \
    --min-time 0.1 --no-progress
# Networks searched elsewhere against this GPU's model, measured here (arch.json alone).
# Only where this GPU is the model they were searched for (VERIFY_ANY=1: on any GPU).
if [ "${VERIFY_TIMEOUT:-60}" -gt 0 ]; then
    gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0 2>/dev/null | head -1)
    for found in data/gpu/search_*/*/arch.json data/gpu/search_*/*/pareto.json; do
        [ -f "$found" ] || continue
        searched_for=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("device", ""))' "$found")
        if [ -z "${VERIFY_ANY:-}" ] && [ "$searched_for" != "$gpu_name" ]; then
            echo "=== skip verify of $found: searched for $searched_for, this GPU is $gpu_name"
            continue
        fi
        dest="$out/verify/$(basename "$(dirname "$(dirname "$found")")")/$(basename "$(dirname "$found")")"
        mkdir -p "$dest" && cp "$found" "$dest/"
        step "verify $dest" "${VERIFY_TIMEOUT:-60}" python3 -m hwnas.cli verify "$dest" --device "$device"
    done
fi
nvidia-smi -q -d CLOCK,PERFORMANCE,TEMPERATURE,POWER > "$out/nvidia-smi-after.txt" 2>&1
ls -la "$out"
