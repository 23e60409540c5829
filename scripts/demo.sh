#!/usr/bin/env bash
# Installs voxmill, then transcribes and shards the bundled real clips into ./voxmill-out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/voxmill run --input demo/real-speech --output voxmill-out "$@"
echo "shards: $(ls voxmill-out/shards | wc -l) in voxmill-out/shards, index in voxmill-out/index, summary in voxmill-out/summary.json"
