# syntax=docker/dockerfile:1
# ripple: one image, four services (users, orders, inventory, payments).
# Build stage: Debian bookworm with the -dev packages of DESIGN.md §3.
# Runtime stage: bookworm-slim with only the shared libraries, a non-root
# user, and the four binaries. compose.yaml picks the service by command.

FROM debian:bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential libuv1-dev libhiredis-dev libjansson-dev node-llhttp \
      libsqlite3-dev libjwt-dev libssl-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY scripts/embed-sql scripts/embed-sql
COPY core core
COPY streams streams
COPY services services
RUN make -j"$(nproc)" all

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libuv1 libhiredis0.14 libjansson4 libsqlite3-0 libjwt0 libssl3 libcurl4 \
      curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/ripple --create-home ripple \
 && mkdir -p /var/lib/ripple/data \
 && chown ripple:ripple /var/lib/ripple/data
COPY --from=build /src/build/users /src/build/orders /src/build/inventory /src/build/payments \
     /usr/local/bin/
USER ripple
WORKDIR /var/lib/ripple
ENV HOST=0.0.0.0
# Each service's port comes from PORT; compose sets it (and a healthcheck).
HEALTHCHECK --interval=5s --timeout=2s --retries=5 \
  CMD curl -fsS "http://127.0.0.1:${PORT:-8001}/healthz" || exit 1
CMD ["users"]

# The demo scenario (compose profile "demo"): the runtime image plus the
# tools scripts/demo uses, run against the stack's URLs.
FROM runtime AS demo
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 redis-tools \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/demo /opt/ripple/scripts/demo
COPY scripts/demo.d /opt/ripple/scripts/demo.d
USER ripple
CMD ["/opt/ripple/scripts/demo"]
