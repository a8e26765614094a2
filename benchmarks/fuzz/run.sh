#!/usr/bin/env bash
# Long fuzz runs of every file parser (issue 13): builds the CLI in Release and runs `tinyllama fuzz`
# (src/TinyLlama.Cli/Fuzzing) over each format, with the reference files of ../shared/reference as extra
# seeds when they are beside the checkout. Prints the per-format table of outcome classes (ok, nonfinite,
# clean, unclean) and rate; exits 1 if any input was unclean, with its seed and index to rebuild it.
#
#   benchmarks/fuzz/run.sh                       20,000 inputs per format, seed 1
#   COUNT=1000000 benchmarks/fuzz/run.sh         the issue's million per parser (hours; see the rates)
#   FORMAT=gguf SEED=7 benchmarks/fuzz/run.sh    one format, another seed
#   JSON=1 benchmarks/fuzz/run.sh                one JSON object per format
#
# Single-threaded by design (the harness pins the CPU backend to one thread to attribute allocations);
# run several formats in parallel as separate processes to use more cores.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
COUNT=${COUNT:-20000}
SEED=${SEED:-1}
FORMAT=${FORMAT:-all}
args=(fuzz --format "$FORMAT" --count "$COUNT" --seed "$SEED")
[[ "${JSON:-0}" == 1 ]] && args+=(--json)
REF="$ROOT/../shared/reference"
[[ -d "$REF" ]] && args+=(--reference "$REF")

dotnet build "$ROOT/src/TinyLlama.Cli" -c Release -v quiet -nologo >/dev/null
exec dotnet "$ROOT/src/TinyLlama.Cli/bin/Release/net10.0/tinyllama.dll" "${args[@]}"
