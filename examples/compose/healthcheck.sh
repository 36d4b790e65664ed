#!/usr/bin/env bash
# Container health probe for the Switchyard image, with nothing but bash (the runtime image
# is debian:bookworm-slim: no curl, no wget).
#
#   healthcheck.sh                    the gateway: GET /readyz on 127.0.0.1:$SWITCHYARD_ADMIN_PORT
#                                     (default 9090) answers 200 (the image's HEALTHCHECK)
#   healthcheck.sh HOST:PORT          healthy when a TCP connection opens (the mock backends)
#   healthcheck.sh HOST:PORT /PATH    healthy when GET /PATH answers 200
#
# tests/compose.rs runs this script against a real gateway and a closed port.
set -eu
if [ $# -eq 0 ]; then
    set -- "127.0.0.1:${SWITCHYARD_ADMIN_PORT:-9090}" /readyz
fi
addr=$1
path=${2:-}
host=${addr%:*}
port=${addr##*:}
exec 3<>"/dev/tcp/$host/$port"
if [ -z "$path" ]; then
    exit 0
fi
printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$host" >&3
IFS= read -r -t 3 status <&3 || exit 1
case "$status" in
    "HTTP/1."?" 200"*) exit 0 ;;
    *) echo "unhealthy: $status" >&2; exit 1 ;;
esac
