# Switchyard container image: the gateway, the mock ML backend and the traffic generator in
# one image, so docker-compose.yml builds once and runs every role from it.
#
#   docker build -t switchyard:local .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9090:9090 switchyard:local   # runs policies/compose.yaml
#
# Stage 1 builds on the official Rust image. The `-bookworm` variant is pinned so that the
# binaries link against the same glibc as the runtime image below (plain `rust:1` follows
# the newest Debian release). Pingora builds zlib-ng with cmake.
FROM rust:1-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY gateway gateway
COPY testkit testkit
COPY examples examples
COPY benches benches
# policies/demo.yaml and the test GeoIP database are compiled into the binary.
COPY policies policies
COPY geo-data geo-data
RUN cargo build --release --locked --bin switchyard --example mock_backend --example traffic \
    && mkdir -p /out \
    && cp target/release/switchyard target/release/examples/mock_backend \
          target/release/examples/traffic /out/

# Stage 2: a slim Debian with only the binaries, the policies, the GeoIP data and the health
# probe (a bash script: the slim image has no curl and needs none). No TLS library is needed:
# the gateway speaks plain HTTP to its backends.
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid switchyard --no-create-home \
               --home-dir /nonexistent --shell /usr/sbin/nologin switchyard
COPY --from=builder /out/ /usr/local/bin/
COPY examples/compose/healthcheck.sh /usr/local/bin/switchyard-healthcheck
COPY policies /etc/switchyard/policies
COPY geo-data/switchyard-test.mmdb /etc/switchyard/geo-data/switchyard-test.mmdb
WORKDIR /etc/switchyard
USER switchyard
# Proxy and admin listeners as policies/compose.yaml sets them. The admin port carries the
# metrics, the status page and the reload/explain API: publish it on loopback only.
EXPOSE 8080 9090
ENV SWITCHYARD_ADMIN_PORT=9090 \
    RUST_LOG=info,pingora=warn,switchyard::access=off
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=6 \
    CMD ["switchyard-healthcheck"]
ENTRYPOINT []
CMD ["switchyard", "run", "--policy", "/etc/switchyard/policies/compose.yaml"]
