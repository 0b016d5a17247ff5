//! `PUT /entropy`: a virtio-rng device fed by the host's `getrandom`.

use serde::{Deserialize, Serialize};

/// `PUT /entropy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {}
