#!/usr/bin/env bash
# The main job: install what is missing, build the examples, then generate text from the
# shipped Golf15x3 alias and from a Tiny alias (random-initialised weights: the text is
# noise until a trained checkpoint is loaded with --weights).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DHYBRID_BUILD_EXAMPLES=ON >/dev/null
cmake --build build -j"$(nproc)" --target generate
./build/examples/generate --model Golf15x3 --summary --prompt "ROMEO:" --max-new-tokens 48 "$@"
./build/examples/generate --model TinyHybrid18x6 --prompt "ROMEO:" --max-new-tokens 48 "$@"
