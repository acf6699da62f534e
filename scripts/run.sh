#!/usr/bin/env bash
# The main job: install what is missing, build the examples, generate text from the
# shipped Golf15x3 alias and from a Tiny alias (random-initialised weights: the text is
# noise until a trained checkpoint is loaded with --weights), then train pure Mamba-2,
# hybrid, attention and LFM2-style layouts at matched size (within 3 %) on associative
# recall, two seeds each (a reduced grid of the table in docs/training.md, "Ablations"), and
# print the table with mean +- std.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DHYBRID_BUILD_EXAMPLES=ON >/dev/null
cmake --build build -j"$(nproc)" --target generate ablate
./build/examples/generate --model Golf15x3 --summary --prompt "ROMEO:" --max-new-tokens 48
./build/examples/generate --model TinyHybrid18x6 --prompt "ROMEO:" --max-new-tokens 48
./build/examples/ablate --seeds 2 --out ablate_out
