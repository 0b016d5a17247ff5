//! `husk-agent`: PID 1 in a container's microVM (see `husk::agent::guest`).
//! Statically linked, so it runs in any image, busybox included.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(husk::agent::guest::main(&args));
}
