#!/usr/bin/env bash
# GPU benchmark of the ILGPU kernels (kernels/TinyLlama.Kernels: GEMM, FlashAttention, fused LoRA, int4 Q4_0): publishes the
# KernelBench harness and the tinyllama CLI self-contained for linux-x64 (no trimming: ILGPU compiles
# kernels from IL at run time), checks every backend op on CUDA against the CPU (`tinyllama check`), runs
# the xunit kernel tests on CUDA when a .NET SDK is here too, times
# PyTorch when python3 with CUDA torch is here, and prints KernelBench's table (ms, TFLOP/s, % of peak,
# ratio to PyTorch). See benchmarks/gpu/README.md.
#
#   benchmarks/gpu/run.sh            publish (needs a .NET 10 SDK), test, time torch, time the kernels
#   benchmarks/gpu/run.sh publish    publish only, into $OUT (e.g. on a build machine without a GPU)
#   benchmarks/gpu/run.sh pack       publish, then pack $OUT/bin into .device/gpu.tar.xz (git-ignored, ~36 MB)
#                                    for a GPU machine without .NET; there: tar -xJf .device/gpu.tar.xz -C "$OUT"
#   benchmarks/gpu/run.sh run        skip publishing: use the binaries already in $OUT
#
# Environment: OUT (default benchmarks/gpu/out), GPU (h100-sxm | h100-pcie | h200; default: from the device
# name), WARMUP (3), ITERS (20), QUICK=1 (tiny shapes). Without an NVIDIA GPU the harness runs on ILGPU's CPU
# accelerator with --quick, which checks the plumbing but times nothing meaningful.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-$ROOT/benchmarks/gpu/out}
MODE=${1:-all}
WARMUP=${WARMUP:-3}
ITERS=${ITERS:-20}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
status=0

have() { command -v "$1" >/dev/null 2>&1; }
has_gpu() { have nvidia-smi && nvidia-smi -L >/dev/null 2>&1; }

if [[ "$MODE" == "all" || "$MODE" == "publish" || "$MODE" == "pack" ]]; then
    have dotnet || { echo "run.sh: no dotnet SDK here; publish elsewhere and use 'run.sh run'" >&2; exit 2; }
    echo "== publish (self-contained linux-x64, untrimmed) into $OUT/bin"
    # Both programs in one folder: they share the runtime and the TinyLlama/ILGPU assemblies, which halves the pack.
    dotnet publish "$ROOT/benchmarks/gpu/KernelBench/KernelBench.csproj" -c Release -r linux-x64 --self-contained \
        -p:PublishTrimmed=false -o "$OUT/bin"
    dotnet publish "$ROOT/src/TinyLlama.Cli/TinyLlama.Cli.csproj" -c Release -r linux-x64 --self-contained \
        -p:PublishTrimmed=false -o "$OUT/bin"
    if [[ "$MODE" == "pack" ]]; then
        mkdir -p "$ROOT/.device"
        tar -cJf "$ROOT/.device/gpu.tar.xz" -C "$OUT" bin
        echo "== packed $(du -h "$ROOT/.device/gpu.tar.xz" | cut -f1) into .device/gpu.tar.xz"
    fi
    [[ "$MODE" == "publish" || "$MODE" == "pack" ]] && exit 0
fi

BENCH="$OUT/bin/KernelBench"
CLI="$OUT/bin/tinyllama"
[[ -x "$BENCH" ]] || { echo "run.sh: $BENCH is missing; run 'run.sh publish' first" >&2; exit 2; }

if ! has_gpu; then
    echo "== no NVIDIA GPU: checking the plumbing on ILGPU's CPU accelerator (no meaningful timings)"
    "$CLI" check --device ilgpu-cpu | tee "$OUT/check.txt"
    [[ "${PIPESTATUS[0]}" == 0 ]] || status=1
    "$BENCH" --device ilgpu-cpu --quick | tee "$OUT/table.txt"
    [[ "${PIPESTATUS[0]}" == 0 ]] || status=1
    exit "$status"
fi

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/device.txt"

echo "== every backend op and a small model on CUDA against the CPU (tinyllama check; needs no SDK)"
if ! "$CLI" check --device cuda 2>&1 | tee "$OUT/check.txt"; then
    echo "run.sh: tinyllama check FAILED (see $OUT/check.txt); timing anyway" >&2
    status=1
fi

if have dotnet && [[ -f "$ROOT/tests/TinyLlama.Tests/TinyLlama.Tests.csproj" ]]; then
    echo "== kernel tests on the CPU accelerator and on CUDA (TINYLLAMA_TEST_CUDA=1)"
    if ! TINYLLAMA_TEST_CUDA=1 dotnet test "$ROOT/tests/TinyLlama.Tests" -c Release \
            --filter "FullyQualifiedName~KernelTests" 2>&1 | tee "$OUT/tests.txt"; then
        echo "run.sh: kernel tests FAILED (see $OUT/tests.txt); timing anyway" >&2
        status=1
    fi
else
    echo "== no .NET SDK: skipping the xunit kernel tests (KernelBench's self-check still runs on CUDA)"
fi

quick_args=()
[[ "$QUICK" == "1" ]] && quick_args=(--quick)

TORCH_JSON="$OUT/torch_reference.json"
if have python3 && python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "== PyTorch reference"
    python3 "$ROOT/benchmarks/gpu/torch_reference.py" --out "$TORCH_JSON" --warmup "$WARMUP" --iters "$ITERS" "${quick_args[@]}" \
        || { echo "run.sh: torch_reference.py failed; the table will have no torch column" >&2; rm -f "$TORCH_JSON"; }
else
    echo "== no python3 with CUDA torch: the table will have no torch column"
    rm -f "$TORCH_JSON"
fi

echo "== a training step of the 110M config on CUDA (tokens/s; host reads per step: 1 = the loss, none inside)"
for dt in f32 bf16; do
    "$CLI" bench train --preset stories110M --batch-size 8 --seq-len 512 --steps 5 --dtype "$dt" --device cuda 2>&1 | tee -a "$OUT/train.txt" || status=1
done

echo "== KernelBench"
gpu_args=()
[[ -n "${GPU:-}" ]] && gpu_args=(--gpu "$GPU")
set +e
"$BENCH" --device cuda "${gpu_args[@]}" "${quick_args[@]}" --torch "$TORCH_JSON" --json "$OUT/kernelbench.json" \
    --warmup "$WARMUP" --iters "$ITERS" | tee "$OUT/table.txt"
bench=${PIPESTATUS[0]}
set -e
[[ $bench -ne 0 ]] && status=$bench
exit $status
