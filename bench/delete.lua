-- wrk script: DELETE /sessions/{id}, every request a different session.
-- Run with -t equal to -c, so each thread drives exactly one connection: that
-- connection owns one ids file, sends its ids in order and gets replies in order,
-- which is what lets the verifier know exactly which sessions were acknowledged.
-- Usage: wrk -t32 -c32 -d30s -s delete.lua http://127.0.0.1:PORT -- IDS_DIR TOKEN
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC: the run may end early, wrk's own clock would not know
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local threads = {}
local count = 0

function setup(thread)
  thread:set("index", count)
  count = count + 1
  table.insert(threads, thread)
end

function init(args)
  ids = {}
  for line in io.lines(args[1] .. "/ids-" .. index .. ".txt") do
    ids[#ids + 1] = line
  end
  req_headers = { ["Authorization"] = "Bearer " .. args[2] }
  sent, answered, ok, bad, first_us, last_us = 0, 0, 0, 0, 0, 0
  statuses = ""
  -- wrk calls thread 0's request() once before the run, only to check the request
  -- (script_verify_request); that one is never sent, so it must not use up an id.
  verifying = (index == 0)
end

function request()
  if verifying then
    verifying = false
    return wrk.format("DELETE", "/sessions/" .. ids[1], req_headers)
  end
  if sent >= #ids then
    -- Nothing left to delete; repeat a harmless request the thread will never send,
    -- because response() stops it after the last reply.
    wrk.thread:stop()
    return wrk.format("DELETE", "/sessions/" .. ids[#ids], req_headers)
  end
  sent = sent + 1
  if first_us == 0 then
    first_us = now_us()
  end
  return wrk.format("DELETE", "/sessions/" .. ids[sent], req_headers)
end

function response(status, headers, body)
  answered = answered + 1
  last_us = now_us()
  if status == 204 then
    ok = ok + 1
  else
    bad = bad + 1
    if #statuses < 200 then
      statuses = statuses .. status .. " "
    end
  end
  if answered >= #ids then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local first, last, total_ok, total_bad, parts = nil, 0, 0, 0, {}
  for i, thread in ipairs(threads) do
    local f, l = thread:get("first_us"), thread:get("last_us")
    if f > 0 and (first == nil or f < first) then first = f end
    if l > last then last = l end
    total_ok = total_ok + thread:get("ok")
    total_bad = total_bad + thread:get("bad")
    parts[#parts + 1] = string.format('{"index":%d,"sent":%d,"answered":%d,"bad":"%s"}',
      thread:get("index"), thread:get("sent"), thread:get("answered"), thread:get("statuses"))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"ok":%d,"bad":%d,"span_us":%d,"requests":%d,"duration_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%d,"threads":[%s]}\n',
    total_ok, total_bad, (first and (last - first) or 0), summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    table.concat(parts, ",")))
end
