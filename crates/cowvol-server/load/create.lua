-- wrk: POST snapshots round-robin over VOLUMES volumes. Each wrk thread
-- uses its own half of the volumes, so two requests in flight never take
-- the same volume (which the engine would refuse as busy). With TARGET
-- set, each thread stops after TARGET/threads answers (to fill a store).
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  token = os.getenv("TOKEN")
  volumes = tonumber(os.getenv("VOLUMES") or "64")
  nthreads = tonumber(os.getenv("THREADS") or "2")
  target = tonumber(os.getenv("TARGET") or "0")
  prefix = os.getenv("PREFIX") or "load"
  counter, answered = 0, 0
end

function request()
  counter = counter + 1
  local slot = (counter % (volumes / nthreads)) * nthreads + id
  local body = string.format('{"name":"%s-%d-%d"}', prefix, id, counter)
  return wrk.format("POST", "/api/v1/sandboxvolumes/vol-" .. (slot + 1) .. "/snapshots",
    { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
  answered = answered + 1
  if target > 0 and answered >= target / nthreads then
    wrk.thread:stop()
  end
end
