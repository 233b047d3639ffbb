-- wrk script: POST ~1 KB Xendit account.verification webhooks, each with a unique data.id and a
-- unique webhook-id header (every request is a new delivery), authenticated with the dev token.
-- Usage: wrk -t2 -c64 -d10s -s bench/wrk_xendit.lua http://127.0.0.1:PORT/webhooks/xendit -- TEMPLATE SALT
-- TEMPLATE is a file holding the body with {ID} where the id goes (bench/loadgen.py writes it).
-- done() prints one line `wrk-json {...}` with the figures bench/gateway.py reads.

local threads = {}
local counter = 0
local salt = "00000000"
local prefix, suffix

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   local f = assert(io.open(args[1], "rb"))
   local template = f:read("*a")
   f:close()
   local at = string.find(template, "{ID}", 1, true)
   prefix = string.sub(template, 1, at - 1)
   suffix = string.sub(template, at + 4)
   salt = string.format("%06x", tonumber(args[2] or "0") % 16777216) .. string.format("%02x", tid)
end

function request()
   counter = counter + 1
   local id = salt .. string.format("%016x", counter)
   local body = prefix .. id .. suffix
   return wrk.format("POST", nil, {
      ["Content-Type"] = "application/json",
      ["x-callback-token"] = "dev-secret",
      ["webhook-id"] = "wh-" .. id,
   }, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'wrk-json {"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, ' ..
      '"p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      latency.max, latency.mean))
end
