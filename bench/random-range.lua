-- wrk script: every request asks for a random range of BENCH_SPAN bytes within a file of
-- BENCH_SIZE bytes, with `Authorization: Bearer BENCH_KEY` when a key is given. Prints one
-- line for bench/stream.sh:
--   RESULT requests bytes p50_us p99_us duration_us non_2xx_or_errors

local size = tonumber(os.getenv("BENCH_SIZE"))
local span = tonumber(os.getenv("BENCH_SPAN"))
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
  local first = math.random(0, size - span)
  local headers = { ["Range"] = "bytes=" .. first .. "-" .. (first + span - 1) }
  if key and key ~= "" then
    headers["Authorization"] = "Bearer " .. key
  end
  return wrk.format("GET", nil, headers)
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.bytes,
    latency:percentile(50), latency:percentile(99), summary.duration, errors))
end
