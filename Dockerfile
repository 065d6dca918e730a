# Build the agent, then ship it on the official nginx image so one image serves both setups:
# the single container (the agent runs nginx as its child) and the companion agent.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY templates ./templates
COPY benches ./benches
RUN cargo build --release --locked --bin nginx-smart-proxy

FROM nginx:1.27-bookworm
COPY --from=build /src/target/release/nginx-smart-proxy /usr/local/bin/nginx-smart-proxy
ENTRYPOINT ["/usr/local/bin/nginx-smart-proxy"]
CMD ["--dry-run"]
