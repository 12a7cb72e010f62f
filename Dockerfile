# lifeboat on the PostgreSQL 17 image, so that `drill` finds matching server binaries.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
RUN cargo build --release --locked && strip target/release/lifeboat

FROM postgres:17
RUN apt-get update && apt-get install -y --no-install-recommends age ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/lifeboat /usr/local/bin/lifeboat
COPY docker/entrypoint.sh docker/lifeboat.toml.in /docker/
ENTRYPOINT ["/docker/entrypoint.sh", "lifeboat", "--config", "/keys/lifeboat.toml"]
