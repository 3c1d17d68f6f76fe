-- wrk script: POST /timesheets, a new entry of 1 hour per request, on a new date per request.
--
-- The service refuses more than 24 h per user and date, so every request of one wrk run gets a
-- date of its own. The valid dates from 2100-01-01 on (about 2.88 million days, to the year 9985)
-- are cut into slots of 100,000 days; BENCH_DATE_SLOT (0-27, set by bench/run.py) keeps the
-- warm-up, the measured run and each leak-check repetition of one server apart, and every thread
-- of a run has its own share of the slot: day = slot * 100,000 + thread * (100,000 / threads) + n,
-- n = 1, 2, ... per thread. A thread that sends more than its share runs into the next thread's or
-- slot's dates: each such date then holds 2 h, still far from 24. Days wrap around at the end of
-- the range, so a date is always valid.
-- Environment: BENCH_LUA_DIR (where common.lua is), BENCH_TOKEN, BENCH_DATE_SLOT, BENCH_THREADS.
package.path = (os.getenv("BENCH_LUA_DIR") or ".") .. "/?.lua;" .. package.path
local common = require("common")

local EPOCH_2100 = 4102444800 -- 2100-01-01T00:00:00Z
local DAYS_PER_SLOT = 100000
local TOTAL_DAYS = 2880000 -- 2100-01-01 + 2,880,000 days is in the year 9985
local slot = tonumber(os.getenv("BENCH_DATE_SLOT") or "0")
local threads = math.max(1, tonumber(os.getenv("BENCH_THREADS") or "1"))
local first_day = 0
local n = 0
local headers = common.headers({
  ["Content-Type"] = "application/json",
  ["Accept"] = "application/json",
})

function init(args)
  first_day = slot * DAYS_PER_SLOT + (thread_index or 0) * math.floor(DAYS_PER_SLOT / threads)
end

function request()
  n = n + 1
  local day = (first_day + n) % TOTAL_DAYS
  local date = os.date("!%Y-%m-%d", EPOCH_2100 + day * 86400)
  local body = '{"project":"bench","date":"' .. date .. '","hours":1}'
  return wrk.format("POST", "/timesheets", headers, body)
end
