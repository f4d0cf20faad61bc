-- wrk script of bench_service.py: a chat service's traffic.
--
-- Each request is either a chat turn (POST /chat with a real AlpacaEval prompt and a user id out of
-- 2,000) or, with probability AFS_BENCH_FEEDBACK (default 0.5) once this thread has answers, the
-- user's vote on an answer this thread received earlier (POST /feedback with the record id the
-- service returned; wrk's connections are spread over the workers, so the vote often reaches a
-- worker other than the one that logged the record). Every comment carries a unique token.
--
-- Acknowledgements: each thread writes one line per 200 response to
-- $AFS_BENCH_ACKS/acks-<tag>-<thread>.txt: "R <record id>" for a chat answer, "F <token>" for an
-- accepted vote. done() writes wrk's figures as JSON to $AFS_BENCH_WRK_OUT.

local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function init(args)
  prompts = {}
  for line in io.lines(os.getenv("AFS_BENCH_PROMPTS")) do
    prompts[#prompts + 1] = line
  end
  tag = os.getenv("AFS_BENCH_TAG") or "x"
  ack = io.open(os.getenv("AFS_BENCH_ACKS") .. "/acks-" .. tag .. "-" .. tid .. ".txt", "w")
  frac = tonumber(os.getenv("AFS_BENCH_FEEDBACK") or "0.5")
  ids, pos, n = {}, 1, 0
  headers = {["Content-Type"] = "application/json"}
  math.randomseed(tid * 7919 + os.time())
end

function request()
  n = n + 1
  if #ids > 0 and math.random() < frac then
    local vote = (math.random() < 0.7) and 1 or -1
    local body = '{"id":"' .. ids[math.random(#ids)] .. '","feedback":' .. vote ..
                 ',"comment":"' .. tag .. 't' .. tid .. 'n' .. n .. ': thanks, that answered my question"}'
    return wrk.format("POST", "/feedback", headers, body)
  end
  local k = math.random(#prompts)
  local body = '{"user":"u' .. math.random(2000) .. '","prompt":' .. prompts[k] .. ',"i":' .. (k - 1) .. '}'
  return wrk.format("POST", "/chat", headers, body)
end

function response(status, headers, body)
  if status ~= 200 then
    return
  end
  local rid = body:match('^{"id":"(%x+)"')
  if rid then
    ack:write("R ", rid, "\n")
    ids[pos] = rid
    pos = pos % 512 + 1
    return
  end
  local token = body:match('^{"ack":"([^"]+)"')
  if token then
    ack:write("F ", token, "\n")
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local out = io.open(os.getenv("AFS_BENCH_WRK_OUT"), "w")
  out:write(string.format(
    '{"duration_us":%d,"requests":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.duration, summary.requests, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
  out:close()
end
