-- wrk: GET pages of the store-wide snapshot list (50 rows, newest first),
-- at random offsets, as the panel does when paging.
function init(args)
  token = os.getenv("TOKEN")
  total = tonumber(os.getenv("SNAPSHOTS") or "10000")
end

function request()
  local cursor = math.random(0, total - 50)
  return wrk.format("GET", "/api/v1/snapshots?limit=50&cursor=" .. cursor, { ["Authorization"] = "Bearer " .. token })
end
