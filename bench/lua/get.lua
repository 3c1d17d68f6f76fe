-- wrk script: GET one path with a bearer token (the request is formatted once, by wrk).
-- Environment: BENCH_LUA_DIR (where common.lua is), BENCH_TOKEN, BENCH_PATH.
package.path = (os.getenv("BENCH_LUA_DIR") or ".") .. "/?.lua;" .. package.path
local common = require("common")

wrk.method = "GET"
wrk.path = os.getenv("BENCH_PATH") or "/"
wrk.headers = common.headers({ ["Accept"] = "application/json" })
