# One image for both setups, on the official nginx image:
#   - single container (the default command, `run`): the agent starts nginx as its child, reloads
#     it, and passes SIGTERM/SIGINT on as a graceful stop (SIGQUIT to nginx);
#   - companion: the same `run` with NGINX_CONTAINER set (or a running container labelled
#     smart-proxy.nginx=true) drives nginx in that container through the Docker socket.
# The test image (scripts/local-images) has the same paths, entrypoint, command, volumes and
# health check, built from local files because the tests cannot pull. This file itself is built
# and run by tests/dockerfile.rs, on stand-ins for the two base images where no registry answers
# (scripts/stand-in-base-images).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY templates ./templates
# Only for the manifest: cargo wants every declared bench file present.
COPY benches ./benches
RUN cargo build --release --locked --bin nginx-smart-proxy

# bookworm, like the build stage: the binary links the same glibc. No build tools from here on.
FROM nginx:1.27-bookworm
COPY --from=build /src/target/release/nginx-smart-proxy /usr/local/bin/nginx-smart-proxy

# The agent writes NGINX_CONF=/etc/nginx/conf.d/default.conf (replacing the image's default
# server), certificates go to CERTS_DIR=/etc/letsencrypt (certbot's layout) and HTTP-01 challenges
# to ACME_WEBROOT=/var/www/certbot. In the companion setup all three are shared with the nginx
# container at the same paths.
VOLUME ["/etc/nginx/conf.d", "/etc/letsencrypt", "/var/www/certbot"]
EXPOSE 80 443

# Runs as root: nginx's master binds 80/443 and the agent reads the Docker socket (root or the
# socket's group); nginx's workers run as the unprivileged `nginx` user (the base image's
# nginx.conf). See README, "Running as root".
# The agent handles SIGTERM (the base image's SIGQUIT would kill it without a graceful stop).
STOPSIGNAL SIGTERM
# `health` asks the agent's status endpoint (STATUS_ADDR, default 127.0.0.1:9180) for /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["nginx-smart-proxy", "health"]
ENTRYPOINT ["/usr/local/bin/nginx-smart-proxy"]
CMD ["run"]
