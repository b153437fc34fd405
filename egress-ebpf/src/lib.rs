// Empty on purpose: the agent's build.rs declares a build-dependency on this package so that
// cargo rebuilds the agent when the kernel programs change; that needs a library target that
// compiles for the host. The programs themselves are the binary in main.rs.
#![no_std]
