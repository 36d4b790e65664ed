-- wrk script for MODE=cache in benches/load.sh: ~1 KB deterministic chat requests that all
-- differ (a counter and a per-run nonce in the content), so every one is a cache miss and
-- takes the gateway's full path: key, flight, route, proxy, capture, store.
local content = string.rep("The quick brown fox jumps over the lazy dog. ", 20)
local nonce = tostring(os.time()) .. "-" .. tostring(math.random(1, 1000000000))
local counter = 0
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
request = function()
    counter = counter + 1
    local body = '{"model":"llama-3-8b","temperature":0,"messages":[{"role":"user","content":"'
        .. content .. nonce .. "-" .. counter .. '"}]}'
    return wrk.format(nil, nil, nil, body)
end
