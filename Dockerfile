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

# Dependencies first, in their own layer: a build of empty targets with the real manifest and
# lock file, reused until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && printf 'fn main() {}\n' > src/main.rs \
    && printf '//! Placeholder for the dependency layer.\n' > src/lib.rs \
    && cargo build --release --locked --target x86_64-unknown-linux-musl \
    && rm -rf src

# Then the real source (touched: COPY keeps the files' own times, which may be older than the
# placeholder build's, and cargo would then keep the placeholder binary).
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --target x86_64-unknown-linux-musl \
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
