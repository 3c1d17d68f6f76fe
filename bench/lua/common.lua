-- Shared by the bench scripts (loaded with require from bench/run.py's wrk runs).
--
-- Environment (set by bench/run.py):
--   BENCH_TOKEN   the bearer token to send (empty: no Authorization header)
--
-- Every thread counts the responses that are not 2xx (wrk itself counts only status >= 400),
-- by status, and keeps the first such body; done() prints one machine-readable line:
--   BENCH_RESULT {json}
-- with wrk's summary, the latency percentiles (microseconds) and those counts.

local common = {}

common.token = os.getenv("BENCH_TOKEN") or ""

function common.headers(extra)
  local headers = {}
  if common.token ~= "" then
    headers["Authorization"] = "Bearer " .. common.token
  end
  for name, value in pairs(extra or {}) do
    headers[name] = value
  end
  return headers
end

local threads = {}

-- setup() runs in the main Lua state, once per thread, before the run.
function setup(thread)
  thread:set("thread_index", #threads)
  threads[#threads + 1] = thread
end

-- The per-thread counters live in each thread's own Lua state.
non2xx = 0
statuses = {}
sample = ""

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
    if sample == "" then
      sample = key .. " " .. string.sub(body or "", 1, 400)
    end
  end
end

local function json_string(text)
  text = string.gsub(text, '[%c"\\\128-\255]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. text .. '"'
end

function done(summary, latency, requests)
  local total_non2xx, merged, first = 0, {}, ""
  for _, thread in ipairs(threads) do
    total_non2xx = total_non2xx + (thread:get("non2xx") or 0)
    for key, count in pairs(thread:get("statuses") or {}) do
      merged[key] = (merged[key] or 0) + count
    end
    local s = thread:get("sample") or ""
    if first == "" then first = s end
  end
  local parts = {}
  for key, count in pairs(merged) do
    parts[#parts + 1] = json_string(key) .. ":" .. tostring(count)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status_ge_400":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d},' ..
    '"non2xx":%d,"non2xx_by_status":{%s},"non2xx_sample":%s}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9),
    total_non2xx, table.concat(parts, ","), json_string(first)))
end

return common
