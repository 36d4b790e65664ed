-- wrk script for MODE=cache in benches/load.sh: the same ~1 KB deterministic chat request
-- every time, so that after the first one the gateway answers from its prediction cache.
local content = string.rep("The quick brown fox jumps over the lazy dog. ", 20)
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"model":"llama-3-8b","temperature":0,"messages":[{"role":"user","content":"' .. content .. '"}]}'
