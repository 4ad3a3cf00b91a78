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
-- Each wrk thread has its own Lua state; counters are plain globals
-- (ov_<name>, ov_<map>_<key>, and ov_<map>_keys listing a map's keys) because
-- wrk 4.1's thread:get copies numbers and strings, not tables. done() reads
-- them back and prints `ov-result ...` lines.
--
-- Drain: deposits are sent for DURATION_S seconds only; then a connection
-- sends nothing more (delay() returns an hour), and a thread with nothing left
-- in flight creates SIGNAL_DIR/drained-<thread>; the runner then stops wrk. A
-- connection wrk re-opens after the deadline sends GET /healthz (moves no money).

local ffi = require("ffi")
ffi.cdef [[
struct ov_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clock_id, struct ov_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local IDLE_DELAY_MS = 3600000
local clock = ffi.new("struct ov_timespec")

local function now_us()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
   return tonumber(clock.tv_sec) * 1000000 + math.floor(tonumber(clock.tv_nsec) / 1000)
end

local SCALARS = {
   "sent", "answered", "probes_sent", "probes_answered", "untimed", "bannered",
   "in_window_ok", "in_window_shed", "in_window_other",
}
local MAPS = { "status", "credit", "latency_ok", "latency_shed", "latency_other" }
local BUCKET_MS = 1

local threads = {}

function setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

local deadline_us, signal_dir
local accounts = {}
local headers = { ["Content-Type"] = "application/json" }
local probe_request
local drained_signalled = false
local verification_pending = false

function init(args)
   local first = 1
   if args[first] == "--" then first = first + 1 end
   deadline_us = now_us() + tonumber(args[first]) * 1000000
   for line in io.lines(args[first + 1]) do
      local id = tonumber(line)
      if id then table.insert(accounts, id) end
   end
   signal_dir = args[first + 2]
   if #accounts == 0 then error("overload.lua: no account ids") end
   math.randomseed(os.time() + 7919 * (thread_index + 1))
   probe_request = wrk.format("GET", "/healthz")
   -- wrk calls request() once on thread 0 before the load to check it parses.
   verification_pending = (thread_index == 0)
   for _, name in ipairs(SCALARS) do _G["ov_" .. name] = 0 end
end

local function add(name, count)
   _G["ov_" .. name] = _G["ov_" .. name] + count
end

local function increment(map, key)
   local name = "ov_" .. map .. "_" .. key
   local count = _G[name]
   if count == nil then
      local keys = "ov_" .. map .. "_keys"
      _G[keys] = (_G[keys] or "") .. key .. " "
      count = 0
   end
   _G[name] = count + 1
end

local function deposit()
   headers["X-Request-ID"] = "ov-" .. now_us()
   local path = string.format("/accounts/%d/deposit", accounts[math.random(#accounts)])
   return wrk.format("POST", path, headers, '{"amount": 1}')
end

function request()
   if verification_pending then
      verification_pending = false
      return deposit()
   end
   if now_us() >= deadline_us then
      add("probes_sent", 1)
      return probe_request
   end
   add("sent", 1)
   return deposit()
end

function delay()
   if now_us() >= deadline_us then return IDLE_DELAY_MS end
   return 0
end

local function header(response_headers, name)
   return response_headers[name] or response_headers[string.lower(name)]
end

local function record_deposit(status, response_headers, body)
   increment("status", status)
   local class = "other"
   if status == 201 then
      class = "ok"
      local account = tonumber(string.match(body, '"account_id"%s*:%s*(%d+)'))
      if account then increment("credit", account) end
   elseif status == 503 and header(response_headers, "Retry-After")
      and string.find(body, '"code"%s*:%s*"overloaded"') then
      class = "shed"
   end
   local now = now_us()
   if now < deadline_us then add("in_window_" .. class, 1) end -- for rates over the run
   local sent = tonumber(string.match(header(response_headers, "X-Request-ID") or "", "^ov%-(%d+)$"))
   if sent then
      increment("latency_" .. class, math.floor((now - sent) / 1000 / BUCKET_MS) * BUCKET_MS)
   else
      add("untimed", 1)
   end
end

function response(status, response_headers, body)
   add("answered", 1)
   if header(response_headers, "Server") then add("bannered", 1) end
   if status == 200 then -- a /healthz probe: a deposit answers 201 or a problem
      add("probes_answered", 1)
   else
      record_deposit(status, response_headers, body)
   end
   if not drained_signalled and now_us() >= deadline_us
      and ov_answered >= ov_sent + ov_probes_sent then
      local file = io.open(string.format("%s/drained-%d", signal_dir, thread_index), "w")
      if file then file:close() end
      drained_signalled = true
   end
end

function done(summary, latency, requests)
   local totals, maps = {}, {}
   for _, name in ipairs(SCALARS) do totals[name] = 0 end
   for _, map in ipairs(MAPS) do maps[map] = {} end
   for _, thread in ipairs(threads) do
      for _, name in ipairs(SCALARS) do
         totals[name] = totals[name] + (thread:get("ov_" .. name) or 0)
      end
      for _, map in ipairs(MAPS) do
         local keys = thread:get("ov_" .. map .. "_keys") or ""
         for key in string.gmatch(keys, "%S+") do
            local count = thread:get("ov_" .. map .. "_" .. key) or 0
            maps[map][key] = (maps[map][key] or 0) + count
         end
      end
   end
   io.write(string.format("ov-result threads %d\n", #threads))
   for _, name in ipairs(SCALARS) do
      io.write(string.format("ov-result %s %d\n", name, totals[name]))
   end
   for _, map in ipairs(MAPS) do
      for key, count in pairs(maps[map]) do
         io.write(string.format("ov-result %s %s %d\n", map, key, count))
      end
   end
end
