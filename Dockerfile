# Pylon's container image.
#
#   docker build -t pylon .                        # compiles Pylon inside (as README.md does)
#   cargo build --release --locked -p pylon && \
#     docker build --target prebuilt -t pylon .    # copies target/release/pylon instead
#   docker run -d --name pylon -v pylon-data:/var/lib/pylon \
#     -p 4001:4001 -p 4001:4001/udp -p 127.0.0.1:9464:9464 pylon
#
# The binary is built on Debian 12 (glibc 2.36) and runs on Debian 12's slim image; a
# prebuilt binary must come from the same or an older glibc (any Debian 12 machine).
# Building with podman: `--format docker`, or HEALTHCHECK is dropped (OCI images have no
# field for it). pylon/tests/container.rs builds the prebuilt target and runs it.

# --- builder: the release build of README.md ----------------------------------------------
FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pylon \
    && install -D -m 0755 target/release/pylon /out/pylon

# --- runtime-base: everything but the binary -----------------------------------------------
FROM docker.io/library/debian:bookworm-slim AS runtime-base

ARG PYLON_VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
LABEL org.opencontainers.image.title="pylon" \
      org.opencontainers.image.description="Pylon: a libp2p infrastructure node (bootstrap, circuit relay, AutoNAT server, DHT)" \
      org.opencontainers.image.version="${PYLON_VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# A fixed, numeric non-root user (Kubernetes' runAsNonRoot can check a number, not a name),
# owning only the data directory: the root file system can be mounted read-only.
# /etc/pylon/pylon.toml is an empty config file for an operator's own to be mounted over.
RUN groupadd --gid 10001 pylon \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/pylon --no-create-home \
        --shell /usr/sbin/nologin pylon \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/pylon \
    && install -d -m 0755 /etc/pylon \
    && printf '%s\n' \
        '# Mount your Pylon config file here (README.md, "Configuration"): it is read at' \
        '# every start. This one is empty: the embedded defaults and the PYLON_*' \
        '# variables of the image apply.' >/etc/pylon/pylon.toml

# Configuration, later sources winning: the embedded default, the file PYLON_CONFIG
# names, PYLON_* variables (`-e PYLON_LOG=debug`), then flags after the image name
# (`docker run … pylon --role relay`). The variables below therefore win over the same
# keys in a mounted file: change them with -e.
#  - data_dir is the volume: the node key (identity.key), the database (db/) and the
#    admin token (admin.token) live there and survive the container.
#  - metrics (and /healthz, /readyz) on all interfaces: inside a container, loopback is
#    the container's own; the port is reached only where it is published (-p).
#  - the admin API and web dashboard on all interfaces too: a published port that
#    answered nothing would surprise more than it protects. Nothing reaches it unless
#    the operator publishes 5001 (keep it on 127.0.0.1: -p 127.0.0.1:5001:5001), and
#    every request needs the token in /var/lib/pylon/admin.token (mode 0600, made at
#    first start; `docker exec pylon cat /var/lib/pylon/admin.token`). The node logs a
#    warning that it is not on loopback; -e PYLON_ADMIN__LISTEN=127.0.0.1:5001 keeps it
#    inside (`docker exec pylon pylon status` still works), =off turns it off.
ENV PYLON_CONFIG=/etc/pylon/pylon.toml \
    PYLON_DATA_DIR=/var/lib/pylon \
    PYLON_METRICS__LISTEN=0.0.0.0:9464 \
    PYLON_ADMIN__LISTEN=0.0.0.0:5001

# p2p: TCP (Noise/TLS + yamux) and QUIC v1 on 4001; metrics and health; admin API.
EXPOSE 4001/tcp 4001/udp 9464/tcp 5001/tcp
VOLUME ["/var/lib/pylon"]
WORKDIR /var/lib/pylon
USER 10001:10001
# SIGTERM: connections close within connections.shutdown_grace (5 s), storage is flushed,
# exit 0. Give `docker stop` at least 10 s (its default).
STOPSIGNAL SIGTERM
# GET /healthz on the metrics listener, found from the same config and variables as the
# node's (the image has no curl); exit 0 on 200, else 1, within 3 s.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/pylon", "health", "--timeout", "3s"]
ENTRYPOINT ["/usr/local/bin/pylon", "run"]

# --- prebuilt: a binary built outside (docker build --target prebuilt) ---------------------
FROM runtime-base AS prebuilt
# Relative to the build context; the default is where `cargo build --release` puts it.
ARG PYLON_BINARY=target/release/pylon
COPY ${PYLON_BINARY} /usr/local/bin/pylon
RUN ["/usr/local/bin/pylon", "--version"]

# --- the default target: the binary of the builder stage -----------------------------------
FROM runtime-base AS image
COPY --from=builder /out/pylon /usr/local/bin/pylon
RUN ["/usr/local/bin/pylon", "--version"]
