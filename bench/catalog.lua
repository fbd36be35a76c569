-- wrk script for bench/federation.sh: every request is either a random page of the works
-- listing (BENCH_MODE=list, BENCH_PAGES pages of 50) or a search for a random number
-- (BENCH_MODE=search), with `Authorization: Bearer BENCH_KEY`. Prints one line:
--   RESULT requests p50_us p99_us duration_us non_2xx_or_errors

local mode = os.getenv("BENCH_MODE") or "list"
local pages = tonumber(os.getenv("BENCH_PAGES") or "2000")
local key = os.getenv("BENCH_KEY")
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(os.time() * 100 + (seed or 0))
end

function request()
  local path
  if mode == "search" then
    path = "/api/v1/videos/search?per_page=20&query=" .. math.random(1000, 99999)
  else
    path = "/api/v1/works?per_page=50&page=" .. math.random(1, pages)
  end
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. key })
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %d %d %d %d %d\n", summary.requests,
    latency:percentile(50), latency:percentile(99), summary.duration, errors))
end
