-- wrk script: the POST of benches/post_1k.lua (~1 KB OpenAI chat body, same bytes every
-- time) sent as tenant `bench` (API key "bench-key"), so every request goes through
-- admission; used by MODE=limits of benches/load.sh.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"llama-3-8b","messages":[{"role":"system","content":"You are a helpful assistant for a parcel delivery company. You are a helpful assistant for a parcel delivery company. You are a helpful assistant for a parcel delivery company. You are a helpful assistant for a parcel delivery company. You are a helpful assistant for a parcel delivery company. You are a helpful assistant for a parcel delivery company. You are a helpful assistant for a parcel delivery company. You are a helpful assistant for a parcel delivery company. You are a helpful assistant for a parcel delivery company. You are a helpful assistant for a parcel delivery company. You are a helpful assistant for a parcel delivery company. You are a helpful assistant for a parcel delivery company. You are a helpful assistant for a parcel delivery company. You are a helpful assistant for a parcel delivery company."},{"role":"user","content":"Where is my parcel? The tracking number is SY-2024-000123 and it was due yesterday."}],"temperature":0,"max_tokens":64}'
wrk.headers["Authorization"] = "Bearer bench-key"
