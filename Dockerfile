# syntax=docker/dockerfile:1
# One image for the server and every party: `federate serve …` or `federate join …`.
#
#   docker build -t federate .
#
# Build stage: compile the release binary and fetch + verify MNIST into /cache, so parties
# running the worked example need no network at run time.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crates crates
RUN cargo build --release --locked -p federate
RUN ./target/release/federate data fetch mnist --cache-dir /cache

# Run stage: the binary, the verified dataset cache, an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home federate
COPY --from=build /src/target/release/federate /usr/local/bin/federate
COPY --from=build /cache /cache
COPY examples /examples
ENV FEDERATE_CACHE_DIR=/cache
USER federate
WORKDIR /home/federate
EXPOSE 7000
ENTRYPOINT ["federate"]
CMD ["--help"]
