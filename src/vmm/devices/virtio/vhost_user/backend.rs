//! The vhost-user connection to a backend process (virtiofsd for
//! virtio-fs, qemu-storage-daemon or another vhost-user-blk server for a
//! drive), through the rust-vmm `vhost` crate's frontend.
//!
//! [`Backend::connect`] runs at InstanceStart, on the VMM thread before
//! its seccomp filter goes on: connect, SET_OWNER, the backend's virtio
//! features, then the protocol features husk speaks (MQ and REPLY_ACK:
//! with REPLY_ACK every request is acknowledged, so a backend that
//! refuses one says so at once; and what the device asks for besides,
//! CONFIG for a block device, whose configuration space the backend
//! owns: [`Backend::get_config`]). [`Backend::start`] hands the backend the
//! guest's queues once the driver sets DRIVER_OK: the accepted features,
//! the memory table (the memfd of every region), then for each queue its
//! size, ring addresses (in this process's address space, as vhost-user
//! wants), first index, call and kick eventfds, and enables it.
//! [`Backend::stop`] disables the rings and takes them back
//! (GET_VRING_BASE), on a device reset and before the VMM exits.
//!
//! Every reply is awaited for at most [`REPLY_TIMEOUT`]: a backend that
//! stops answering fails the request rather than hang the VMM thread.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::devices::virtio::VIRTIO_F_VERSION_1;
use crate::vmm::kvm::memory::GuestMem;

/// How long a reply may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// VHOST_USER_F_PROTOCOL_FEATURES: a vhost-user bit among the virtio ones.
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to the vhost-user backend at {path}: {err}")]
    Connect { path: String, err: std::io::Error },
    #[error("cannot set up the vhost-user socket: {0}")]
    Socket(std::io::Error),
    #[error("the vhost-user backend {0}")]
    Request(String),
    #[error("the vhost-user backend does not offer {0}")]
    Missing(&'static str),
    #[error("the vhost-user backend serves {has} queues; the device needs {needs}")]
    TooFewQueues { has: u64, needs: usize },
    #[error("guest memory is not shared (a memfd) and cannot be given to the backend")]
    NotShared,
    #[error("queue {0}'s rings are not in guest memory")]
    RingAddress(usize),
    #[error(
        "the vhost-user backend answered GET_CONFIG with {got} bytes; {wanted} were asked for"
    )]
    ConfigSize { got: usize, wanted: usize },
}

/// Names a failed request, saying plainly when the backend hung up.
fn failed(what: &'static str) -> impl Fn(vhost::Error) -> BackendError {
    use vhost::vhost_user::Error as E;
    move |err| {
        let why = match &err {
            vhost::Error::VhostUserProtocol(
                E::Disconnected | E::PartialMessage | E::SocketBroken(_),
            ) => "closed the connection".to_string(),
            vhost::Error::VhostUserProtocol(E::SocketRetry(_)) => {
                format!("did not answer within {} s", REPLY_TIMEOUT.as_secs())
            }
            other => format!("failed: {other}"),
        };
        BackendError::Request(format!("{why} (during {what})"))
    }
}

/// A live connection to a vhost-user backend.
pub struct Backend {
    frontend: Frontend,
    /// The backend's virtio features.
    features: u64,
    /// The protocol features both sides speak.
    protocol: VhostUserProtocolFeatures,
}

impl Backend {
    /// Connects to the backend at `path` and negotiates the protocol for
    /// a device of `queues` queues. `wanted` are the protocol features the
    /// device needs besides MQ and REPLY_ACK: a backend without them is
    /// refused.
    pub fn connect(
        path: &Path,
        queues: usize,
        wanted: VhostUserProtocolFeatures,
    ) -> Result<Self, BackendError> {
        let sock = UnixStream::connect(path).map_err(|err| BackendError::Connect {
            path: crate::text::echo_path(path),
            err,
        })?;
        sock.set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| sock.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(BackendError::Socket)?;
        let mut frontend = Frontend::from_stream(sock, queues as u64);
        frontend.set_owner().map_err(failed("SET_OWNER"))?;
        let features = frontend.get_features().map_err(failed("GET_FEATURES"))?;
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(BackendError::Missing("VIRTIO_F_VERSION_1"));
        }
        if features & PROTOCOL_FEATURES == 0 {
            return Err(BackendError::Missing("VHOST_USER_F_PROTOCOL_FEATURES"));
        }
        let offered = frontend
            .get_protocol_features()
            .map_err(failed("GET_PROTOCOL_FEATURES"))?;
        if !offered.contains(wanted) {
            return Err(BackendError::Missing(protocol_name(wanted - offered)));
        }
        let acked = offered
            & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK | wanted);
        frontend
            .set_protocol_features(acked)
            .map_err(failed("SET_PROTOCOL_FEATURES"))?;
        if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if acked.contains(VhostUserProtocolFeatures::MQ) {
            let has = frontend.get_queue_num().map_err(failed("GET_QUEUE_NUM"))?;
            if has < queues as u64 {
                return Err(BackendError::TooFewQueues { has, needs: queues });
            }
        }
        Ok(Backend {
            frontend,
            features,
            protocol: acked,
        })
    }

    /// The backend's virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The device's configuration space as the backend has it now: `len`
    /// bytes from offset 0 (needs the CONFIG protocol feature).
    pub fn get_config(&mut self, len: usize) -> Result<Vec<u8>, BackendError> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(BackendError::Missing("VHOST_USER_PROTOCOL_F_CONFIG"));
        }
        let buf = vec![0u8; len];
        let (_, config) = self
            .frontend
            .get_config(0, len as u32, VhostUserConfigFlags::WRITABLE, &buf)
            .map_err(failed("GET_CONFIG"))?;
        if config.len() != len {
            return Err(BackendError::ConfigSize {
                got: config.len(),
                wanted: len,
            });
        }
        Ok(config)
    }

    /// Hands the backend the guest's queues: `kicks[i]` is queue i's
    /// ioeventfd, `calls[i]` what the backend signals when it used
    /// buffers of queue i; `driver_features` what the driver accepted.
    pub fn start(
        &mut self,
        mem: &GuestMem,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[EventFd],
        driver_features: u64,
    ) -> Result<(), BackendError> {
        let f = &mut self.frontend;
        f.set_features(driver_features | PROTOCOL_FEATURES)
            .map_err(failed("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| BackendError::NotShared)?;
        f.set_mem_table(&regions).map_err(failed("SET_MEM_TABLE"))?;
        for (i, ((q, kick), call)) in queues.iter().zip(kicks).zip(calls).enumerate() {
            let host = |a: u64| {
                mem.get_host_address(GuestAddress(a))
                    .map(|p| p as u64)
                    .map_err(|_| BackendError::RingAddress(i))
            };
            let rings = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table())?,
                used_ring_addr: host(q.used_ring())?,
                avail_ring_addr: host(q.avail_ring())?,
                log_addr: None,
            };
            f.set_vring_num(i, q.size())
                .map_err(failed("SET_VRING_NUM"))?;
            f.set_vring_addr(i, &rings)
                .map_err(failed("SET_VRING_ADDR"))?;
            f.set_vring_base(i, q.next_avail())
                .map_err(failed("SET_VRING_BASE"))?;
            f.set_vring_call(i, call)
                .map_err(failed("SET_VRING_CALL"))?;
            f.set_vring_kick(i, kick)
                .map_err(failed("SET_VRING_KICK"))?;
        }
        for i in 0..queues.len() {
            f.set_vring_enable(i, true)
                .map_err(failed("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// Stops the backend's first `queues` rings and takes them back.
    pub fn stop(&mut self, queues: usize) -> Result<(), BackendError> {
        let f = &mut self.frontend;
        for i in 0..queues {
            f.set_vring_enable(i, false)
                .map_err(failed("SET_VRING_ENABLE"))?;
        }
        for i in 0..queues {
            f.get_vring_base(i).map_err(failed("GET_VRING_BASE"))?;
        }
        Ok(())
    }
}

/// The name of the first protocol feature in `missing`.
fn protocol_name(missing: VhostUserProtocolFeatures) -> &'static str {
    if missing.contains(VhostUserProtocolFeatures::CONFIG) {
        "VHOST_USER_PROTOCOL_F_CONFIG"
    } else {
        "a protocol feature the device needs"
    }
}

impl AsRawFd for Backend {
    fn as_raw_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}
