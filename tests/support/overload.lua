-- wrk script of the overload test (tests/support/overload.py): deposits of 1
-- to random accounts as fast as the connections allow, every answer timed and
-- classified, then a drain.
--
--   wrk ... -s tests/support/overload.lua URL -- DURATION_S IDS_FILE SIGNAL_DIR
--
-- Timing: each request carries X-Request-ID "ov-<monotonic send time in us>",
-- which the service echoes on every response (shed ones included), so the
-- latency of each answer is known by class: "ok" (201), "shed" (503 with code
-- overloaded and Retry-After), or the status for anything else. Latencies go
-- into per-class histograms of BUCKET_MS-wide buckets. Answers with a
-- `Server` header are counted (bannered): there should be none.
--
-- The load, the drain and the counters are loadtest/wrk_load.lua's (the
-- benchmark's too): deposits are sent for DURATION_S seconds only, then every
-- thread signals when it has nothing left in flight and the runner stops wrk;
-- a connection wrk re-opens after the deadline sends GET /healthz (moves no
-- money). done() prints the counters as `ov-result ...` lines.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local load = dofile(here .. "../../loadtest/wrk_load.lua")

local BUCKET_MS = 1

local accounts = {}
local headers = { ["Content-Type"] = "application/json" }

local function read_arguments(args)
   for line in io.lines(args[2]) do
      local id = tonumber(line)
      if id then table.insert(accounts, id) end
   end
   if #accounts == 0 then error("overload.lua: no account ids") end
   return args[1], args[3]
end

local function deposit()
   headers["X-Request-ID"] = "ov-" .. load.now_us()
   local path = string.format("/accounts/%d/deposit", accounts[math.random(#accounts)])
   return wrk.format("POST", path, headers, '{"amount": 1}')
end

local function header(response_headers, name)
   return response_headers[name] or response_headers[string.lower(name)]
end

local function count_banner(status, response_headers, body)
   if header(response_headers, "Server") then load.add("bannered", 1) end
end

local function record_deposit(status, response_headers, body)
   load.increment("status", status)
   local class = "other"
   if status == 201 then
      class = "ok"
      local account = tonumber(string.match(body, '"account_id"%s*:%s*(%d+)'))
      if account then load.increment("credit", account) end
   elseif status == 503 and header(response_headers, "Retry-After")
      and string.find(body, '"code"%s*:%s*"overloaded"') then
      class = "shed"
   end
   local now = load.now_us()
   if now < load.deadline_us then load.add("in_window_" .. class, 1) end -- for rates over the run
   local sent = tonumber(string.match(header(response_headers, "X-Request-ID") or "", "^ov%-(%d+)$"))
   if sent then
      load.increment("latency_" .. class, math.floor((now - sent) / 1000 / BUCKET_MS) * BUCKET_MS)
   else
      load.add("untimed", 1)
   end
end

load.install {
   prefix = "ov",
   scalars = { "untimed", "bannered", "in_window_ok", "in_window_shed", "in_window_other" },
   maps = { "status", "credit", "latency_ok", "latency_shed", "latency_other" },
   init = read_arguments,
   request = deposit,
   answer = count_banner,
   record = record_deposit,
}
