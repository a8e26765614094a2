#!/usr/bin/env bash
# GGUF both ways between TinyLlama and llama.cpp, on this machine (a cross-check script: the project's tests
# do not need llama.cpp or Python). Needs the peers built by ../shared/peers/setup.sh (default /tmp/peers).
#
# 1. llama.cpp's files load here: stories260K (../shared/reference, a llama2.c model; GQA 8/4 heads, tied
#    embedding) goes through llama-convert-llama2c-to-ggml, then llama-quantize to q8_0 and q4_0. Greedy ids
#    from BOS on the f32 file must equal run.c's (greedy.json); greedy text from a prompt must equal
#    llama-cli's (temperature 0) on the f32 file; the quantized files' perplexity here must be within 2% of
#    the f32 file's. The held-out token sequences are sampled from the f32 model itself (temperature 1,
#    seeds 1-8): there is no stories260K tokenizer in ../shared, so no written text can be tokenized for it.
#    llama-quantize needs rows that are whole 32-weight blocks, and stories260K's feed-forward width is 172:
#    llama2c_tools.py pads it with zero units to 192 first (the same function exactly: silu(0) * 0 = 0), and
#    writes a 512-piece vocabulary in the Llama layout with placeholder pieces (" p259" ...), since the
#    model's own vocabulary is not in ../shared either; both programs then print the same ids as text.
# 2. Files written here load in llama.cpp: `tinyllama quantize` writes f32, f16, q8_0 and q4_0 files of
#    (a) stories260K (GQA, tied embedding; the feed-forward rows of 172 stay f16 in q4_0/q8_0, as
#    llama-quantize's own fallback) and (b) tiny-random-llama (Llama 2's real SentencePiece vocabulary,
#    GQA 8/2, untied head). llama-cli's greedy text must equal `tinyllama generate`'s on the f32 and f16
#    files; on q8_0/q4_0 both are printed (llama.cpp rounds the activations to Q8_0 for its integer dot
#    products, so near-tied tokens may differ) with the number of leading tokens that agree.
# 3. With DEMO_DIR (the output folder of `tinyllama demo`, e.g. `tinyllama demo --seed 0 --out /tmp/demo0`), part 1
#    again on a model trained here, which unlike stories260K has the redundancy a 4-bit check needs: the demo's
#    pre-trained base/ (an HF directory) becomes a llama2.c checkpoint (llama2c_tools.py from-hf, q/k rows back
#    to Meta's interleaved layout; its perplexity here must equal the directory's exactly), the feed-forward
#    width is padded 172 -> 192 as above, llama-convert-llama2c-to-ggml gets a placeholder vocabulary of the
#    demo's size, and llama-quantize writes q8_0 and q4_0. Held-out text: data/heldout.txt, each line
#    BOS + `tinyllama tokenize` with the demo's tokenizer (as benchmarks/RESULTS.md's table of the demo's
#    base). Checks: perplexity of llama.cpp's f32 file equal to the base directory's; q8_0 and q4_0 within
#    2% of f32; greedy ids from two held-out prompts equal on the base directory and llama.cpp's f32 file,
#    and llama-cli's greedy text equal to ours on that file (prompts of placeholder pieces "p300 p412 ...",
#    ids >= 259 only, since byte pieces have no placeholder text); the real text is printed beside them.
# Usage: benchmarks/interop/llama_cpp.sh [PEERS_DIR] [DEMO_DIR]   (or DEMO_DIR=... in the environment;
#        prints a Markdown report; exit 1 if a check fails)
set -uo pipefail
PEERS=${1:-/tmp/peers}
DEMO_DIR=${2:-${DEMO_DIR:-}}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
REF=$ROOT/../shared/reference
BIN=$PEERS/llama.cpp/build/bin
PY=/usr/bin/python3   # Debian's, with python3-numpy (setup.sh installs it)
for f in "$BIN/llama-cli" "$BIN/llama-quantize" "$BIN/llama-convert-llama2c-to-ggml" "$REF/stories260K/stories260K.bin"; do
  [ -e "$f" ] || { echo "missing $f: run ../shared/peers/setup.sh first (and keep ../shared beside the checkout)"; exit 2; }
done
if [ -n "$DEMO_DIR" ]; then
  for f in "$DEMO_DIR/base/config.json" "$DEMO_DIR/base/model.safetensors" "$DEMO_DIR/tokenizer.json" "$DEMO_DIR/data/heldout.txt"; do
    [ -e "$f" ] || { echo "DEMO_DIR: missing $f (expected the output folder of a finished 'tinyllama demo --out DIR')"; exit 2; }
  done
fi
dotnet build -c Release "$ROOT/src/TinyLlama.Cli" >/dev/null || exit 2
TL="dotnet $ROOT/src/TinyLlama.Cli/bin/Release/net10.0/tinyllama.dll"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
FAIL=0
check() { if [ "$1" = ok ]; then echo "- ok: $2"; else echo "- **FAILED**: $2"; FAIL=1; fi; }
# llama-cli's continuation only: it echoes the prompt (with its '▁') before the generated text.
llama_text() { timeout 120 "$BIN/llama-cli" -m "$1" -p "$2" -n "$3" --temp 0 -t 2 -no-cnv --no-warmup --seed 1 2>/dev/null </dev/null | head -c 4000; }
# Greedy ids agreeing from the start between two space-separated piece lists.
agree() { $PY - "$1" "$2" <<'EOF'
import sys
a, b = sys.argv[1].split(), sys.argv[2].split()
n = 0
while n < min(len(a), len(b)) and a[n] == b[n]: n += 1
print(n)
EOF
}

echo "## GGUF interoperability with llama.cpp ($(date -u +%Y-%m-%d), $(git -C "$ROOT" rev-parse --short HEAD))"
echo
echo "### 1. llama.cpp's files, read here"
$PY "$ROOT/benchmarks/interop/llama2c_tools.py" pad-ffn "$REF/stories260K/stories260K.bin" "$W/s260k.bin" 32 >/dev/null
$PY "$ROOT/benchmarks/interop/llama2c_tools.py" vocab 512 "$W/tok512.bin" >/dev/null
"$BIN/llama-convert-llama2c-to-ggml" --copy-vocab-from-model "$W/tok512.bin" --llama2c-model "$W/s260k.bin" --llama2c-output-model "$W/cpp.f32.gguf" >/dev/null 2>&1
for t in q8_0 q4_0; do "$BIN/llama-quantize" "$W/cpp.f32.gguf" "$W/cpp.$t.gguf" $t >/dev/null 2>&1; done
for t in f32 q8_0 q4_0; do echo "- cpp.$t.gguf: $(stat -c %s "$W/cpp.$t.gguf") bytes; tensors here: $($TL info --model "$W/cpp.$t.gguf" | grep '^dtype')"; done
want=$($PY -c "import json; print(','.join(map(str, json.load(open('$REF/stories260K/greedy.json'))['greedy_ids'])))")
got=$($TL generate --model "$W/cpp.f32.gguf" --prompt-ids 1 --max-tokens 64 --json | $PY -c "import json,sys; print(','.join(map(str, json.load(sys.stdin)['ids'])))")
[ "$got" = "$want" ] && check ok "greedy ids from BOS on llama.cpp's f32 file equal run.c's greedy.json (64 tokens)" || check no "greedy ids from BOS differ from greedy.json: $got"
for p in "p300" "p259 p400 p317"; do
  ours=$($TL generate --model "$W/cpp.f32.gguf" --prompt "$p" --max-tokens 40)
  theirs=$(llama_text "$W/cpp.f32.gguf" "$p" 40)
  [ -n "$ours" ] && [[ "$(echo $theirs)" == *"$(echo $ours)" ]] && check ok "f32, prompt \"$p\": greedy text equals llama-cli's: \"$(echo $ours | cut -c1-60)...\"" \
    || check no "f32, prompt \"$p\": ours \"$(echo $ours)\" / llama-cli \"$(echo $theirs)\""
done
for s in 1 2 3 4 5 6 7 8; do
  $TL generate --model "$W/cpp.f32.gguf" --prompt-ids 1 --max-tokens 127 --temperature 1 --seed $s --json \
    | $PY -c "import json,sys; print('1,' + ','.join(map(str, json.load(sys.stdin)['ids'])))"
done > "$W/heldout.ids"
echo "- held-out: $(wc -l < "$W/heldout.ids") sequences of 128 tokens (llama-convert-llama2c-to-ggml writes a context of 128) sampled from the f32 model (temperature 1, seeds 1-8)"
declare -A PPL
for t in f32 q8_0 q4_0; do PPL[$t]=$($TL perplexity --model "$W/cpp.$t.gguf" --ids-file "$W/heldout.ids" --json | $PY -c "import json,sys; print(json.load(sys.stdin)['perplexity'])"); done
for t in q8_0 q4_0; do
  r=$($PY -c "print(f'{${PPL[$t]} / ${PPL[f32]} - 1:+.2%}')")
  ok=$($PY -c "print('ok' if abs(${PPL[$t]} / ${PPL[f32]} - 1) <= 0.02 else 'no')")
  check "$ok" "perplexity of llama.cpp's $t file here: ${PPL[$t]} against f32 ${PPL[f32]} ($r; limit 2%)"
done
echo
echo "### 2. Files written here, read by llama-cli"
cp -r "$REF/tiny-random-llama" "$W/random"
for model in stories260K tiny-random; do
  if [ $model = stories260K ]; then src="$REF/stories260K/stories260K.bin"; tok=(--tokenizer "$W/cpp.f32.gguf"); prompts=("p300" "p259 p400 p317");
  else src="$W/random"; tok=(); prompts=("Once upon a time" "The quick brown fox"); fi
  for t in f32 f16 q8_0 q4_0; do
    f="$W/tl.$model.$t.gguf"
    echo "- $($TL quantize --model "$src" "${tok[@]}" --out "$f" --type $t 2>/dev/null)"
    for p in "${prompts[@]}"; do
      ours=$($TL generate --model "$f" --prompt "$p" --max-tokens 24)
      theirs=$(llama_text "$f" "$p" 24)
      if [ $t = f32 ] || [ $t = f16 ]; then
        [ -n "$ours" ] && [[ "$(echo $theirs)" == *"$(echo $ours)" ]] && check ok "$model $t, prompt \"$p\": llama-cli's greedy text equals ours: \"$(echo $ours | cut -c1-60)...\"" \
          || check no "$model $t, prompt \"$p\": ours \"$(echo $ours)\" / llama-cli \"$(echo $theirs)\""
      else
        n=$(agree "$(echo $ours)" "$(echo ${theirs#*$p})")
        [ -n "$theirs" ] && check ok "$model $t, prompt \"$p\": loads in llama-cli; the first $n words of the continuation agree (ours \"$(echo $ours | cut -c1-50)...\", llama-cli \"$(echo $theirs | cut -c1-50)...\")" \
          || check no "$model $t: llama-cli printed nothing"
      fi
    done
  done
done
if [ -n "$DEMO_DIR" ]; then
  echo
  echo "### 3. A model trained here (the demo's pre-trained base, $DEMO_DIR), through llama.cpp's tools"
  V=$($PY -c "import json; print(json.load(open('$DEMO_DIR/base/config.json'))['vocab_size'])")
  $PY "$ROOT/benchmarks/interop/llama2c_tools.py" from-hf "$DEMO_DIR/base" "$W/demo.bin" | sed "s|^$W/|- |"
  $PY "$ROOT/benchmarks/interop/llama2c_tools.py" pad-ffn "$W/demo.bin" "$W/demo192.bin" 32 | sed "s|^$W/|- |"
  $PY "$ROOT/benchmarks/interop/llama2c_tools.py" vocab "$V" "$W/tok$V.bin" >/dev/null
  "$BIN/llama-convert-llama2c-to-ggml" --copy-vocab-from-model "$W/tok$V.bin" --llama2c-model "$W/demo192.bin" --llama2c-output-model "$W/demo.f32.gguf" >/dev/null 2>&1
  for t in q8_0 q4_0; do "$BIN/llama-quantize" "$W/demo.f32.gguf" "$W/demo.$t.gguf" $t >/dev/null 2>&1; done
  for t in f32 q8_0 q4_0; do echo "- demo.$t.gguf: $(stat -c %s "$W/demo.$t.gguf") bytes; tensors here: $($TL info --model "$W/demo.$t.gguf" | grep '^dtype')"; done
  # Held-out ids: BOS + the demo tokenizer's ids of each line of data/heldout.txt.
  $PY -c "import json,sys; [print(json.dumps({'text': l.rstrip('\n')})) for l in open(sys.argv[1], encoding='utf-8') if l.strip()]" "$DEMO_DIR/data/heldout.txt" > "$W/heldout.jsonl"
  $TL tokenize --tokenizer "$DEMO_DIR/tokenizer.json" --jsonl "$W/heldout.jsonl" | $PY -c "import json,sys; [print(','.join(map(str, [1] + json.loads(l)))) for l in sys.stdin]" > "$W/demo.heldout.ids"
  echo "- held-out: $(wc -l < "$W/demo.heldout.ids") lines of data/heldout.txt, $($PY -c "import sys; print(sum(len(l.split(',')) - 1 for l in open(sys.argv[1])))" "$W/demo.heldout.ids") predicted tokens"
  declare -A DP
  DP[base]=$($TL perplexity --model "$DEMO_DIR/base" --ids-file "$W/demo.heldout.ids" --json | $PY -c "import json,sys; print(json.load(sys.stdin)['perplexity'])")
  for t in f32 q8_0 q4_0; do DP[$t]=$($TL perplexity --model "$W/demo.$t.gguf" --ids-file "$W/demo.heldout.ids" --json | $PY -c "import json,sys; print(json.load(sys.stdin)['perplexity'])"); done
  [ "${DP[f32]}" = "${DP[base]}" ] && check ok "perplexity of llama.cpp's f32 file here equals the base directory's: ${DP[f32]}" \
    || check no "perplexity of llama.cpp's f32 file ${DP[f32]} differs from the base directory's ${DP[base]}"
  for t in q8_0 q4_0; do
    r=$($PY -c "print(f'{${DP[$t]} / ${DP[f32]} - 1:+.3%}')")
    ok=$($PY -c "print('ok' if abs(${DP[$t]} / ${DP[f32]} - 1) <= 0.02 else 'no')")
    check "$ok" "perplexity of llama.cpp's $t file here: ${DP[$t]} against f32 ${DP[f32]} ($r; limit 2%)"
  done
  # Prompts: the leading ids >= 259 (pieces with a placeholder text) of the first two held-out lines that have three.
  mapfile -t PROMPTS < <($PY -c "
import sys
n = 0
for line in open(sys.argv[1]):
    ids = [int(x) for x in line.split(',')[1:]]
    k = 0
    while k < min(len(ids), 4) and ids[k] >= 259: k += 1
    if k >= 3 and n < 2:
        print(','.join(map(str, ids[:k]))); n += 1
" "$W/demo.heldout.ids")
  for ids in "${PROMPTS[@]}"; do
    p=$(echo "$ids" | sed 's/\([0-9]*\)/p\1/g; s/,/ /g')
    real=$($TL generate --model "$DEMO_DIR/base" --prompt-ids "1,$ids" --max-tokens 40 --json)
    mine=$($TL generate --model "$W/demo.f32.gguf" --prompt-ids "1,$ids" --max-tokens 40 --json)
    a=$(echo "$real" | $PY -c "import json,sys; print(json.load(sys.stdin)['ids'])"); b=$(echo "$mine" | $PY -c "import json,sys; print(json.load(sys.stdin)['ids'])")
    [ "$a" = "$b" ] && check ok "greedy ids from prompt $ids equal on the base directory and llama.cpp's f32 file ($(echo "$a" | tr -cd , | wc -c | awk '{print $1 + 1}') tokens, to EOS or 40): \"$(echo "$real" | $PY -c "import json,sys; print(json.load(sys.stdin)['text'].replace(chr(10), ' '))" | cut -c1-70)\"" \
      || check no "greedy ids from prompt $ids: base $a / llama.cpp's f32 file $b"
    ours=$($TL generate --model "$W/demo.f32.gguf" --prompt "$p" --max-tokens 40)
    theirs=$(echo $(llama_text "$W/demo.f32.gguf" "$p" 40)); theirs=${theirs% \[end of text\]}  # llama-cli marks the EOS it stops at
    [ -n "$ours" ] && [[ "$(echo $theirs)" == *"$(echo $ours)" ]] && check ok "f32, prompt \"$p\": greedy text equals llama-cli's: \"$(echo $ours | cut -c1-60)...\"" \
      || check no "f32, prompt \"$p\": ours \"$(echo $ours)\" / llama-cli \"$(echo $theirs)\""
  done
fi
echo
[ $FAIL = 0 ] && echo "All checks passed." || echo "Some checks FAILED."
exit $FAIL
