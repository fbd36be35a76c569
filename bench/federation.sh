#!/usr/bin/env bash
# Federation benchmark (not a test): instance A holds 100,000 works with two videos each
# (written straight into its database), instance B scans A as a peer.
#
#   bench/federation.sh             # WORKS=100000 SECONDS_PER_RUN=10 by default
#
# Prints B's full-scan time, an immediate rescan (incremental: one request), a rescan after
# 100 works changed and 100 deleted on A, and the peak resident memory of B's worker; then
# A's catalog under 64 connections (wrk): random pages of `GET /api/v1/works?per_page=50`
# and `GET /api/v1/videos/search`, requests per second, p50 and p99.
# Targets (#5): full scan < 60 s, unchanged rescan < 2 s, worker < 200 MiB, listing p99 <
# 25 ms, search p99 < 50 ms.
#
# Needs PostgreSQL and Redis as scripts/setup leaves them; installs wrk and jq if missing. Uses
# databases velour_bench_fa and velour_bench_fb and Redis databases 11 and 12, recreated.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/velour-target}
works=${WORKS:-100000}
seconds=${SECONDS_PER_RUN:-10}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v wrk >/dev/null 2>&1 || ! command -v jq >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk jq >/dev/null
fi

cargo build --release --locked -p velour >&2
velour="$CARGO_TARGET_DIR/release/velour"

work=$(mktemp -d /tmp/velour-fbench.XXXXXX)
source bench/lib.sh

declare -A url
start_instance() { # NAME REDIS_DB
  local name=$1 db="velour_bench_f$1"
  psql -q -h 127.0.0.1 -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  redis-cli -n "$2" FLUSHDB >/dev/null
  export DATABASE_URL="postgres://127.0.0.1/$db" REDIS_URL="redis://127.0.0.1:6379/$2"
  "$velour" migrate 2>/dev/null
  local gw st
  gw=$(free_port); st=$(free_port)
  # The benchmark's own load would exceed the default quotas.
  export FEDERATION_RATE_LIMIT_PER_HOUR=1000000 FEDERATION_STREAM_RATE_LIMIT_PER_HOUR=1000000
  # The instances reach each other over plain HTTP on loopback.
  export FEDERATION_REQUIRE_HTTPS=false VELOUR_PEER_ALLOWED_NETWORKS=127.0.0.0/8,::1/128
  RUST_LOG=warn VELOUR_STREAM_ADDR=127.0.0.1:$st "$velour" stream 2>>"$work/$name.log" &
  pids+=($!)
  RUST_LOG=warn VELOUR_GATEWAY_ADDR=127.0.0.1:$gw VELOUR_STREAM_ADDR=127.0.0.1:$st \
    "$velour" gateway 2>>"$work/$name.log" &
  pids+=($!)
  url[$name]="http://127.0.0.1:$gw"
  wait_http "http://127.0.0.1:$gw/healthz"
}
start_instance a 11
key_a=$(DATABASE_URL=postgres://127.0.0.1/velour_bench_fa "$velour" key create --name B \
  --can-read --can-stream --can-metadata 2>/dev/null)
start_instance b 12
admin_b=$(DATABASE_URL=postgres://127.0.0.1/velour_bench_fb "$velour" key create --name me \
  --admin --can-read 2>/dev/null)
RUST_LOG=warn DATABASE_URL=postgres://127.0.0.1/velour_bench_fb \
  REDIS_URL=redis://127.0.0.1:6379/12 "$velour" worker 2>>"$work/b.log" &
worker_pid=$!
pids+=($worker_pid)

echo "loading $works works with two videos each into A" >&2
psql -q -h 127.0.0.1 -d velour_bench_fa >/dev/null <<SQL
INSERT INTO storage_locations (name, storage_type, configuration)
  VALUES ('bench', 'local', '{"path": "/nonexistent"}');
INSERT INTO works (title, year, description)
  SELECT 'Work ' || n || ' ' || substr(md5(n::text), 1, 8), 1950 + n % 70, 'About ' || n
  FROM generate_series(1, $works) n;
INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size, duration,
                    width, height, video_codec, audio_codec, web_compatible, fingerprints)
  SELECT w.id, 1, w.id || '-' || p, 'work-' || w.id || '-part' || p || '.mp4',
         1000000 + w.id, 5400.5, 1920, 1080, 'h264', 'aac', true,
         jsonb_build_object('oshash', substr(md5(w.id || '-' || p), 1, 16))
  FROM works w, generate_series(1, 2) p;
VACUUM ANALYZE;
SQL
location=$(psql -h 127.0.0.1 -d velour_bench_fb -Atq <<SQL
INSERT INTO storage_locations (name, storage_type, configuration, secrets)
  VALUES ('A', 'velour', jsonb_build_object('remote_instance_url', '${url[a]}'),
          jsonb_build_object('api_key', '$key_a'))
  RETURNING id;
SQL
)

scan_b() { # LABEL -> prints the time and the run's counts
  local started run state
  started=$(date +%s.%N)
  run=$(curl -fsS -X POST -H "Authorization: Bearer $admin_b" \
    "${url[b]}/api/v1/admin/storage_locations/$location/scans" | jq -r .id)
  while :; do
    state=$(curl -fsS -H "Authorization: Bearer $admin_b" \
      "${url[b]}/api/v1/admin/scan_runs/$run")
    case $(jq -r .state <<<"$state") in
      succeeded) break ;;
      failed) echo "bench: scan failed: $(jq -r .error <<<"$state")" >&2; exit 1 ;;
    esac
    sleep 0.05
  done
  printf '%-34s %8.2f s   videos %s\n' "$1" "$(echo "$(date +%s.%N) - $started" | bc)" \
    "$(jq -c .videos <<<"$state")"
}

echo
scan_b "full scan"
scan_b "immediate rescan"
psql -q -h 127.0.0.1 -d velour_bench_fa >/dev/null <<SQL
UPDATE works SET description = 'Changed', updated_at = now() WHERE id <= 100;
UPDATE videos SET removed_at = now(), updated_at = now() WHERE work_id BETWEEN 101 AND 200;
SQL
scan_b "rescan, 100 changed + 100 deleted"
printf '%-34s %8s MiB\n' "worker peak RSS (VmHWM)" \
  "$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$worker_pid/status")"

run_wrk() { # MODE -> "req/s p50_ms p99_ms errors"
  BENCH_MODE=$1 BENCH_KEY=$key_a BENCH_PAGES=$((works / 50)) \
    wrk -t2 -c64 -d"${seconds}s" --latency -s bench/catalog.lua "${url[a]}" 2>/dev/null |
    awk '/^RESULT/ { printf "%.0f %.2f %.2f %d\n", $2 / ($5 / 1e6), $3 / 1000, $4 / 1000, $6 }'
}
echo
printf '%-34s %9s %9s %9s %7s\n' "A's catalog, 64 connections" req/s p50_ms p99_ms errors
for mode in list search; do
  read -r rps p50 p99 errors <<<"$(run_wrk "$mode")"
  printf '%-34s %9s %9s %9s %7s\n' "$mode" "$rps" "$p50" "$p99" "$errors"
done
