# syntax=docker/dockerfile:1
# (The syntax line selects a current Dockerfile frontend, which knows HEALTHCHECK's
# --start-interval; BuildKit, the default builder since Docker 23, fetches it.)
#
# transferd container image.
#
#   docker build -t transferd .
#   docker run -d -p 50051:50051 -v transferd-data:/data \
#       -v "$PWD/tokens.toml:/etc/transferd/tokens.toml:ro" \
#       -e TRANSFERD_AUTH_TOKENS=/etc/transferd/tokens.toml transferd
#
# The image listens on 0.0.0.0, which is not loopback, so transferd refuses to start without a
# token file (`transferd hash-token` makes a token; see the README's Security section) or an
# explicit `--allow-unauthenticated` (TRANSFERD_ALLOW_UNAUTHENTICATED=true) for a network where
# every client that can reach the port is trusted:
#
#   docker run -d -p 127.0.0.1:50051:50051 -v transferd-data:/data transferd --allow-unauthenticated
#
# Downloads land in /data/downloads; the download database lives in /data too. For a bind mount
# instead of a volume, give the directory to the image's user first:
#
#   mkdir -p data && sudo chown -R 10001:10001 data
#   docker run -d -p 50051:50051 -v "$PWD/data:/data" ... transferd

# ---- Build ------------------------------------------------------------------------------------------
# The full (not slim) image: rusqlite's bundled SQLite and ring compile C code with its gcc.
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, against placeholder sources, so that this layer is only rebuilt when the
# manifest, the lock file, the build script or the contract change. The build script and proto/
# are real: build.rs compiles proto/ (with protox, no protoc needed).
COPY Cargo.toml Cargo.lock ./
COPY server/build.rs server/build.rs
COPY proto proto
RUN mkdir -p server/src/bin/transferctl \
    && echo '//! Placeholder for caching dependencies.' > server/src/lib.rs \
    && echo 'fn main() {}' > server/src/main.rs \
    && echo 'fn main() {}' > server/src/bin/transferctl/main.rs \
    && cargo build --release --locked \
    && rm -rf server/src

# The real sources. COPY keeps the files' modification times, which may be older than the
# placeholder build, so touch the crate roots to make cargo rebuild the transferd crates.
COPY server server
RUN touch server/src/lib.rs server/src/main.rs server/src/bin/transferctl/main.rs \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/transferd /out/transferd \
    && install -D -m 0755 target/release/transferctl /out/transferctl

# ---- Runtime ----------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: the HTTPS client verifies servers against the system roots. The package
# lists and any downloaded archives go in the same layer, so the image carries neither.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*

RUN groupadd --system --gid 10001 transferd \
    && useradd --system --uid 10001 --gid transferd --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin transferd \
    && mkdir /data \
    && chown transferd:transferd /data

COPY --from=builder /out/transferd /usr/local/bin/transferd
# The command-line client, for `docker exec CONTAINER transferctl ls` (with TRANSFERCTL_TOKEN).
COPY --from=builder /out/transferctl /usr/local/bin/transferctl

ENV TRANSFERD_LISTEN=0.0.0.0:50051 \
    TRANSFERD_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 50051
USER 10001:10001

# `transferd healthcheck` asks the gRPC health service at TRANSFERD_LISTEN; health needs no token.
# With TLS on, set TRANSFERD_HEALTHCHECK_CA_CERT (and, for mutual TLS,
# TRANSFERD_HEALTHCHECK_CLIENT_CERT and TRANSFERD_HEALTHCHECK_CLIENT_KEY): see the README's TLS
# section.
# The first probe comes 1 s after start (--start-interval, Docker Engine 25 and later; older
# engines ignore it and probe first after --interval), then every second until the first success
# or the end of --start-period, then every --interval. transferd serves within a second of start
# unless it has a very large store to load, which the start period covers. A probe is one short
# process and one gRPC call, cheap enough every 5 s.
HEALTHCHECK --interval=5s --start-interval=1s --start-period=30s --timeout=5s --retries=3 \
    CMD ["/usr/local/bin/transferd", "healthcheck"]

# transferd checkpoints and exits 0 on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/transferd"]
