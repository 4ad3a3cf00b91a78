-- The common part of the wrk scripts (loadtest/bench.lua and
-- tests/support/overload.lua): a load of requests for DURATION_S seconds,
-- then a drain, and counters that done() prints. A script loads it with
-- dofile (its own directory from debug.getinfo) and calls install(spec),
-- which defines wrk's setup, init, request, delay, response and done:
--
--   spec.prefix    names its counters: globals <prefix>_..., lines `<prefix>-result ...`
--   spec.scalars   its own counters (sent, probes_sent, answered and
--                  probes_answered are counted here)
--   spec.maps      its own maps of counters (key -> count)
--   spec.init(args)  reads the script's arguments (those after wrk's "--",
--                  from 1) and returns DURATION_S and SIGNAL_DIR
--   spec.request()   the load's next request
--   spec.record(status, headers, body)  counts the answer to a load request
--   spec.answer(status, headers, body)  optional: sees every answer, probes too
--   spec.is_probe(status)  optional: whether an answer is a probe's (default: a
--                  200, which no load request gets); a load of GETs answered 200
--                  says no, and its few probes (sent after the deadline) are
--                  then counted as load answers outside the window
--
-- Counters: each wrk thread has its own Lua state, and wrk 4.1's thread:get
-- copies numbers and strings but crashes on tables, so the counters are plain
-- globals (<prefix>_<name>, <prefix>_<map>_<key>, and <prefix>_<map>_keys
-- listing a map's keys). done(), in the main state, reads them back through
-- the threads that setup() collected and prints them as
-- `<prefix>-result NAME N` and `<prefix>-result MAP KEY N` lines.
--
-- Drain: load requests are sent only for DURATION_S seconds. After that a
-- connection sends nothing more (delay() returns an hour), so every request
-- wrk sent gets its answer before wrk stops; a thread with nothing left in
-- flight creates SIGNAL_DIR/drained-<thread>, and the runner
-- (loadtest/bench_load.py) then stops wrk with SIGINT. A connection that wrk
-- re-opens after the deadline sends GET /healthz instead (answered 200, which
-- no load request is), so nothing the load does happens after the deadline.

local ffi = require("ffi")
ffi.cdef [[
struct wrk_load_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clock_id, struct wrk_load_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local IDLE_DELAY_MS = 3600000
local COMMON_SCALARS = { "sent", "probes_sent", "answered", "probes_answered" }
local clock = ffi.new("struct wrk_load_timespec")

local load = {
   deadline_us = nil, -- monotonic microseconds at which the load ends (set by init)
}

local prefix = "load"

-- Monotonic time in microseconds.
function load.now_us()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
   return tonumber(clock.tv_sec) * 1000000 + math.floor(tonumber(clock.tv_nsec) / 1000)
end

function load.add(name, count)
   _G[prefix .. "_" .. name] = _G[prefix .. "_" .. name] + count
end

function load.increment(map, key)
   local name = prefix .. "_" .. map .. "_" .. key
   local count = _G[name]
   if count == nil then
      local keys = prefix .. "_" .. map .. "_keys"
      _G[keys] = (_G[keys] or "") .. key .. " "
      count = 0
   end
   _G[name] = count + 1
end

local function counter(name)
   return _G[prefix .. "_" .. name]
end

function load.install(spec)
   prefix = spec.prefix
   local scalars = {}
   for _, name in ipairs(COMMON_SCALARS) do table.insert(scalars, name) end
   for _, name in ipairs(spec.scalars) do table.insert(scalars, name) end
   local maps = spec.maps

   -- main state: the threads, for done()
   local threads = {}
   -- thread state
   local signal_dir
   local probe_request
   local drained_signalled = false
   -- wrk calls request() once on thread 0 to check the request parses, before
   -- the load starts: that call must not count as a request sent.
   local verification_pending = false

   function setup(thread)
      thread:set("thread_index", #threads)
      table.insert(threads, thread)
   end

   function init(args)
      -- args[0] is the URL; the script's own arguments follow the "--"
      local first = 1
      if args[first] == "--" then first = first + 1 end
      local own = {}
      for index = first, #args do table.insert(own, args[index]) end
      -- LuaJIT seeds every state alike: give each thread its own sequence.
      math.randomseed(os.time() + 7919 * (thread_index + 1))
      local start_us = load.now_us()
      local duration_s
      duration_s, signal_dir = spec.init(own)
      load.deadline_us = start_us + tonumber(duration_s) * 1000000
      probe_request = wrk.format("GET", "/healthz")
      verification_pending = (thread_index == 0)
      for _, name in ipairs(scalars) do _G[prefix .. "_" .. name] = 0 end
   end

   function request()
      if verification_pending then
         verification_pending = false
         return spec.request()
      end
      if load.now_us() >= load.deadline_us then
         load.add("probes_sent", 1)
         return probe_request
      end
      load.add("sent", 1)
      return spec.request()
   end

   function delay()
      if load.now_us() >= load.deadline_us then return IDLE_DELAY_MS end
      return 0
   end

   function response(status, response_headers, body)
      load.add("answered", 1)
      if spec.answer then spec.answer(status, response_headers, body) end
      local probe
      if spec.is_probe then probe = spec.is_probe(status) else probe = (status == 200) end
      if probe then -- a /healthz probe
         load.add("probes_answered", 1)
      else
         spec.record(status, response_headers, body)
      end
      if not drained_signalled and load.now_us() >= load.deadline_us
         and counter("answered") >= counter("sent") + counter("probes_sent") then
         local file = io.open(string.format("%s/drained-%d", signal_dir, thread_index), "w")
         if file then file:close() end
         drained_signalled = true
      end
   end

   function done(summary, latency, requests)
      local totals, sums = {}, {}
      for _, name in ipairs(scalars) do totals[name] = 0 end
      for _, map in ipairs(maps) do sums[map] = {} end
      for _, thread in ipairs(threads) do
         for _, name in ipairs(scalars) do
            totals[name] = totals[name] + (thread:get(prefix .. "_" .. name) or 0)
         end
         for _, map in ipairs(maps) do
            local keys = thread:get(prefix .. "_" .. map .. "_keys") or ""
            for key in string.gmatch(keys, "%S+") do
               local count = thread:get(prefix .. "_" .. map .. "_" .. key) or 0
               sums[map][key] = (sums[map][key] or 0) + count
            end
         end
      end
      io.write(string.format("%s-result threads %d\n", prefix, #threads))
      for _, name in ipairs(scalars) do
         io.write(string.format("%s-result %s %d\n", prefix, name, totals[name]))
      end
      for _, map in ipairs(maps) do
         for key, count in pairs(sums[map]) do
            io.write(string.format("%s-result %s %s %d\n", prefix, map, key, count))
         end
      end
   end
end

return load
