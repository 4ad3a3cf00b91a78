-- wrk script of the benchmark (loadtest/bench.py): money requests spread over
-- the run's accounts, every answer counted, and a drain at the end.
--
--   wrk ... -s loadtest/bench.lua URL -- OPERATION AMOUNT DURATION_S IDS_FILE SIGNAL_DIR MODE [keyed]
--
-- With "keyed", every money request carries its own Idempotency-Key (unique
-- per run, thread and request), to measure what a keyed request costs.
--
-- OPERATION is deposit, withdraw, transfer or echo (POST /echo of the echo app),
-- or a read that moves no money: healthz (GET /healthz) or read (GET
-- /accounts/{id} of a random account of the run), both answered 200.
-- The load, the drain and the counters are loadtest/wrk_load.lua's: money
-- requests are sent only for DURATION_S seconds, then every one sent gets its
-- answer before the runner stops wrk (any still unanswered then is an unknown
-- outcome, which the audit counts and allows for), and a connection wrk
-- re-opens after the deadline sends GET /healthz (answered 200, which no money
-- request answers), so no money moves after the deadline. done() prints the
-- counters as `bench-result ...` lines.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local load = dofile(here .. "wrk_load.lua")

local operation, amount, expected_mode
local accounts = {}
local headers = { ["Content-Type"] = "application/json" }
local keyed = false
local key_prefix = ""
local key_counter = 0
local reading = false -- healthz or read: GETs answered 200, like a probe

local function read_arguments(args)
   operation = args[1]
   amount = tonumber(args[2])
   local duration_s = args[3]
   local ids_file = args[4]
   local signal_dir = args[5]
   expected_mode = args[6] or ""
   keyed = (args[7] == "keyed")
   reading = (operation == "healthz" or operation == "read")
   for line in io.lines(ids_file) do
      local id = tonumber(line)
      if id then table.insert(accounts, id) end
   end
   if #accounts == 0 and operation ~= "echo" and operation ~= "healthz" then
      error("bench.lua: no account ids in " .. ids_file)
   end
   if operation == "transfer" and #accounts < 2 then
      error("bench.lua: a transfer needs two accounts")
   end
   key_prefix = string.format("bench-%d-%d-%d-", os.time(), thread_index, math.random(1, 1000000000))
   return duration_s, signal_dir
end

local function money_request()
   local body
   local path
   if operation == "healthz" then
      return wrk.format("GET", "/healthz")
   elseif operation == "read" then
      return wrk.format("GET", string.format("/accounts/%d", accounts[math.random(#accounts)]))
   elseif operation == "transfer" then
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

local function count_movement(body)
   if operation == "transfer" then
      local from = tonumber(string.match(body, '"from_account"%s*:%s*(%d+)'))
      local to = tonumber(string.match(body, '"to_account"%s*:%s*(%d+)'))
      if from and to then
         load.increment("debit", from)
         load.increment("credit", to)
         return
      end
   elseif operation ~= "echo" then
      local account = tonumber(string.match(body, '"account_id"%s*:%s*(%d+)'))
      if account then
         load.increment(operation == "deposit" and "credit" or "debit", account)
         return
      end
   else
      return
   end
   load.add("unparsed", 1)
end

local function record(status, response_headers, body)
   if load.now_us() < load.deadline_us then
      load.add("answered_in_window", 1)
   end
   load.increment("status", status)
   if status == 503 and (response_headers["Retry-After"] or response_headers["retry-after"]) then
      load.add("retry_after_503", 1)
   end
   local served = response_headers["X-Lock-Mode"] or response_headers["x-lock-mode"] or "none"
   load.increment("mode", served)
   if expected_mode ~= "" and served ~= expected_mode then
      load.add("mode_mismatches", 1)
   end
   if status == 201 then count_movement(body) end
end

load.install {
   prefix = "bench",
   scalars = { "answered_in_window", "retry_after_503", "mode_mismatches", "unparsed" },
   maps = { "status", "mode", "credit", "debit" },
   init = read_arguments,
   request = money_request,
   record = record,
   is_probe = function(status) return status == 200 and not reading end,
}
