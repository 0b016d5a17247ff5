//! The jailer: `husk jailer`, shaped after Firecracker's.
