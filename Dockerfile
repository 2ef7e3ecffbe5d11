# PLACEHOLDER until issue 6 ("Ship it"): this file is not yet built, linted or run in CI.
# The intended shape: a static musl binary built in a first stage, copied onto `scratch`,
# run as a non-root numeric user.
FROM rust:1.95 AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/runner-updater /usr/local/bin/runner-updater
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/runner-updater"]
CMD ["run"]
