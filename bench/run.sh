#!/usr/bin/env bash
# Runs every benchmark of bench/RESULTS.md (end to end five times, plug-ins, RTU lines and reloads three times).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p kite-gateway -p kite-bench
cargo build --release --target wasm32-wasip2 --manifest-path plugins/examples/Cargo.toml
for run in 1 2 3 4 5; do
    echo "run $run"
    target/release/kite-bench idle
    target/release/kite-bench load --devices 100 --points 100 --interval-ms 100 --seconds 20
    target/release/kite-bench load --devices 200 --points 125 --interval-ms 20 --seconds 20
done
for run in 1 2 3; do
    target/release/kite-bench plugins
done
for run in 1 2 3; do
    target/release/kite-bench rtu --baud 9600 --seconds 30
    target/release/kite-bench rtu --baud 115200 --seconds 30
done
for run in 1 2 3; do
    target/release/kite-bench reload --reloads 20
done
