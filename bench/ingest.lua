-- wrk script for the ingest throughput run: JSON POST bodies carrying 100 ms of PCM.
--
-- Run wrk with as many threads as connections (-t N -c N): each thread then drives exactly
-- one connection, so the per-thread state below is per connection. Every connection sends
-- its own streams, seq 0, 1, 2, ... in order; after `per_stream` chunks it sends done=true
-- and starts the next stream in a new room (its old room's floor stays busy until the
-- server releases it). Rooms are never shared between connections, so the floor is never
-- what limits the rate.
--
-- Arguments after `--`: <run token> <chunks per stream>.

local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("conn", counter)
end

-- 4800 bytes (100 ms of 24 kHz mono 16-bit PCM), base64-encoded: 6400 characters.
local pcm = string.rep("AQIBAgEC", 800)
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  run = args[1] or "wrk"
  per_stream = tonumber(args[2] or "50")
  stream = 0
  seq = 0
end

function request()
  if seq >= per_stream then
    stream = stream + 1
    seq = 0
  end
  local name = string.format("%s-c%d-s%d", run, conn, stream)
  local done = "false"
  if seq == per_stream - 1 then
    done = "true"
  end
  local body = string.format(
    '{"stream_id":"%s","seq":%d,"room":"%s","speaker":"wrk-%d","data":"%s","done":%s}',
    name, seq, name, conn, pcm, done
  )
  seq = seq + 1
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"lat_p50_us":%d,"lat_p99_us":%d,' ..
    '"lat_max_us":%d}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout, latency:percentile(50), latency:percentile(99), latency.max
  ))
end
