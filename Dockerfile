# syntax=docker/dockerfile:1
#
# Static, non-root image of the service.
#   docker build --build-arg VERSION=$(git describe --tags --always) \
#                --build-arg COMMIT=$(git rev-parse --short HEAD) -t api:dev .
# The version is stamped with -X main.version (not a module path), so it
# survives a gonew rename. deploy/deploytest checks this file statically and
# runs its `go build` line, since no container engine runs in CI.

# Keep equal to the go directive of go.mod (a test checks it).
ARG GO_VERSION=1.26.8

# Build stage: compile for the target platform on the build platform (no
# emulation needed, the binary is pure Go).
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# No separate `go mod download` layer: go.mod also lists test-only modules
# (kustomize, k8s.io/api, buildkit) that the binary never needs; the build
# fetches only the modules it imports, into a cache mount.
COPY . .
# Set by BuildKit from --platform; empty (host default) with the legacy builder.
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
ARG COMMIT=unknown
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/api ./cmd/api

# Final stage: distroless static, nonroot variant (uid/gid 65532), no shell,
# no package manager, CA certificates and tzdata included.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/api /usr/local/bin/api
USER 65532:65532
# 8080: public API (HTTP_ADDR). 9090: admin, /metrics (ADMIN_ADDR); never
# publish 9090 to the internet.
ENV HTTP_ADDR=:8080 ADMIN_ADDR=:9090
EXPOSE 8080 9090
# The image has no curl: the binary probes its own /healthz on loopback.
# Kubernetes ignores HEALTHCHECK and uses the probes of the Deployment.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/api", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/api"]
