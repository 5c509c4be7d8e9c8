-- Fluent Bit Lua filter (LuaJIT): lifts a sentinels job's id and attempt from the
-- Kubernetes metadata to top-level fields, so Elasticsearch can find a job's lines with
-- one term query (`sentinels_job_id`) and keep them in order (`@timestamp`, then
-- `sentinels_seq`, a per-Fluent-Bit counter that breaks ties between lines of the same
-- instant). Records of other pods pass through unchanged.
-- Fluent Bit: [FILTER] Name lua, Match kube.*, script sentinels.lua, call sentinels_job
-- (after the kubernetes filter; works with and without Replace_Dots/Labels/Annotations off).

local seq = 0

local function pick(map, dotted, replaced)
  if type(map) ~= "table" then return nil end
  return map[dotted] or map[replaced]
end

function sentinels_job(tag, timestamp, record)
  local k8s = record["kubernetes"]
  if type(k8s) ~= "table" then return 0, timestamp, record end
  local job = pick(k8s["labels"], "sentinels.io/job-id", "sentinels_io/job-id")
  if type(job) ~= "string" or not string.match(job, "^[a-z2-7]+$") or #job ~= 10 then
    return 0, timestamp, record
  end
  seq = seq + 1
  record["sentinels_job_id"] = job
  record["sentinels_seq"] = seq
  local attempt = tonumber(pick(k8s["annotations"], "sentinels.io/attempt", "sentinels_io/attempt"))
  if attempt then record["sentinels_attempt"] = attempt end
  local owner = pick(k8s["labels"], "sentinels.io/owner", "sentinels_io/owner")
  if owner then record["sentinels_owner"] = owner end
  return 2, timestamp, record -- 2: record changed, timestamp kept
end
