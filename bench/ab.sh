#!/usr/bin/env bash
# Before and after: builds the release `kite` of REV (in a worktree beside
# this checkout) and of this checkout, then runs the end-to-end benchmarks
# of bench/run.sh on both in turn, RUNS times (default 3), with this
# checkout's kite-bench, so that both are measured in the same go.
#   bench/ab.sh REV [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$1
runs=${2:-3}
base=$(mktemp -d)/kite-base
git worktree add --detach "$base" "$rev" >/dev/null
trap 'git worktree remove --force "$base"' EXIT
(cd "$base" && CARGO_TARGET_DIR="$base/target" cargo build --release --quiet -p kite-gateway)
cargo build --release --locked --quiet -p kite-gateway -p kite-bench
for run in $(seq "$runs"); do
    for side in before after; do
        if [ "$side" = before ]; then kite=$base/target/release/kite; else kite=target/release/kite; fi
        echo "== run $run $side"
        target/release/kite-bench --kite "$kite" idle
        target/release/kite-bench --kite "$kite" load --devices 100 --points 100 --interval-ms 100 --seconds 20
        target/release/kite-bench --kite "$kite" load --devices 200 --points 125 --interval-ms 20 --seconds 20
    done
done
