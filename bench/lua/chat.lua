-- wrk script: POST an OpenAI chat completion request.
--
-- Environment (read once per wrk thread):
--   BENCH_MODEL   model name sent in the body (default: fake-model)
--   BENCH_STREAM  "1" sends "stream": true (SSE response), anything else a
--                 plain JSON completion
--
-- The request is built once and reused, so the load generator does no Lua
-- work per request. done() prints one machine-readable line starting with
-- "BENCH_JSON " that bench/gateway.sh parses (latencies in microseconds).

local model = os.getenv("BENCH_MODEL") or "fake-model"
local stream = os.getenv("BENCH_STREAM") == "1"

-- A short but realistic prompt: the fake upstream echoes the last message,
-- so a streamed reply has one SSE chunk per word (about 20 content chunks).
local prompt = "Summarise in one sentence why a security gateway in front of "
    .. "language models should add as little latency as possible."

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = stream and "text/event-stream" or "application/json"
-- BENCH_BEARER: a gateway API key when the benchmark runs aibox with auth on.
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_BEARER") or "bench-dummy-key")
wrk.body = '{"model":"' .. model .. '",'
    .. '"messages":['
    .. '{"role":"system","content":"You are a concise assistant."},'
    .. '{"role":"user","content":"' .. prompt .. '"}],'
    .. '"max_tokens":64,"temperature":0'
    .. (stream and ',"stream":true' or '')
    .. '}'

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,'
      .. '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
