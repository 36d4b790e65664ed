-- wrk script for benches/load.sh MODE=queue: batch-tier OpenAI-style POSTs, each with a
-- unique Idempotency-Key, so every request is a new durable job (202).
local counter = 0
local thread_id = 0
function setup(thread)
    thread:set("tid", thread_id)
    thread_id = thread_id + 1
end
request = function()
    counter = counter + 1
    local headers = {
        ["content-type"] = "application/json",
        ["x-slo-tier"] = "batch",
        ["idempotency-key"] = string.format("bench-%d-%d-%d", tid or 0, counter, os.time()),
    }
    return wrk.format("POST", "/v1/chat/completions", headers,
        '{"model":"llama-3-8b","messages":[{"role":"user","content":"summarise this document for the quarterly report please"}]}')
end
