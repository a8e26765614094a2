#!/usr/bin/env bash
# Data-parallel sft on localhost (issue 17): the all-reduce against the backward pass with P = 2 single-threaded
# ranks on the stories15M shape (random weights, Llama's tokenizer.model),
# bucketed during backward (--bucket-mb 4) against one all-reduce after it (--bucket-mb 0), and with --zero 1.
# Prints one summary line per configuration: medians over steps 2..N of the per-step JSON fields that rank 0
# writes (backward_s, allreduce_s = time inside MPI calls, exposed_allreduce_s = wait after backward).
# Usage: benchmarks/distributed/run.sh [TOKENIZER.model] [STEPS]   (from the repository root, after a Release build)
#        MPIRUN_ARGS="--mca mpi_yield_when_idle 1" adds mpirun options; ONLY="p2-bucket4 p2-bucket0" picks configurations.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOK=${1:-../shared/reference/tiny-random-llama/tokenizer.model}
STEPS=${2:-8}
CLI=src/TinyLlama.Cli/bin/Release/net10.0/tinyllama.dll
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# A llama2.c checkpoint of the stories15M shape (the layout of ../interop/random_llama2c.py, which needs numpy;
# this one is plain Python): uniform weights of std 0.02, norms 1, shared classifier, seq_len 256.
python3 - "$WORK/m.bin" <<'PY'
import array, random, struct, sys
dim, hidden, layers, heads, kv, vocab, seq = 288, 768, 6, 6, 6, 32000, 256
random.seed(0)
a = 0.02 * 3 ** 0.5
def rand(n): return array.array("f", (random.uniform(-a, a) for _ in range(n))).tobytes()
def ones(n): return array.array("f", [1.0]) * n
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("7i", dim, hidden, layers, heads, kv, vocab, seq))
    f.write(rand(vocab * dim)); f.write(ones(layers * dim).tobytes())
    for _ in range(4): f.write(rand(layers * dim * dim))
    f.write(ones(layers * dim).tobytes())
    for _ in range(3): f.write(rand(layers * hidden * dim))
    f.write(ones(dim).tobytes()); f.write(bytes(4 * seq * (dim // heads)))
PY
python3 - "$WORK/data.jsonl" <<'PY'
import json, sys
words = "the quick brown fox jumps over the lazy dog while a small llama eats green grass near the river".split()
with open(sys.argv[1], "w") as f:
    for i in range(64):
        text = " ".join(words[(i + j) % len(words)] for j in range(60))
        f.write(json.dumps({"instruction": f"Tell story number {i}.", "output": text}) + "\n")
PY
run() {  # NAME P BATCH EXTRA...
    local name=$1 p=$2 b=$3; shift 3
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    local cmd=(dotnet "$CLI" --threads 1 sft --model "$WORK/m.bin" --tokenizer "$TOK" --data "$WORK/data.jsonl" --format alpaca
               --out "$WORK/out-$name" --batch-size "$b" --lr 1e-4 --max-length 128 --no-shuffle --json --steps "$STEPS" "$@")
    if [ "$p" = 1 ]; then "${cmd[@]}" > "$WORK/$name.log"
    else mpirun --allow-run-as-root --oversubscribe ${MPIRUN_ARGS:-} -n "$p" "${cmd[@]}" > "$WORK/$name.log"; fi
    python3 - "$name" "$WORK/$name.log" <<'PY'
import json, statistics, sys
rows = [json.loads(l[l.index("{"):]) for l in open(sys.argv[2]) if "{" in l][1:]
med = lambda k: statistics.median(r[k] for r in rows) if rows and k in rows[0] else float("nan")
print(f"{sys.argv[1]:>14}: tokens/s {med('tokens_per_second'):8.1f}  backward {med('backward_s'):.3f} s  allreduce {med('allreduce_s'):.3f} s"
      f"  exposed {med('exposed_allreduce_s'):.3f} s  bytes/step {rows[0].get('allreduce_bytes', 0):,}  AdamW state/rank {rows[0].get('optimizer_state_bytes', 0):,}")
PY
}
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%F)"
run single-b8 1 8
run p2-bucket4 2 4 --bucket-mb 4
run p2-bucket0 2 4 --bucket-mb 0
run p2-bucket64 2 4 --bucket-mb 64
run p2-zero1 2 4 --bucket-mb 4 --zero 1
run p2-lora 2 4 --bucket-mb 4 --lora-rank 8 --lora-targets q,k,v,o
