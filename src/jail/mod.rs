//! Defence in depth around every VMM process: a seccomp filter per thread
//! kind ([`seccomp`]) and the jailer that puts the process in namespaces,
//! a chroot, a cgroup and an unprivileged uid ([`jailer`]).

pub mod jailer;
pub mod seccomp;
