#!/usr/bin/env bash
# Load on `tinyllama serve` over loopback (see README.md beside this file): 1, 8 and 32 concurrent
# streaming clients against the batched server, then 8 against a one-slot server (one-at-a-time
# decoding), on random weights of the stories15M shape. Extra arguments go to `tinyllama bench serve`
# (e.g. --tokens 64 --requests 4, or --model DIR instead of the preset).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dotnet build "$root/src/TinyLlama.Cli" -c Release -v quiet -nologo >/dev/null
if [[ " $* " == *" --model "* ]]; then source=(); else source=(--preset stories15M); fi
exec dotnet "$root/src/TinyLlama.Cli/bin/Release/net10.0/tinyllama.dll" bench serve "${source[@]}" --clients 1,8,32 --parallel 32 --baseline-clients 8 "$@"
