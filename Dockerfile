# runner-updater: a static (musl) binary on `scratch`, run as a non-root numeric user.
#
#   docker build -t runner-updater:0.1.0 .
#   docker run --rm runner-updater:0.1.0 demo
#
# scripts/image-check builds and runs the `runtime` stage with buildah and podman where no base
# image can be pulled (the binary built on the host instead of in the `builder` stage).

FROM rust:1.95-bookworm AS builder

# musl-gcc compiles the C parts (aws-lc-sys, ring) for the musl target. Its include path
# leaves out the kernel headers, which aws-lc needs (<linux/random.h>): they are offered after
# musl's own through CFLAGS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /opt/musl-kernel-headers \
    && ln -s /usr/include/linux /opt/musl-kernel-headers/linux \
    && ln -s /usr/include/asm-generic /opt/musl-kernel-headers/asm-generic \
    && ln -s /usr/include/x86_64-linux-gnu/asm /opt/musl-kernel-headers/asm \
    && rustup target add x86_64-unknown-linux-musl
ENV CFLAGS_x86_64_unknown_linux_musl="-idirafter /opt/musl-kernel-headers" \
    CARGO_PROFILE_RELEASE_STRIP=symbols

WORKDIR /src

# Dependencies first, in their own layer: a build of empty targets with the real manifests and
# lock file, reused until a Cargo.toml or Cargo.lock change. Only the product's package is
# built (`--package runner-updater`): never the dev tools' crate, and so never tokio's
# `test-util` (features are resolved for the packages built).
COPY Cargo.toml Cargo.lock ./
COPY crates/core/Cargo.toml crates/core/
COPY crates/config/Cargo.toml crates/config/
COPY crates/ports/Cargo.toml crates/ports/
COPY crates/adapters/Cargo.toml crates/adapters/
COPY crates/aws/Cargo.toml crates/aws/
COPY crates/runtime/Cargo.toml crates/runtime/
COPY crates/interface/Cargo.toml crates/interface/
COPY crates/dev/Cargo.toml crates/dev/
RUN for crate in crates/*/; do \
        mkdir -p "${crate}src/bin" && printf '//! Placeholder.\n' > "${crate}src/lib.rs"; \
    done \
    && mkdir src \
    && printf 'fn main() {}\n' > src/main.rs \
    && printf '//! Placeholder.\n' > src/lib.rs \
    && printf 'fn main() {}\n' > crates/dev/src/main.rs \
    && printf 'fn main() {}\n' > crates/interface/src/bin/runner-updater-demo.rs \
    && cargo build --release --locked --package runner-updater --target x86_64-unknown-linux-musl \
    && rm -rf src crates/*/src

# Then the real sources (touched: COPY keeps the files' own times, which may be older than the
# placeholder build's, and cargo would then keep the placeholder build).
COPY src ./src
COPY crates ./crates
# The set-up template `runner-updater setup` deploys is compiled into the binary.
COPY setup ./setup
RUN find src crates -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --package runner-updater --target x86_64-unknown-linux-musl \
    && cp target/x86_64-unknown-linux-musl/release/runner-updater /runner-updater

FROM scratch AS runtime
ARG VERSION=0.1.0
# Set by the build that publishes the image (e.g. --build-arg SOURCE_URL=https://…/runner-updater).
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="runner-updater" \
      org.opencontainers.image.description="Keeps a fleet of ECS runners on the versions ops write into SSM Parameter Store, updating their CloudFormation stacks first when needed." \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# CA certificates for HTTPS to AWS (the TLS stack reads the system bundle).
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /runner-updater /runner-updater
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
# /metrics, /healthz, /readyz of `run` (--listen, default 0.0.0.0:9464).
EXPOSE 9464
ENTRYPOINT ["/runner-updater"]
CMD ["run"]
