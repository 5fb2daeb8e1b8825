#!/usr/bin/env bash
# Runs every benchmark of bench/RESULTS.md five times; prints one line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p kite-gateway -p kite-bench
for run in 1 2 3 4 5; do
    echo "run $run"
    target/release/kite-bench idle
    target/release/kite-bench load --devices 100 --points 100 --interval-ms 100 --seconds 20
    target/release/kite-bench load --devices 200 --points 125 --interval-ms 20 --seconds 20
done
