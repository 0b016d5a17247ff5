//! The router driven in process: HTTP in, actions out, answers mapped
//! to status codes. The VMM thread's side is played by a thread that
//! records each action and answers it.

use super::*;
use crate::vmm::rpc::{channel_pair, VmmActionError};
use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

/// Runs `f` against a router whose VMM side answers with `answer`;
/// returns the actions the VMM side saw.
fn with_router(
    answer: fn(&VmmAction) -> VmmReply,
    f: impl FnOnce(Router) -> Vec<(u16, serde_json::Value)>,
) -> (Vec<(u16, serde_json::Value)>, Vec<String>) {
    let (tx, rx) = channel_pair().unwrap();
    let vmm_side = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while let Ok(req) = rx.rx.recv() {
            seen.push(format!("{:?}", req.action));
            req.serve(|a| answer(&a));
        }
        seen
    });
    let results = f(router(tx));
    (results, vmm_side.join().unwrap())
}

fn send(router: &Router, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body.to_string()))
            .unwrap();
        let r = router.clone().oneshot(req).await.unwrap();
        let status = r.status().as_u16();
        let bytes = axum::body::to_bytes(r.into_body(), MAX_BODY).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    })
}

#[test]
fn requests_become_actions_and_answers_become_status_codes() {
    let (results, seen) = with_router(
        |a| match a {
            VmmAction::GetVmInfo => Ok(VmmData::Json(serde_json::json!({"id": "x"}))),
            VmmAction::InstanceStart => Err(VmmActionError::NoKernel),
            _ => Ok(VmmData::Empty),
        },
        |r| {
            vec![
                send(&r, "GET", "/", ""),
                send(
                    &r,
                    "PUT",
                    "/machine-config",
                    r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
                ),
                send(&r, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
                send(&r, "PATCH", "/vm", r#"{"state": "Paused"}"#),
            ]
        },
    );
    assert_eq!(results[0], (200, serde_json::json!({"id": "x"})));
    assert_eq!(results[1].0, 204);
    assert_eq!(results[2].0, 400);
    assert!(results[2].1["fault_message"]
        .as_str()
        .unwrap()
        .contains("PUT /boot-source first"));
    assert_eq!(results[3].0, 204);
    assert_eq!(seen.len(), 4);
    assert!(seen[1].starts_with("PutMachineConfig"), "{seen:?}");
    assert_eq!(seen[3], "Pause");
}

#[test]
fn bad_requests_never_reach_the_vmm() {
    let (results, seen) = with_router(
        |_| Ok(VmmData::Empty),
        |r| {
            vec![
                send(&r, "PUT", "/machine-config", "{\"vcpu_count\": "),
                send(&r, "PUT", "/machine-config", "[1]"),
                send(&r, "PUT", "/boot-source", ""),
                send(&r, "PUT", "/actions", r#"{"action_type": "Explode"}"#),
                send(&r, "DELETE", "/boot-source", ""),
                send(&r, "GET", "/no/such/path", ""),
            ]
        },
    );
    for (status, body) in &results {
        assert_eq!(*status, 400, "{body}");
        assert!(body["fault_message"].is_string(), "{body}");
    }
    assert!(seen.is_empty(), "{seen:?}");
}

#[test]
fn fs_devices_become_actions_with_the_path_tag() {
    let (results, seen) = with_router(
        |_| Ok(VmmData::Empty),
        |r| {
            vec![
                send(
                    &r,
                    "PUT",
                    "/fs/share",
                    r#"{"tag": "share", "socket_path": "/run/fs.sock"}"#,
                ),
                // Never reach the VMM: a missing field, an unknown
                // one, no tag in the path, a PATCH.
                send(&r, "PUT", "/fs/share", r#"{"tag": "share"}"#),
                send(
                    &r,
                    "PUT",
                    "/fs/share",
                    r#"{"tag": "share", "socket_path": "/s", "dax": true}"#,
                ),
                send(&r, "PUT", "/fs", r#"{"tag": "a", "socket_path": "/s"}"#),
                send(&r, "PATCH", "/fs/share", r#"{"tag": "share"}"#),
            ]
        },
    );
    let codes: Vec<_> = results.iter().map(|r| r.0).collect();
    assert_eq!(codes, vec![204, 400, 400, 400, 400], "{results:?}");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with("PutFs(\"share\", FsConfig { tag: \"share\""),
        "{seen:?}"
    );
    assert!(
        seen[0].contains("num_queues: 1, queue_size: 1024"),
        "{seen:?}"
    );
}

#[test]
fn balloon_requests_become_actions() {
    let (results, seen) = with_router(
        |a| match a {
            VmmAction::GetBalloonStats => Ok(VmmData::Json(
                serde_json::json!({"target_pages": 256, "actual_pages": 0,
                                   "target_mib": 1, "actual_mib": 0}),
            )),
            VmmAction::PatchBalloonStats(_) => Err(VmmActionError::Config(
                crate::vmm::config::ConfigError::BalloonStatsChange,
            )),
            _ => Ok(VmmData::Empty),
        },
        |r| {
            vec![
                send(
                    &r,
                    "PUT",
                    "/balloon",
                    r#"{"amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#,
                ),
                send(&r, "GET", "/balloon", ""),
                send(&r, "PATCH", "/balloon", r#"{"amount_mib": 32}"#),
                send(&r, "GET", "/balloon/statistics", ""),
                send(
                    &r,
                    "PATCH",
                    "/balloon/statistics",
                    r#"{"stats_polling_interval_s": 0}"#,
                ),
                // Never reach the VMM: a missing field, an unknown
                // one, a negative target, a PUT of statistics.
                send(&r, "PUT", "/balloon", r#"{"amount_mib": 16}"#),
                send(
                    &r,
                    "PATCH",
                    "/balloon",
                    r#"{"amount_mib": 1, "deflate_on_oom": true}"#,
                ),
                send(&r, "PATCH", "/balloon", r#"{"amount_mib": -1}"#),
                send(
                    &r,
                    "PUT",
                    "/balloon/statistics",
                    r#"{"stats_polling_interval_s": 1}"#,
                ),
            ]
        },
    );
    let codes: Vec<_> = results.iter().map(|r| r.0).collect();
    assert_eq!(
        codes,
        vec![204, 204, 204, 200, 400, 400, 400, 400, 400],
        "{results:?}"
    );
    assert_eq!(results[3].1["target_mib"], 1);
    assert!(results[4].1["fault_message"]
        .as_str()
        .unwrap()
        .contains("cannot be enabled or disabled after the microVM started"));
    assert!(results[5].1["fault_message"]
        .as_str()
        .unwrap()
        .contains("missing field `deflate_on_oom`"));
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(
        seen[0].starts_with("PutBalloon(BalloonConfig { amount_mib: 16, deflate_on_oom: true, stats_polling_interval_s: 1"),
        "{seen:?}"
    );
    assert_eq!(seen[1], "GetBalloon");
    assert_eq!(seen[2], "PatchBalloon(BalloonUpdate { amount_mib: 32 })");
    assert_eq!(seen[3], "GetBalloonStats");
    assert!(seen[4].starts_with("PatchBalloonStats"), "{seen:?}");
}

#[test]
fn pmem_and_memory_hotplug_requests_become_actions() {
    let (results, seen) = with_router(
        |a| match a {
            VmmAction::GetMemoryHotplug => Ok(VmmData::Json(serde_json::json!({
                "total_size_mib": 256, "slot_size_mib": 128, "block_size_mib": 2,
                "plugged_size_mib": 4, "requested_size_mib": 8}))),
            _ => Ok(VmmData::Empty),
        },
        |r| {
            vec![
                send(
                    &r,
                    "PUT",
                    "/pmem/p0",
                    r#"{"id": "p0", "path_on_host": "/img", "root_device": true}"#,
                ),
                send(
                    &r,
                    "PATCH",
                    "/pmem/p0",
                    r#"{"id": "p0", "rate_limiter": {"ops": {"size": 1, "refill_time": 10}}}"#,
                ),
                send(&r, "PUT", "/hotplug/memory", r#"{"total_size_mib": 256}"#),
                send(&r, "GET", "/hotplug/memory", ""),
                send(
                    &r,
                    "PATCH",
                    "/hotplug/memory",
                    r#"{"requested_size_mib": 8}"#,
                ),
                // Never reach the VMM: missing or unknown fields,
                // a negative size, a method the path lacks.
                send(&r, "PUT", "/pmem/p0", r#"{"id": "p0"}"#),
                send(
                    &r,
                    "PATCH",
                    "/pmem/p0",
                    r#"{"id": "p0", "path_on_host": "/x"}"#,
                ),
                send(&r, "PUT", "/hotplug/memory", r#"{"slot_size_mib": 128}"#),
                send(
                    &r,
                    "PATCH",
                    "/hotplug/memory",
                    r#"{"requested_size_mib": -2}"#,
                ),
                send(&r, "PATCH", "/hotplug/memory", r#"{}"#),
            ]
        },
    );
    let codes: Vec<_> = results.iter().map(|r| r.0).collect();
    assert_eq!(
        codes,
        vec![204, 204, 204, 200, 204, 400, 400, 400, 400, 400],
        "{results:?}"
    );
    assert_eq!(results[3].1["plugged_size_mib"], 4);
    assert!(results[5].1["fault_message"]
        .as_str()
        .unwrap()
        .contains("missing field `path_on_host`"));
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(
        seen[0].starts_with("PutPmem(\"p0\", PmemConfig { id: \"p0\""),
        "{seen:?}"
    );
    assert!(seen[1].starts_with("PatchPmem(\"p0\""), "{seen:?}");
    assert!(seen[2].starts_with("PutMemoryHotplug(MemoryHotplugConfig { total_size_mib: 256, block_size_mib: 2, slot_size_mib: 128"), "{seen:?}");
    assert_eq!(seen[3], "GetMemoryHotplug");
    assert_eq!(
        seen[4],
        "PatchMemoryHotplug(MemoryHotplugSizeUpdate { requested_size_mib: 8 })"
    );
}

#[test]
fn network_interfaces_become_actions_with_the_path_id() {
    let (results, seen) = with_router(
        |_| Ok(VmmData::Empty),
        |r| {
            vec![
                send(
                    &r,
                    "PUT",
                    "/network-interfaces/eth0",
                    r#"{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 1400}"#,
                ),
                send(
                    &r,
                    "PATCH",
                    "/network-interfaces/eth0",
                    r#"{"iface_id": "eth0"}"#,
                ),
                // Never reach the VMM: a missing field, an unknown one.
                send(
                    &r,
                    "PUT",
                    "/network-interfaces/eth0",
                    r#"{"iface_id": "eth0"}"#,
                ),
                send(
                    &r,
                    "PATCH",
                    "/network-interfaces/eth0",
                    r#"{"iface_id": "eth0", "host_dev_name": "tap1"}"#,
                ),
            ]
        },
    );
    let codes: Vec<_> = results.iter().map(|r| r.0).collect();
    assert_eq!(codes, vec![204, 204, 400, 400], "{results:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0].starts_with("PutNetworkInterface(\"eth0\", NetworkInterfaceConfig"),
        "{seen:?}"
    );
    assert!(
        seen[1].starts_with("PatchNetworkInterface(\"eth0\""),
        "{seen:?}"
    );
}

#[test]
fn mmds_requests_become_actions_and_413s() {
    use crate::vmm::mmds::data_store::DataStoreError;
    use crate::vmm::mmds::MmdsError;
    let (results, seen) = with_router(
        |a| match a {
            VmmAction::PatchMmds(_) => Err(VmmActionError::Mmds(MmdsError::DataStore(
                DataStoreError::TooLarge { size: 9, limit: 1 },
            ))),
            VmmAction::GetMmds => Ok(VmmData::Json(serde_json::json!({}))),
            _ => Ok(VmmData::Empty),
        },
        |r| {
            vec![
                send(&r, "PUT", "/mmds", r#"["any", "json"]"#),
                send(&r, "PATCH", "/mmds", r#"{"a": null}"#),
                send(&r, "GET", "/mmds", ""),
                send(
                    &r,
                    "PUT",
                    "/mmds/config",
                    r#"{"network_interfaces": ["eth0"], "version": "V2"}"#,
                ),
                // Never reach the VMM: not JSON, no body, a bad config.
                send(&r, "PUT", "/mmds", "{"),
                send(&r, "PATCH", "/mmds", ""),
                send(
                    &r,
                    "PUT",
                    "/mmds/config",
                    r#"{"network_interfaces": ["eth0"], "ipv4_address": 7}"#,
                ),
            ]
        },
    );
    let codes: Vec<_> = results.iter().map(|r| r.0).collect();
    assert_eq!(
        codes,
        vec![204, 413, 200, 204, 400, 400, 400],
        "{results:?}"
    );
    assert!(results[1].1["fault_message"]
        .as_str()
        .unwrap()
        .contains("over its limit"));
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[0].starts_with("PutMmds(Array"), "{seen:?}");
    assert!(seen[3].contains("version: V2"), "{seen:?}");
}

#[test]
fn a_v1_mmds_config_is_answered_as_deprecated() {
    let (tx, rx) = channel_pair().unwrap();
    let vmm_side = std::thread::spawn(move || {
        while let Ok(req) = rx.rx.recv() {
            req.serve(|_| Ok(VmmData::Empty));
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let router = router(tx);
    let deprecation = |body: &str| {
        let req = Request::builder()
            .method("PUT")
            .uri("/mmds/config")
            .body(Body::from(body.to_string()))
            .unwrap();
        let r = rt.block_on(router.clone().oneshot(req)).unwrap();
        assert_eq!(r.status(), 204);
        r.headers().get("Deprecation").cloned()
    };
    assert_eq!(
        deprecation(r#"{"network_interfaces": ["eth0"]}"#).unwrap(),
        "true"
    );
    assert!(deprecation(r#"{"network_interfaces": ["eth0"], "version": "V2"}"#).is_none());
    drop(router);
    vmm_side.join().unwrap();
}
