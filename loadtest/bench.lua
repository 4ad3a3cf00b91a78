-- wrk script of the benchmark (loadtest/bench.py): money requests spread over
-- the run's accounts, every answer counted, and a drain at the end.
--
--   wrk ... -s loadtest/bench.lua URL -- OPERATION AMOUNT DURATION_S IDS_FILE SIGNAL_DIR MODE [keyed]
--
-- With "keyed", every money request carries its own Idempotency-Key (unique
-- per run, thread and request), to measure what a keyed request costs.
--
-- OPERATION is deposit, withdraw, transfer or echo (POST /echo of the echo app).
-- Each wrk thread has its own Lua state. Its counters are plain globals
-- (bench_<name>, bench_<map>_<key>, and bench_<map>_keys listing a map's
-- keys), because wrk 4.1's thread:get copies numbers and strings but crashes
-- on tables. done(), in the main state, reads them back through the threads
-- that setup() collected and prints them as `bench-result ...` lines.
--
-- Drain: money requests are sent only for DURATION_S seconds. After that a
-- connection sends nothing more (delay() returns an hour), so every money
-- request wrk sent gets its answer before wrk stops; a thread with nothing
-- left in flight creates SIGNAL_DIR/drained-<thread>, and the runner then
-- stops wrk with SIGINT. Any request still unanswered then is an unknown
-- outcome, which the audit counts and allows for. A connection that wrk
-- re-opens after the deadline sends GET /healthz instead (answered 200,
-- which no money request answers), so no money moves after the deadline.

local ffi = require("ffi")
ffi.cdef [[
struct bench_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clock_id, struct bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local IDLE_DELAY_MS = 3600000
local clock = ffi.new("struct bench_timespec")

local function now_seconds()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
   return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) / 1e9
end

local SCALARS = {
   "sent", "probes_sent", "answered", "probes_answered", "answered_in_window",
   "retry_after_503", "mode_mismatches", "unparsed",
}
local MAPS = { "status", "mode", "credit", "debit" }

-- main state: the threads, for done()
local threads = {}

function setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

-- thread state
local operation, amount, deadline, signal_dir, expected_mode
local accounts = {}
local probe_request
local headers = { ["Content-Type"] = "application/json" }
local drained_signalled = false
local keyed = false
local key_prefix = ""
local key_counter = 0
-- wrk calls request() once on thread 0 to check the request parses, before
-- the load starts: that call must not count as a request sent.
local verification_pending = false

function init(args)
   -- args[0] is the URL; the script's own arguments follow the "--"
   local first = 1
   if args[first] == "--" then first = first + 1 end
   operation = args[first]
   amount = tonumber(args[first + 1])
   deadline = now_seconds() + tonumber(args[first + 2])
   local ids_file = args[first + 3]
   signal_dir = args[first + 4]
   expected_mode = args[first + 5] or ""
   keyed = (args[first + 6] == "keyed")
   for line in io.lines(ids_file) do
      local id = tonumber(line)
      if id then table.insert(accounts, id) end
   end
   if #accounts == 0 and operation ~= "echo" then
      error("bench.lua: no account ids in " .. ids_file)
   end
   if operation == "transfer" and #accounts < 2 then
      error("bench.lua: a transfer needs two accounts")
   end
   -- LuaJIT seeds every state alike: give each thread its own sequence.
   math.randomseed(os.time() + 7919 * (thread_index + 1))
   key_prefix = string.format("bench-%d-%d-%d-", os.time(), thread_index, math.random(1, 1000000000))
   probe_request = wrk.format("GET", "/healthz")
   verification_pending = (thread_index == 0)
   for _, name in ipairs(SCALARS) do _G["bench_" .. name] = 0 end
end

local function add(name, count)
   _G["bench_" .. name] = _G["bench_" .. name] + count
end

local function increment(map, key)
   local name = "bench_" .. map .. "_" .. key
   local count = _G[name]
   if count == nil then
      local keys = "bench_" .. map .. "_keys"
      _G[keys] = (_G[keys] or "") .. key .. " "
      count = 0
   end
   _G[name] = count + 1
end

local function money_request()
   local body
   local path
   if operation == "transfer" then
      local from = math.random(#accounts)
      local to = math.random(#accounts - 1)
      if to >= from then to = to + 1 end
      path = "/transfers"
      body = string.format('{"from_account": %d, "to_account": %d, "amount": %d}',
                           accounts[from], accounts[to], amount)
   elseif operation == "echo" then
      path = "/echo"
      body = string.format('{"amount": %d}', amount)
   else
      path = string.format("/accounts/%d/%s", accounts[math.random(#accounts)], operation)
      body = string.format('{"amount": %d}', amount)
   end
   if keyed and operation ~= "echo" then
      key_counter = key_counter + 1
      local keyed_headers = { ["Content-Type"] = "application/json",
                              ["Idempotency-Key"] = key_prefix .. key_counter }
      return wrk.format("POST", path, keyed_headers, body)
   end
   return wrk.format("POST", path, headers, body)
end

function request()
   if verification_pending then
      verification_pending = false
      return money_request()
   end
   if now_seconds() >= deadline then
      add("probes_sent", 1)
      return probe_request
   end
   add("sent", 1)
   return money_request()
end

function delay()
   if now_seconds() >= deadline then return IDLE_DELAY_MS end
   return 0
end

local function count_movement(body)
   if operation == "transfer" then
      local from = tonumber(string.match(body, '"from_account"%s*:%s*(%d+)'))
      local to = tonumber(string.match(body, '"to_account"%s*:%s*(%d+)'))
      if from and to then
         increment("debit", from)
         increment("credit", to)
         return
      end
   elseif operation ~= "echo" then
      local account = tonumber(string.match(body, '"account_id"%s*:%s*(%d+)'))
      if account then
         increment(operation == "deposit" and "credit" or "debit", account)
         return
      end
   else
      return
   end
   add("unparsed", 1)
end

local function signal_drained()
   local file = io.open(string.format("%s/drained-%d", signal_dir, thread_index), "w")
   if file then file:close() end
   drained_signalled = true
end

function response(status, response_headers, body)
   add("answered", 1)
   if status == 200 then
      add("probes_answered", 1)
   else
      if now_seconds() < deadline then
         add("answered_in_window", 1)
      end
      increment("status", status)
      if status == 503 and (response_headers["Retry-After"] or response_headers["retry-after"]) then
         add("retry_after_503", 1)
      end
      local served = response_headers["X-Lock-Mode"] or response_headers["x-lock-mode"] or "none"
      increment("mode", served)
      if expected_mode ~= "" and served ~= expected_mode then
         add("mode_mismatches", 1)
      end
      if status == 201 then count_movement(body) end
   end
   if not drained_signalled and now_seconds() >= deadline
      and bench_answered >= bench_sent + bench_probes_sent then
      signal_drained()
   end
end

function done(summary, latency, requests)
   local totals, maps = {}, {}
   for _, name in ipairs(SCALARS) do totals[name] = 0 end
   for _, map in ipairs(MAPS) do maps[map] = {} end
   for _, thread in ipairs(threads) do
      for _, name in ipairs(SCALARS) do
         totals[name] = totals[name] + (thread:get("bench_" .. name) or 0)
      end
      for _, map in ipairs(MAPS) do
         local keys = thread:get("bench_" .. map .. "_keys") or ""
         for key in string.gmatch(keys, "%S+") do
            local count = thread:get("bench_" .. map .. "_" .. key) or 0
            maps[map][key] = (maps[map][key] or 0) + count
         end
      end
   end
   io.write(string.format("bench-result threads %d\n", #threads))
   for _, name in ipairs(SCALARS) do
      io.write(string.format("bench-result %s %d\n", name, totals[name]))
   end
   for _, map in ipairs(MAPS) do
      for key, count in pairs(maps[map]) do
         io.write(string.format("bench-result %s %s %d\n", map, key, count))
      end
   end
end
