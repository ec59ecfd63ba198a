# syntax=docker/dockerfile:1
#
# tentacle as a container's whole entrypoint.
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

# Stage 1: a static binary, the same bytes for the same source.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod ./
COPY *.go ./
ARG VERSION=""
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags="-buildid= -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/tentacle .

# Stage 2: small, with /bin/sh and bash for scripts and deploy hooks. For
# files and deploys without scripts, FROM scratch works too (see README).
FROM debian:stable-slim
RUN useradd --system --uid 10933 --user-group --home-dir /var/lib/tentacle \
      --no-create-home --shell /usr/sbin/nologin tentacle \
 && install -d -m 0700 -o tentacle -g tentacle /var/lib/tentacle
COPY --from=build /out/tentacle /usr/local/bin/tentacle
ENV TENTACLE_HOME=/var/lib/tentacle \
    TENTACLE_LISTEN=:10933
VOLUME /var/lib/tentacle
EXPOSE 10933
# Scripts run as this user; "docker run --user root" if they must be root.
USER tentacle
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 \
  CMD ["tentacle", "health"]
ENTRYPOINT ["tentacle", "run"]
