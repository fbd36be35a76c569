#!/usr/bin/env bash
# Streaming benchmark (not a test): nginx, the stream service, the gateway and a peer
# (instance B proxying instance A) serving the same 1 GiB file on loopback.
#
#   bench/stream.sh            # SECONDS_PER_RUN=10 by default
#
# For each target: random 1 MiB ranges over 16 connections, then random 64 KiB ranges over
# 64 connections (wrk, with bench/random-range.lua); throughput, p50 and p99 latency and
# the ratio to nginx. Then the resident memory of each Velour service while 32 clients
# stream a 5 GiB sparse file through the peer, and after they disconnect.
#
# Needs what scripts/setup sets up (PostgreSQL, Redis); installs nginx and wrk if missing.
# Uses two databases of its own (velour_bench_a, velour_bench_b), recreated on each run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/velour-target}
seconds=${SECONDS_PER_RUN:-10}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --locked -p velour >&2
velour="$CARGO_TARGET_DIR/release/velour"

work=$(mktemp -d /tmp/velour-bench.XXXXXX)
chmod 755 "$work"
source bench/lib.sh

# The files: 1 GiB of random bytes (so nothing compresses or dedups), 5 GiB sparse.
mkdir -p "$work/media"
head -c 1G /dev/urandom > "$work/media/one.mp4"
truncate -s 5G "$work/media/five.mp4"
chmod 644 "$work/media/"*
size=$((1024 * 1024 * 1024))

# nginx on the same file, as Debian ships it: sendfile on, logs off.
nginx_port=$(free_port)
cat > "$work/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  server {
    listen 127.0.0.1:$nginx_port;
    root $work/media;
  }
}
CONF
"$nginx_bin" -p "$work" -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)

# Two instances: A holds the files, B has A as a peer. Each service is its own process, so
# that each one's memory can be read.
declare -A url
start_instance() { # NAME REDIS_DB
  local name=$1 db="velour_bench_$1"
  psql -q -h 127.0.0.1 -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  export DATABASE_URL="postgres://127.0.0.1/$db" REDIS_URL="redis://127.0.0.1:6379/$2"
  # The per-key hourly limits would refuse a benchmark's load: raised, not switched off,
  # so that their cost (one Redis script per request) is still measured.
  export FEDERATION_RATE_LIMIT_PER_HOUR=1000000 FEDERATION_STREAM_RATE_LIMIT_PER_HOUR=1000000
  "$velour" migrate 2>/dev/null
  local gw st
  gw=$(free_port); st=$(free_port)
  # The instances reach each other over plain HTTP on loopback.
  export FEDERATION_REQUIRE_HTTPS=false VELOUR_PEER_ALLOWED_NETWORKS=127.0.0.0/8,::1/128
  RUST_LOG=warn VELOUR_STREAM_ADDR=127.0.0.1:$st "$velour" stream 2>>"$work/$name.log" &
  pids+=($!); eval "${name}_stream_pid=$!"
  RUST_LOG=warn VELOUR_GATEWAY_ADDR=127.0.0.1:$gw VELOUR_STREAM_ADDR=127.0.0.1:$st \
    "$velour" gateway 2>>"$work/$name.log" &
  pids+=($!); eval "${name}_gateway_pid=$!"
  url[${name}_gateway]="http://127.0.0.1:$gw"
  url[${name}_stream]="http://127.0.0.1:$st"
  wait_http "http://127.0.0.1:$gw/healthz"
  wait_http "http://127.0.0.1:$st/healthz"
}
start_instance a 13
key_a=$(DATABASE_URL=postgres://127.0.0.1/velour_bench_a "$velour" key create --name bench \
  --can-read --can-stream 2>/dev/null)
start_instance b 14
key_b=$(DATABASE_URL=postgres://127.0.0.1/velour_bench_b "$velour" key create --name bench \
  --can-read --can-stream 2>/dev/null)
wait_http "http://127.0.0.1:$nginx_port/one.mp4"

# Catalog rows written directly: random bytes are no video ffprobe would accept.
psql -q -h 127.0.0.1 -d velour_bench_a >/dev/null <<SQL
INSERT INTO storage_locations (name, storage_type, configuration)
  VALUES ('bench', 'local', jsonb_build_object('path', '$work/media'));
INSERT INTO works (title) VALUES ('one'), ('five');
INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size)
  VALUES (1, 1, 'one.mp4', 'one.mp4', $size), (2, 1, 'five.mp4', 'five.mp4', 5368709120);
SQL
psql -q -h 127.0.0.1 -d velour_bench_b >/dev/null <<SQL
INSERT INTO storage_locations (name, storage_type, configuration, secrets)
  VALUES ('A', 'velour', jsonb_build_object('remote_instance_url', '${url[a_gateway]}'),
          jsonb_build_object('api_key', '$key_a'));
INSERT INTO works (title) VALUES ('one'), ('five');
INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size,
                    video_metadata)
  VALUES (1, 1, '1', 'one.mp4', $size, '{"remote_video_id": 1}'),
         (2, 1, '2', 'five.mp4', 5368709120, '{"remote_video_id": 2}');
SQL

targets=(
  "nginx|http://127.0.0.1:$nginx_port/one.mp4|"
  "stream service|${url[a_stream]}/api/v1/videos/1/stream|$key_a"
  "gateway|${url[a_gateway]}/api/v1/videos/1/stream|$key_a"
  "peer (B via A)|${url[b_gateway]}/api/v1/videos/1/stream|$key_b"
)

run_wrk() { # URL KEY SPAN CONNECTIONS -> "MiB/s p50_ms p99_ms non2xx"
  BENCH_SIZE=$size BENCH_SPAN=$3 BENCH_KEY=$2 \
    wrk -t2 -c"$4" -d"${seconds}s" --latency -s bench/random-range.lua "$1" 2>/dev/null |
    awk '/^RESULT/ { printf "%.0f %.2f %.2f %d\n", $3 / $6 / 1.048576, $4 / 1000, $5 / 1000, $7 }'
}

printf '\n%-16s %-22s %10s %9s %9s %8s %7s\n' target load MiB/s p50_ms p99_ms vs_nginx errors
for load in "1048576 16" "65536 64"; do
  read -r span conns <<<"$load"
  label="$((span / 1024)) KiB x $conns conns"
  base=""
  for target in "${targets[@]}"; do
    IFS='|' read -r name target_url key <<<"$target"
    read -r mibs p50 p99 errors <<<"$(run_wrk "$target_url" "$key" "$span" "$conns")"
    [ -z "$base" ] && base=$mibs
    ratio=$(awk -v a="$mibs" -v b="$base" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    printf '%-16s %-22s %10s %9s %9s %8s %7s\n' "$name" "$label" "$mibs" "$p50" "$p99" \
      "$ratio" "$errors"
  done
done

# Memory: 32 clients streaming the 5 GiB sparse file through the peer for a while.
rss() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
report_rss() { # LABEL
  printf '%-28s A stream %6s MiB  A gateway %6s MiB  B stream %6s MiB  B gateway %6s MiB\n' \
    "$1" "$(rss "$a_stream_pid")" "$(rss "$a_gateway_pid")" "$(rss "$b_stream_pid")" \
    "$(rss "$b_gateway_pid")"
}
echo
report_rss "idle, after the load runs"
clients=()
for _ in $(seq 1 32); do
  curl -s -o /dev/null --max-time 60 -H "Authorization: Bearer $key_b" \
    "${url[b_gateway]}/api/v1/videos/2/stream" &
  clients+=($!)
done
for i in 1 2 3 4 5; do
  sleep 2
  report_rss "32 clients streaming (${i}x2 s)"
done
for pid in "${clients[@]}"; do kill "$pid" 2>/dev/null || true; done
wait "${clients[@]}" 2>/dev/null || true
sleep 3
report_rss "3 s after they disconnect"
