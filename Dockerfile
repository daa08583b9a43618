# syntax=docker/dockerfile:1
#
# One image for the whole mesh: the `flashsale` binary, the component chosen by its arguments
# (`flashsale serve gateway`, `serve inventory`, ... `migrate`, `health`). See helm/ and k8s/.
#
#   docker build -t registry.example.com/shop/flashsale:0.1.0 .
#
# protoc comes from the protoc-bin-vendored crate, so the build stage needs nothing but Rust.
# The image is the production build: no `local` feature, so no `up`, no `bench`, and no test kit,
# load generator or plotting linked in.

ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
ARG RUST_VERSION
# The image's toolchain, not rust-toolchain.toml's extra components (rustfmt, clippy).
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION}
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --package flashsale --no-default-features \
    && install -D --mode=0755 target/release/flashsale /out/flashsale

# glibc and libgcc, no shell, no package manager; runs as uid 65532.
# checkov:skip=CKV_DOCKER_2:One image serves six components on different ports; Kubernetes probes each over grpc.health.v1 (`flashsale health ADDR` by hand).
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="flashsale" \
      org.opencontainers.image.description="flashsale mesh: gateway, limiter, inventory, orders and the order consumer in one binary" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/flashsale /usr/local/bin/flashsale
USER 65532:65532
# 50050 limiter sidecar, 50051 gateway, 50052 inventory, 50053 orders, 50054 limiter (RLS),
# 50055 order consumer (health), 9090 metrics.
EXPOSE 50050 50051 50052 50053 50054 50055 9090
ENTRYPOINT ["/usr/local/bin/flashsale"]
CMD ["--help"]
