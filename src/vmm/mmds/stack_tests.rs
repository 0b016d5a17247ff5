//! The stack driven by a scripted guest: frames built with smoltcp's
//! wire types, as a guest's TCP would send them.

use std::sync::{Arc, Mutex};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber};

use super::*;
use crate::vmm::config::MmdsVersion;
use crate::vmm::mmds::frame::{write_eth, MMDS_MAC};
use crate::vmm::mmds::Mmds;

const GUEST_MAC: [u8; 6] = [6, 0, 0xac, 0x10, 0, 2];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const MMDS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

fn stack(version: MmdsVersion) -> MmdsStack {
    let mut m = Mmds::new(51200).unwrap();
    m.configure(version, false);
    m.store_mut()
        .put(serde_json::json!({"latest": {"meta-data": {"id": "i-0123"}}}))
        .unwrap();
    MmdsStack::new(Arc::new(Mutex::new(m)), MMDS_IP, 1500).unwrap()
}

#[derive(Default)]
struct Seg {
    syn: bool,
    fin: bool,
    rst: bool,
    seq: u32,
    ack: Option<u32>,
    payload: Vec<u8>,
}

fn tcp_frame(port: u16, s: &Seg) -> Vec<u8> {
    let control = if s.syn {
        TcpControl::Syn
    } else if s.fin {
        TcpControl::Fin
    } else if s.rst {
        TcpControl::Rst
    } else {
        TcpControl::None
    };
    let repr = TcpRepr {
        src_port: port,
        dst_port: MMDS_PORT,
        control,
        seq_number: TcpSeqNumber(s.seq as i32),
        ack_number: s.ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 16384,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &s.payload,
    };
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: MMDS_IP,
        next_header: IpProtocol::Tcp,
        payload_len: repr.buffer_len(),
        hop_limit: 64,
    };
    let caps = ChecksumCapabilities::default();
    let mut f = vec![0u8; ETH_HDR + ip.buffer_len() + repr.buffer_len()];
    write_eth(&mut f, MMDS_MAC, GUEST_MAC, ETHERTYPE_IPV4);
    let mut p = Ipv4Packet::new_unchecked(&mut f[ETH_HDR..]);
    ip.emit(&mut p, &caps);
    let mut t = TcpPacket::new_unchecked(p.payload_mut());
    repr.emit(
        &mut t,
        &IpAddress::Ipv4(GUEST_IP),
        &IpAddress::Ipv4(MMDS_IP),
        &caps,
    );
    f
}

fn send(st: &mut MmdsStack, mut f: Vec<u8>) {
    assert!(st.is_mmds_frame(&f));
    st.detour(&[0u8; 12], &mut f);
}

/// Every frame the stack has for the guest.
fn drain(st: &mut MmdsStack) -> Vec<Vec<u8>> {
    let mut out = vec![];
    let mut buf = vec![0u8; 2048];
    while let Some(n) = st.next_frame(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// (SYN, FIN, RST, seq, ack, payload) of a TCP frame from the stack.
fn parse_seg(f: &[u8]) -> (bool, bool, bool, u32, u32, Vec<u8>) {
    assert_eq!(&f[0..6], &GUEST_MAC);
    assert_eq!(&f[6..12], &MMDS_MAC);
    let ip = Ipv4Packet::new_checked(&f[ETH_HDR..]).unwrap();
    assert!(ip.verify_checksum());
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(t.verify_checksum(&IpAddress::Ipv4(MMDS_IP), &IpAddress::Ipv4(GUEST_IP)));
    (
        t.syn(),
        t.fin(),
        t.rst(),
        t.seq_number().0 as u32,
        t.ack_number().0 as u32,
        t.payload().to_vec(),
    )
}

/// Opens a connection from `port`; returns (our next seq, their next seq).
fn connect(st: &mut MmdsStack, port: u16) -> (u32, u32) {
    send(
        st,
        tcp_frame(
            port,
            &Seg {
                syn: true,
                seq: 1000,
                ..Default::default()
            },
        ),
    );
    // (A flood's victim may get its RST first.)
    let frames: Vec<_> = drain(st)
        .into_iter()
        .filter(|f| TcpPacket::new_unchecked(&f[ETH_HDR + 20..]).dst_port() == port)
        .collect();
    assert_eq!(frames.len(), 1);
    let (syn, _, rst, seq, ack, _) = parse_seg(&frames[0]);
    assert!(syn && !rst, "no SYN-ACK");
    assert_eq!(ack, 1001);
    let theirs = seq.wrapping_add(1);
    send(
        st,
        tcp_frame(
            port,
            &Seg {
                seq: 1001,
                ack: Some(theirs),
                ..Default::default()
            },
        ),
    );
    (1001, theirs)
}

/// Sends `req` on the connection and returns the answer's bytes (read
/// until a whole answer has come, by its Content-Length).
fn ask(st: &mut MmdsStack, port: u16, seq: &mut u32, theirs: &mut u32, req: &str) -> String {
    send(
        st,
        tcp_frame(
            port,
            &Seg {
                seq: *seq,
                ack: Some(*theirs),
                payload: req.as_bytes().to_vec(),
                ..Default::default()
            },
        ),
    );
    *seq += req.len() as u32;
    let mut got = Vec::new();
    for _ in 0..10 {
        for f in drain(st) {
            let (_, _, rst, s, _, payload) = parse_seg(&f);
            assert!(!rst);
            if s == *theirs && !payload.is_empty() {
                *theirs = theirs.wrapping_add(payload.len() as u32);
                got.extend_from_slice(&payload);
            }
        }
        send(
            st,
            tcp_frame(
                port,
                &Seg {
                    seq: *seq,
                    ack: Some(*theirs),
                    ..Default::default()
                },
            ),
        );
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            if body.len() >= len {
                return text;
            }
        }
    }
    panic!("no whole answer: {:?}", String::from_utf8_lossy(&got));
}

#[test]
fn arp_for_the_mmds_address_is_answered() {
    let mut st = stack(MmdsVersion::V2);
    let mut f = vec![0u8; 42];
    write_eth(&mut f, [0xff; 6], GUEST_MAC, ETHERTYPE_ARP);
    f[ETH_HDR..ETH_HDR + 8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[ETH_HDR + 8..ETH_HDR + 14].copy_from_slice(&GUEST_MAC);
    f[ETH_HDR + 14..ETH_HDR + 18].copy_from_slice(&GUEST_IP.octets());
    f[ETH_HDR + 24..ETH_HDR + 28].copy_from_slice(&MMDS_IP.octets());
    send(&mut st, f);
    assert!(st.has_output());
    let out = drain(&mut st);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0][ETH_HDR + 8..ETH_HDR + 14], &MMDS_MAC);
    assert_eq!(&out[0][ETH_HDR + 24..ETH_HDR + 28], &GUEST_IP.octets());
    // Another address is not MMDS's business.
    let mut other = out[0].clone();
    other[ETH_HDR + 24..ETH_HDR + 28].copy_from_slice(&[10, 0, 0, 1]);
    other[ETH_HDR + 7] = 1;
    assert!(!st.is_mmds_frame(&other));
}

#[test]
fn token_then_get_on_one_connection() {
    let mut st = stack(MmdsVersion::V2);
    let (mut seq, mut theirs) = connect(&mut st, 40000);
    let t = ask(
        &mut st,
        40000,
        &mut seq,
        &mut theirs,
        "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
    );
    assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
    let token = t.split_once("\r\n\r\n").unwrap().1.to_string();
    let r = ask(
        &mut st,
        40000,
        &mut seq,
        &mut theirs,
        "GET /latest/meta-data/id HTTP/1.1\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = ask(
        &mut st,
        40000,
        &mut seq,
        &mut theirs,
        &format!("GET /latest/meta-data/id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\ni-0123"), "{r}");
    // The guest closes; MMDS answers with its own FIN.
    send(
        &mut st,
        tcp_frame(
            40000,
            &Seg {
                fin: true,
                seq,
                ack: Some(theirs),
                ..Default::default()
            },
        ),
    );
    let fins: Vec<_> = drain(&mut st).iter().map(|f| parse_seg(f).1).collect();
    assert!(fins.contains(&true), "no FIN");
    send(
        &mut st,
        tcp_frame(
            40000,
            &Seg {
                seq: seq + 1,
                ack: Some(theirs + 1),
                ..Default::default()
            },
        ),
    );
    drain(&mut st);
    assert_eq!(st.connections(), 0, "the closed connection is forgotten");
}

#[test]
fn a_request_over_the_limit_gets_413_and_a_close() {
    let mut st = stack(MmdsVersion::V1);
    let (mut seq, mut theirs) = connect(&mut st, 40001);
    let mut big = "GET /".to_string();
    big.push_str(&"a".repeat(3000));
    let r = ask(&mut st, 40001, &mut seq, &mut theirs, &big);
    assert!(r.starts_with("HTTP/1.1 413 "), "{r}");
    assert!(r.contains("Connection: close"), "{r}");
}

#[test]
fn malformed_frames_are_counted_and_dropped() {
    let mut st = stack(MmdsVersion::V1);
    let err0 = METRICS.mmds.rx_accepted_err.get();
    let unusual0 = METRICS.mmds.rx_accepted_unusual.get();
    let good = tcp_frame(
        40002,
        &Seg {
            syn: true,
            seq: 5,
            ..Default::default()
        },
    );
    // A bad TCP checksum, a bad IPv4 checksum, a fragment, a truncated
    // packet, a total length past the frame, UDP.
    let mut bad_tcp = good.clone();
    let last = bad_tcp.len() - 1;
    bad_tcp[last] ^= 0xff;
    let mut bad_ip = good.clone();
    bad_ip[ETH_HDR + 10] ^= 0xff;
    let mut frag = good.clone();
    frag[ETH_HDR + 6] = 0x20;
    let short = good[..ETH_HDR + 24].to_vec();
    let mut long = good.clone();
    long[ETH_HDR + 2] = 0x40;
    let mut udp = good.clone();
    udp[ETH_HDR + 9] = 17;
    Ipv4Packet::new_unchecked(&mut udp[ETH_HDR..]).fill_checksum();
    for f in [bad_tcp, bad_ip, frag, short, long] {
        send(&mut st, f);
    }
    send(&mut st, udp);
    assert!(drain(&mut st).is_empty(), "no answer to malformed frames");
    assert_eq!(st.connections(), 0);
    assert!(METRICS.mmds.rx_accepted_err.get() >= err0 + 4);
    assert!(METRICS.mmds.rx_accepted_unusual.get() > unusual0);
    // Random bytes addressed to MMDS never panic.
    let mut x = 0x1234_5678u32;
    for len in 0..200 {
        let mut f = good.clone();
        f.truncate(ETH_HDR + 20 + len % 60);
        for b in f[ETH_HDR + 20..].iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        send(&mut st, f);
        drain(&mut st);
    }
}

#[test]
fn a_syn_flood_cannot_lock_out_a_good_client() {
    let mut st = stack(MmdsVersion::V1);
    for port in 2000..2100 {
        send(
            &mut st,
            tcp_frame(
                port,
                &Seg {
                    syn: true,
                    seq: 7,
                    ..Default::default()
                },
            ),
        );
        drain(&mut st);
        assert!(st.connections() <= MAX_CONNECTIONS);
    }
    assert_eq!(st.connections(), MAX_CONNECTIONS);
    let (mut seq, mut theirs) = connect(&mut st, 40003);
    let r = ask(
        &mut st,
        40003,
        &mut seq,
        &mut theirs,
        "GET /latest/meta-data/id HTTP/1.0\r\n\r\n",
    );
    assert!(
        r.starts_with("HTTP/1.0 200 OK\r\n") && r.ends_with("i-0123"),
        "{r}"
    );
}
