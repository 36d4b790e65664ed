-- A ~5 MiB OpenAI chat body: one user message with a base64 PNG inlined as a data URL
-- (benches/load.sh MODE=large). The image is a fixed pattern, so every request is the same.
local b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local image = string.rep(b64, (5 * 1024 * 1024) / 64)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"llava","messages":[{"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,' .. image .. '"}}]}]}'
