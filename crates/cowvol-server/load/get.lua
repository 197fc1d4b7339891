-- wrk: GET one snapshot at random from IDS, a file of
-- /api/v1/sandboxvolumes/{vol}/snapshots/{sid} paths written by
-- .ci/server-load.sh.
local ids = {}

function init(args)
  token = os.getenv("TOKEN")
  for line in io.lines(os.getenv("IDS")) do
    table.insert(ids, line)
  end
  math.randomseed(os.time() + (id or 0))
end

function request()
  local path = ids[math.random(#ids)]
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token })
end
