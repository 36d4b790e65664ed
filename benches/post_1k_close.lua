-- wrk script: benches/post_1k.lua with `Connection: close`, so every request opens a new
-- connection (over https://: a full TLS handshake each time). MODE=tls benches/load.sh uses it
-- for the handshake rate (new connections per second):
--   wrk -t1 -c32 -d5s -s benches/post_1k_close.lua https://127.0.0.1:18443/v1/chat/completions
dofile("benches/post_1k.lua")
wrk.headers["Connection"] = "close"
