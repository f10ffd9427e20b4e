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
# Downloads land in /data/downloads; the download database lives in /data too.

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

# ca-certificates: the HTTPS client verifies servers against the system roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

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
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/transferd", "healthcheck"]

# transferd checkpoints and exits 0 on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/transferd"]
