#!/usr/bin/env bash
# Speed and memory of TinyLlama against llama.cpp and llama2.c on the same files, same CPU, same run
# (issue 11). Not a test: a benchmark whose output goes into benchmarks/RESULTS.md with the date and machine.
#
# Files (random weights: speed does not depend on their values; nothing is downloaded):
#   stories15m, stories110m  llama2.c checkpoints of those shapes (random_llama2c.py; context 1024 so that
#                            pp512 fits), converted by llama.cpp's own llama-convert-llama2c-to-ggml and
#                            quantized by its llama-quantize to q4_0 (which writes the tied head as q6_K)
#   tinyllama-1.1b           the TinyLlama-1.1B shape (GQA 32/4) from ../quant/random_hf.py, quantized to q4_0
#                            by `tinyllama quantize` (this project's GGUF writer; embedding and head q8_0);
#                            llama.cpp must load it
# Measurements, each program alternately, ROUNDS rounds, the median of the rounds' means:
#   1. q4_0, llama-bench's pp512 and tg128 (-r REPS) against `tinyllama bench generate -p 512 -n 128 -r REPS`
#      (the same conventions: no loading, tokenization or sampling timed), at 1 and 2 threads;
#   2. f32 decoding of the llama2.c files: run.c (-Ofast -march=native -fopenmp, OMP_NUM_THREADS) generating
#      256 tokens, "achieved tok/s", against `tinyllama bench generate --model X.bin -p 1 -n 256`;
#   3. peak resident memory (/usr/bin/time %M) generating 64 tokens from each q4_0 file, llama-cli and
#      `tinyllama generate`, 2 threads;
#   4. the machine's read bandwidth (a 1 GiB sum in C, 1 and 2 OpenMP threads), and per model the decode
#      speed it allows: bandwidth / bytes of weights read per token (the file's tensor bytes).
# Usage: benchmarks/interop/bench_vs_llama_cpp.sh  (env: PEERS=/tmp/peers from ../shared/peers/setup.sh,
#        WORK=/tmp/bench-vs-llama, REPS=3, ROUNDS=2, THREADS="1 2", MODELS="stories15m stories110m tinyllama-1.1b",
#        PARTS="1 2 3 4": the measurements above to run)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PEERS=${PEERS:-/tmp/peers}; WORK=${WORK:-/tmp/bench-vs-llama}; REPS=${REPS:-3}; ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-"1 2"}; MODELS=${MODELS:-"stories15m stories110m tinyllama-1.1b"}; PARTS=${PARTS:-"1 2 3 4"}
part() { [[ " $PARTS " == *" $1 "* ]]; }
BIN=$PEERS/llama.cpp/build/bin; RUNC=$PEERS/llama2c/run; PY=/usr/bin/python3
TL=$ROOT/src/TinyLlama.Cli/bin/Release/net10.0/tinyllama
export LD_LIBRARY_PATH=$BIN
for f in "$BIN/llama-bench" "$BIN/llama-cli" "$BIN/llama-quantize" "$BIN/llama-convert-llama2c-to-ggml" "$RUNC" "$TL"; do
  [ -x "$f" ] || { echo "missing $f (build the peers with ../shared/peers/setup.sh and this project with dotnet build -c Release)"; exit 1; }
done
mkdir -p "$WORK"; cd "$WORK"

echo "## Machine"
lscpu | grep -E "^Model name|^CPU\(s\)" | sed 's/  */ /g'
echo "flags: $(grep -o -w -E 'avx2|fma|f16c|avx512f|avx512_vnni|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD)"

echo "## Files"
for m in $MODELS; do
  case $m in
    stories15m|stories110m)
      [ -f $m.bin ] || $PY "$ROOT/benchmarks/interop/random_llama2c.py" $m $m.bin
      [ -f $m.f32.gguf ] || "$BIN/llama-convert-llama2c-to-ggml" --copy-vocab-from-model "$PEERS/llama.cpp/models/ggml-vocab-llama-spm.gguf" \
        --llama2c-model $m.bin --llama2c-output-model $m.f32.gguf >/dev/null 2>&1
      if [ ! -f $m.q4_0.gguf ]; then
        "$BIN/llama-quantize" $m.f32.gguf $m.q4_0.gguf q4_0 >/dev/null 2>&1
        # the converter writes llama.context_length 128 whatever the checkpoint's seq_len; llama.cpp ignores it
        # when benchmarking, this project refuses a prompt longer than the model's context: set the real one
        PYTHONPATH="$PEERS/llama.cpp/gguf-py" $PY "$PEERS/llama.cpp/gguf-py/gguf/scripts/gguf_set_metadata.py" --force \
          $m.q4_0.gguf llama.context_length 1024 >/dev/null 2>&1
      fi ;;
    tinyllama-1.1b)
      if [ ! -f $m.q4_0.gguf ]; then
        $PY "$ROOT/benchmarks/quant/random_hf.py" $m.hf "$ROOT/../shared/reference/llama2-tokenizer/tokenizer.model" $m >/dev/null
        "$TL" quantize --model $m.hf --out $m.q4_0.gguf --type q4_0 >/dev/null
        rm -rf $m.hf
      fi ;;
  esac
  echo "$m.q4_0.gguf: $(stat -c %s $m.q4_0.gguf) bytes"
done

median() { sort -g | awk '{a[NR]=$1} END {printf "%.1f\n", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

if part 1; then
echo "## 1. q4_0: pp512 and tg128, tokens/s (median of $ROUNDS rounds of $REPS repetitions; ratio = ours / llama.cpp)"
echo "| file | threads | llama.cpp pp512 | ours pp512 | ratio | llama.cpp tg128 | ours tg128 | ratio |"
echo "|---|---|---|---|---|---|---|---|"
for m in $MODELS; do
  for t in $THREADS; do
    : > lpp; : > ltg; : > opp; : > otg
    for r in $(seq $ROUNDS); do
      "$BIN/llama-bench" -m $m.q4_0.gguf -t $t -p 512 -n 128 -r $REPS -o json 2>/dev/null > lb.json
      $PY -c "import json; d = json.load(open('lb.json')); [print(x['avg_ts'], file=open('lpp' if x['n_prompt'] else 'ltg', 'a')) for x in d]"
      "$TL" bench generate --model $m.q4_0.gguf -p 512 -n 128 -r $REPS --threads $t --json > ob.json
      $PY -c "import json; d = json.load(open('ob.json')); print(d['prefill_tokens_per_second'], file=open('opp', 'a')); print(d['decode_tokens_per_second'], file=open('otg', 'a'))"
    done
    lp=$(median < lpp); op=$(median < opp); lt=$(median < ltg); ot=$(median < otg)
    echo "| $m | $t | $lp | $op | $(ratio $op $lp) | $lt | $ot | $(ratio $ot $lt) |"
  done
done

fi

if part 2; then
echo "## 2. f32 decoding of the llama2.c files, tokens/s (256 tokens; ratio = ours / run.c)"
echo "| file | threads | run.c | ours | ratio |"
echo "|---|---|---|---|---|"
for m in $MODELS; do
  [ -f $m.bin ] || continue
  for t in $THREADS; do
    : > rc; : > ou
    for r in $(seq $ROUNDS); do
      OMP_NUM_THREADS=$t "$RUNC" $m.bin -z "$PEERS/llama2c/tokenizer.bin" -n 256 -t 0 -i "Once upon a time" 2>&1 | grep -o 'achieved tok/s: [0-9.]*' | awk '{print $3}' >> rc
      "$TL" bench generate --model $m.bin -p 1 -n 256 -r $REPS --threads $t --json | $PY -c "import json, sys; print(json.load(sys.stdin)['decode_tokens_per_second'])" >> ou
    done
    a=$(median < rc); b=$(median < ou)
    echo "| $m | $t | $a | $b | $(ratio $b $a) |"
  done
done

fi

if part 3; then
echo "## 3. Peak resident memory generating 64 tokens from the q4_0 files, 2 threads (MB; ratio = ours / llama.cpp)"
echo "| file | llama-cli | tinyllama generate | ratio |"
echo "|---|---|---|---|"
for m in $MODELS; do
  l=$(/usr/bin/time -f %M -o rss "$BIN/llama-cli" -m $m.q4_0.gguf -p "Once upon a time" -n 64 --temp 0 -t 2 -no-cnv --no-warmup </dev/null >/dev/null 2>&1; tail -1 rss)
  o=$(/usr/bin/time -f %M -o rss "$TL" generate --model $m.q4_0.gguf --prompt "Once upon a time" --max-tokens 64 --threads 2 >/dev/null 2>&1; tail -1 rss)
  echo "| $m | $((l / 1024)) | $((o / 1024)) | $(ratio $o $l) |"
done

fi

if part 4; then
echo "## 4. Read bandwidth and the decode speed it allows"
cat > bw.c <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
int main(void) {
  size_t n = (size_t)1 << 28; float *a = malloc(n * sizeof(float)); double best = 0;
  #pragma omp parallel for
  for (size_t i = 0; i < n; i++) a[i] = 1.0f;
  for (int r = 0; r < 5; r++) {
    double t = omp_get_wtime(); float s = 0;
    #pragma omp parallel for reduction(+:s)
    for (size_t i = 0; i < n; i++) s += a[i];
    t = omp_get_wtime() - t; if (n * 4.0 / t > best) best = n * 4.0 / t;
    if (s != (float)s) puts("");
  }
  printf("%.2f\n", best / 1e9); return 0;
}
C
gcc -Ofast -march=native -fopenmp -o bw bw.c   # -Ofast: the float sum vectorizes
for t in $THREADS; do
  g=$(OMP_NUM_THREADS=$t ./bw)
  echo "read bandwidth, $t thread(s): $g GB/s"
  for m in $MODELS; do
    bytes=$(stat -c %s $m.q4_0.gguf)
    echo "  $m.q4_0.gguf ($bytes bytes per token): at most $(awk -v g=$g -v b=$bytes 'BEGIN { printf "%.0f", g * 1e9 / b }') tokens/s"
  done
done
fi
