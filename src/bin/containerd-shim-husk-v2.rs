//! `containerd-shim-husk-v2`: containerd's runtime v2 shim for husk
//! (`ctr run --runtime io.containerd.husk.v2`, or a Kubernetes
//! RuntimeClass; see docs/kubernetes.md). Everything is in `husk::shim`.

fn main() {
    husk::shim::main();
}
