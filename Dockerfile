# ripple: one image for every module (users, orders, inventory, payments,
# console), each as a host of its own (`users`, ..., `console`) or any set of
# them in one process (`ripple users orders ...`): compose.yaml runs the
# first, compose.monolith.yaml the second.
#
# Stages:
#   build    Debian bookworm with the -dev packages of DESIGN.md §3; make.
#   base     bookworm-slim, only the shared libraries the services link, the
#            non-root user and the healthcheck probe (shared by both below).
#   demo     base + what scripts/demo uses (python3, redis-cli, curl), for
#            the compose profile "demo".
#   runtime  base + the binaries: what compose runs; the default target.
#
# Layer order keeps rebuilds quick: every apt layer comes before anything
# copied from the repository, so a source change recompiles and re-copies,
# and never reinstalls a package. No `# syntax=` line: BuildKit would fetch
# a frontend image for it, and the classic builder (DOCKER_BUILDKIT=0) has
# everything this file uses.

FROM debian:bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential libuv1-dev libhiredis-dev libjansson-dev node-llhttp \
      libsqlite3-dev libjwt-dev libssl-dev libcurl4-openssl-dev libgoogle-perftools-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY scripts/embed-sql scripts/gen-host scripts/embed-assets scripts/
COPY scripts/dlq.d scripts/dlq.d
COPY include include
# The docs page's renderer (GET /api/docs), embedded by make: the four files
# tools/apidocs/setup installed on the host from the pinned lock (make
# compose-test runs scripts/install-deps first), so the build stage needs no
# npm and no registry, and the image holds exactly the reviewed version.
COPY tools/apidocs/node_modules/swagger-ui-dist/swagger-ui-bundle.js \
     tools/apidocs/node_modules/swagger-ui-dist/swagger-ui.css \
     tools/apidocs/node_modules/swagger-ui-dist/LICENSE \
     tools/apidocs/node_modules/swagger-ui-dist/NOTICE \
     tools/apidocs/node_modules/swagger-ui-dist/
COPY core core
COPY streams streams
COPY services services
RUN make -j"$(nproc)" all \
 && strip --strip-debug build/ripple build/users build/orders build/inventory build/payments \
      build/console

# The runtime libraries of the link line (-luv -lhiredis -lcurl -ljansson
# -lsqlite3 -ljwt -lcrypto, and the allocator, -ltcmalloc_minimal) and nothing else: no curl, no CA bundle (the
# services speak plain HTTP to each other; add ca-certificates for an https
# USERS_URL). The healthcheck is a bash probe, as bash is in every Debian.
FROM debian:bookworm-slim AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libuv1 libhiredis0.14 libjansson4 libsqlite3-0 libjwt0 libssl3 libcurl4 \
      libtcmalloc-minimal4 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 ripple \
 && useradd --system --uid 10001 --gid ripple --home-dir /var/lib/ripple --create-home \
      --shell /usr/sbin/nologin ripple \
 && mkdir -p /var/lib/ripple/data \
 && chown ripple:ripple /var/lib/ripple/data
COPY scripts/compose.d/healthcheck /usr/local/bin/ripple-healthcheck
ENV HOST=0.0.0.0

# The demo scenario (compose profile "demo"): what scripts/demo uses, run
# against the stack's URLs (DEMO_EXTERNAL=1).
FROM base AS demo
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 redis-tools curl \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log
COPY scripts/demo /opt/ripple/scripts/demo
COPY scripts/demo.d /opt/ripple/scripts/demo.d
USER ripple
WORKDIR /var/lib/ripple
CMD ["/opt/ripple/scripts/demo"]

FROM base AS runtime
COPY --from=build /src/build/ripple /src/build/users /src/build/orders /src/build/inventory \
     /src/build/payments /src/build/console /usr/local/bin/
USER ripple
WORKDIR /var/lib/ripple
VOLUME /var/lib/ripple/data
# A host of one module listens on PORT, a monolith on each module's
# <MODULE>_PORT; the compose files set them and a healthcheck of their own
# with a shorter interval (a monolith's probes every module's /healthz).
HEALTHCHECK --interval=5s --timeout=3s --retries=5 \
  CMD ["ripple-healthcheck"]
CMD ["users"]
