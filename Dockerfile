# The agent's image: one statically linked binary (the eBPF programs are embedded in it) on an
# empty base — no shell, no libc, nothing else to patch. The binary is built outside the image
# (the eBPF half needs the nightly toolchain and bpf-linker, which `cargo xtask setup`
# provides), so this build needs no registry and no network:
#
#   cargo xtask image --release        # builds the binary, then this image with podman
#
# or by hand, with any builder:
#
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p egress-agent \
#       --target x86_64-unknown-linux-gnu --target-dir target/static
#   mkdir -p target/image/context
#   cp target/static/x86_64-unknown-linux-gnu/release/egress-agent target/image/context/
#   strip --strip-debug target/image/context/egress-agent
#   docker build -t localhost/egress-agent:0.1.0 -f Dockerfile target/image/context
FROM scratch
COPY egress-agent /egress-agent
ENTRYPOINT ["/egress-agent"]
CMD ["--help"]
