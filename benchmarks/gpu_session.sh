#!/usr/bin/env bash
# Everything the GPU-performance work measures, for a session that has a GPU (`device` tool):
# one stage per call, each well inside the tool's 10-minute limit.
#
#   bash benchmarks/gpu_session.sh check     # versions, CUDA kernel/graph tests (~3 min)
#   bash benchmarks/gpu_session.sh small     # attention bench, W1 on Qwen2.5-0.5B and SmolLM2
#   bash benchmarks/gpu_session.sh llama     # W1 on the Llama-3.1-8B shape
#
# Results (JSON) and logs go to $OUT (the device tool's folder that comes back), or to
# benchmarks/results/ when OUT is unset. Copy the JSON into benchmarks/results/ and commit it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
stage=${1:-check}

case "$stage" in
check)
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    $PY -c "import torch, triton, transformers, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
    # CUDA parametrisations only: the CPU ones are CI's.
    $PY -m pytest -q -p no:cacheprovider tests/kernels -k cuda 2>&1 | tee "$OUT/gpu_tests.log"
    $PY -m pytest -q -p no:cacheprovider tests/engine/test_cuda_graphs.py \
        tests/engine/test_step_inputs.py tests/kernels/test_engine_backends.py 2>&1 | tee -a "$OUT/gpu_tests.log"
    ;;
small)
    $PY -m benchmarks.paged_attention_bench 2>&1 | tee "$OUT/paged_attention.log"
    cp benchmarks/results/paged_attention_*.json "$OUT"/ 2>/dev/null
    for model in qwen2.5-0.5b smollm2-135m; do
        $PY -m benchmarks.w1_throughput --model $model --hf-seqs 64 --results-dir "$OUT" \
            2>&1 | tee "$OUT/w1_$model.log"
    done
    ;;
llama)
    $PY -m benchmarks.w1_throughput --model llama-3.1-8b --hf-seqs 32 --results-dir "$OUT" \
        2>&1 | tee "$OUT/w1_llama.log"
    ;;
*)
    echo "unknown stage $stage (check | small | llama)" >&2
    exit 2
    ;;
esac
