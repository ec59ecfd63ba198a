# tentacle as a container's whole entrypoint (docs/container.md).
#
#   docker build -t tentacle --build-arg COMMIT=$(git rev-parse HEAD) .
#   docker run -d --name tentacle -p 10933:10933 -v tentacle:/var/lib/tentacle \
#     -e TENTACLE_TRUST=<server thumbprint> tentacle
#
# The identity is created in the volume on first start (its thumbprint is in
# "docker logs tentacle") and reused afterwards. Configuration is TENTACLE_*
# variables, or flags after the image name ("tentacle run" is the
# entrypoint). The agent is PID 1 and reaps orphaned processes itself: no
# --init needed.
#
# Build arguments:
#   GO_IMAGE, BASE_IMAGE  the two stages' images; any Debian-like base with
#                         /bin/sh works, or one made locally (.ci/container
#                         builds this file with no registry)
#   BINARY                a static tentacle binary in the build context,
#                         built beforehand with CGO_ENABLED=0 go build
#                         -trimpath: then nothing is compiled and GO_IMAGE
#                         only needs sh, cp, mkdir, chmod and touch
#   VERSION, COMMIT       stamped into the binary built here
#   SOURCE_DATE_EPOCH     the mtime of every file the build writes, so the
#                         same commit and bases give the same layers
ARG GO_IMAGE=golang:1.26
ARG BASE_IMAGE=debian:stable-slim

# Stage 1: the static binary, the same bytes for the same source.
FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY . .
ARG BINARY=""
ARG VERSION=""
ARG COMMIT=unknown
ARG SOURCE_DATE_EPOCH=0
RUN set -e; bin=/out/usr/local/bin; mkdir -p $bin; \
    if [ -n "$BINARY" ]; then \
      cp "$BINARY" $bin/tentacle; \
    else \
      CGO_ENABLED=0 go build -trimpath -buildvcs=false \
        -ldflags="-buildid= -X main.version=${VERSION} -X main.commit=${COMMIT}" \
        -o $bin/tentacle .; \
    fi; \
    chmod 0755 /out/usr /out/usr/local $bin $bin/tentacle; \
    touch -d "@${SOURCE_DATE_EPOCH}" /out/usr /out/usr/local $bin $bin/tentacle

# Stage 2: the runtime, with /bin/sh for scripts and deploy hooks. The user
# is appended to /etc/passwd rather than made by useradd, which also writes
# dates (shadow, lastlog) and needs Debian's tools: this works on any base
# with a shell, busybox's included.
FROM ${BASE_IMAGE}
ARG SOURCE_DATE_EPOCH=0
RUN set -e; \
    echo 'tentacle:x:10933:10933:tentacle agent:/var/lib/tentacle:/usr/sbin/nologin' >>/etc/passwd; \
    echo 'tentacle:x:10933:' >>/etc/group; \
    touch -d "@${SOURCE_DATE_EPOCH}" /etc/passwd /etc/group; \
    for f in /etc/shadow /etc/gshadow; do \
      if [ -f "$f" ]; then \
        case $f in */shadow) echo 'tentacle:!:::::::' ;; *) echo 'tentacle:!::' ;; esac >>"$f"; \
        touch -d "@${SOURCE_DATE_EPOCH}" "$f"; \
      fi; \
    done; \
    mkdir -p /var/lib/tentacle; \
    chown 10933:10933 /var/lib/tentacle; \
    chmod 0700 /var/lib/tentacle; \
    touch -d "@${SOURCE_DATE_EPOCH}" /etc /var /var/lib /var/lib/tentacle
COPY --from=build /out/ /
# TENTACLE_SHUTDOWN_GRACE is under docker stop's 10 s: on SIGTERM the agent
# lets jobs run that long, cancels what is left and exits 0 before Docker's
# SIGKILL. For longer jobs raise both: docker stop -t 75 with 60s here
# (the grace, then -kill-grace 10s for jobs that ignore SIGTERM).
ENV TENTACLE_HOME=/var/lib/tentacle \
    TENTACLE_LISTEN=:10933 \
    TENTACLE_SHUTDOWN_GRACE=8s
VOLUME /var/lib/tentacle
EXPOSE 10933
# Numeric, so that Kubernetes' runAsNonRoot can check it. Scripts run as this
# user; "docker run --user root" if they must be root.
USER 10933:10933
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 \
  CMD ["tentacle", "health"]
ENTRYPOINT ["tentacle", "run"]
