-- wrk script: POST /v1/deletions with a unique request id and identity per request.
-- KEY=<api key> wrk -t1 -c8 -d10s --latency -s tests/bench/wrk_submit.lua http://127.0.0.1:8080/v1/deletions
local counter = 0
math.randomseed(os.time() + os.clock()*1e6)
local thread_id = math.random(1, 2147483647)
request = function()
  counter = counter + 1
  local id = string.format("%08x-0000-4000-8000-%012x", thread_id % 0xffffffff, counter)
  local body = '{"subject_request_id":"' .. id .. '","subject_request_type":"erasure","subject_identities":[{"identity_type":"email","identity_value":"u' .. counter .. '@x.org"}]}'
  return wrk.format("POST", "/v1/deletions", {["Content-Type"]="application/json", ["Authorization"]="Bearer " .. os.getenv("KEY")}, body)
end
response = function(status, headers, body)
  if status ~= 201 then print("status " .. status .. " " .. body) end
end
