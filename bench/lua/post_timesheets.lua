-- wrk script: POST /timesheets, a new entry of 1 hour per request, on a new date per request.
--
-- The service refuses more than 24 h per user and date, so every request of one wrk run gets a
-- date of its own: day = slot * 1,000,000 + thread * 100,000 + n (n = 1, 2, ... per thread),
-- counted from 2100-01-01. BENCH_DATE_SLOT (0-8, set by bench/run.py) keeps the warm-up and the
-- measured run of one server on different dates. A thread that sends more than 100,000 requests
-- runs into the next thread's dates, which is still far from 24 entries per date.
-- Environment: BENCH_LUA_DIR (where common.lua is), BENCH_TOKEN, BENCH_DATE_SLOT.
package.path = (os.getenv("BENCH_LUA_DIR") or ".") .. "/?.lua;" .. package.path
local common = require("common")

local EPOCH_2100 = 4102444800 -- 2100-01-01T00:00:00Z
local slot = tonumber(os.getenv("BENCH_DATE_SLOT") or "0")
local first_day = 0
local n = 0
local headers = common.headers({
  ["Content-Type"] = "application/json",
  ["Accept"] = "application/json",
})

function init(args)
  first_day = slot * 1000000 + (thread_index or 0) * 100000
end

function request()
  n = n + 1
  local date = os.date("!%Y-%m-%d", EPOCH_2100 + (first_day + n) * 86400)
  local body = '{"project":"bench","date":"' .. date .. '","hours":1}'
  return wrk.format("POST", "/timesheets", headers, body)
end
