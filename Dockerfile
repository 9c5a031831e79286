# Builds cnibridge and a minimal image whose filesystem can serve as a managed plugin rootfs
# (`docker create` + `docker export` into plugin-spec's rootfs/). plugin-spec/build-plugin.sh
# does the same without any image registry.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends iptables nftables && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /run/docker/plugins /var/lib/cnibridge /var/lib/cni/networks
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/cnibridge /cnibridge
ENTRYPOINT ["/cnibridge", "serve"]
