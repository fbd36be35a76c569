#!/usr/bin/env bash
# Scan benchmark: generates a folder of small videos (2,000 unless told otherwise), scans it
# from nothing and then unchanged, and prints files per second for both and their ratio.
# Needs what scripts/setup installs (PostgreSQL on 127.0.0.1, ffmpeg). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/velour-target}
# VELOUR_BENCH_PROFILE=dev skips the (long) release build, at some cost to the rescan.
exec cargo run --quiet --profile "${VELOUR_BENCH_PROFILE:-release}" -p velour-worker --example scan_bench -- "$@"
