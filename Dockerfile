# syntax=docker/dockerfile:1
#
# kafka-kinesis-proxy container image.
#
#   docker build -t kafka-kinesis-proxy .
#   docker run -v "$PWD/deploy/proxy:/etc/kafka-kinesis-proxy:ro" \
#     -p 19092:19092 -p 19101-19103:19101-19103 -p 9464:9464 kafka-kinesis-proxy
#
# The config is not baked in: mount a directory holding proxy.toml at /etc/kafka-kinesis-proxy
# (docker-compose.yml mounts deploy/proxy). In a container, [listener] bind must be 0.0.0.0 and
# advertised_host an address clients can reach; [admin] bind 0.0.0.0:PORT to scrape /metrics.
# [spool] dir /var/lib/kafka-kinesis-proxy is created writable for the proxy's user: mount a
# volume there so spooled records survive the container.

ARG RUST_VERSION=1

# ---- build ----------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# No debug info in the shipped binary (the release profile keeps line tables for profiling).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo

# Cargo.toml declares the benches as targets, so they must be present for the manifest to load.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# The patched kafka-protocol of [patch.crates-io] (see vendor/kafka-protocol/PATCHED.md).
COPY vendor ./vendor

# The registry and target caches survive between builds (BuildKit); the binary is copied out of
# the cache mount in the same step.
RUN --mount=type=cache,id=kkp-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=kkp-target,target=/build/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/kafka-kinesis-proxy /out/kafka-kinesis-proxy

# ---- runtime --------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: TLS to real AWS endpoints.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kkp \
    && useradd --system --uid 10001 --gid kkp --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kkp \
    && mkdir -p /etc/kafka-kinesis-proxy /var/lib/kafka-kinesis-proxy \
    && chown 10001:10001 /var/lib/kafka-kinesis-proxy

COPY --from=builder /out/kafka-kinesis-proxy /usr/local/bin/kafka-kinesis-proxy

USER 10001:10001

# bootstrap_port, broker_port_base + node id for node ids 1-3, and the admin port (/metrics).
EXPOSE 19092 19101 19102 19103 9464

ENTRYPOINT ["kafka-kinesis-proxy"]
CMD ["run", "--config", "/etc/kafka-kinesis-proxy/proxy.toml"]
