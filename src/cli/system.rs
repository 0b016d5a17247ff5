//! `husk info` and `husk events`.

use std::io::Write;

use clap::Args;

use super::format;
use super::report;
use crate::client::types::{Event, Info};
use crate::client::DaemonClient;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Output format: `table` (Docker's layout) or `json`.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Output format: `table` (a line per event) or `json` (one object a line).
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

/// `husk info` as text, in Docker's layout.
pub fn render_info(info: &Info, socket: &std::path::Path) -> String {
    let mut s = String::new();
    s.push_str("Client:\n");
    s.push_str(&format!(" Version:    {}\n", env!("CARGO_PKG_VERSION")));
    s.push_str(&format!(
        " Socket:     {}\n",
        crate::text::echo_path(socket)
    ));
    s.push_str("\nServer:\n");
    s.push_str(&format!(" Containers: {}\n", info.containers));
    s.push_str(&format!("  Running: {}\n", info.running));
    s.push_str(&format!(
        "  Stopped: {}\n",
        info.containers.saturating_sub(info.running)
    ));
    s.push_str(&format!(" Images: {}\n", info.images));
    s.push_str(&format!(" Server Version: {}\n", info.version));
    s.push_str(&format!(" Backend: {}\n", info.backend));
    if let Some(r) = &info.fallback_reason {
        s.push_str(&format!(" Fallback Reason: {r}\n"));
    }
    s.push_str(&format!(" Virtualization: {}\n", info.virtualization));
    s.push_str(&format!(" Kernel: {}\n", info.kernel));
    match &info.networking_off {
        Some(why) => s.push_str(&format!(" Networks: off ({why})\n")),
        None => s.push_str(&format!(" Networks: {}\n", info.networks.join(" "))),
    }
    if !info.state_dir.is_empty() {
        s.push_str(&format!(" State Dir: {}\n", info.state_dir));
    }
    s
}

pub async fn info(client: &DaemonClient, args: InfoArgs) -> i32 {
    match client.info().await {
        Ok(i) if args.format == "json" => {
            println!("{}", serde_json::to_string(&i).unwrap_or_default());
            0
        }
        Ok(i) => {
            print!("{}", render_info(&i, client.socket()));
            0
        }
        Err(e) => {
            report(e);
            1
        }
    }
}

/// One event as Docker prints it:
/// `TIME container ACTION ID (name=NAME, exitCode=N)`.
pub fn render_event(e: &Event) -> String {
    let mut attrs = format!("name={}", e.name);
    if let Some(c) = e.exit_code {
        attrs.push_str(&format!(", exitCode={c}"));
    }
    format!(
        "{} container {} {} ({attrs})",
        format::rfc3339_nanos(e.time_ms),
        e.action,
        e.id
    )
}

pub async fn events(client: &DaemonClient, args: EventsArgs) -> i32 {
    let mut stream = match client.events().await {
        Ok(s) => s,
        Err(e) => {
            report(e);
            return 1;
        }
    };
    let mut out = std::io::stdout();
    loop {
        match stream.next().await {
            Ok(Some(e)) => {
                let line = if args.format == "json" {
                    serde_json::to_string(&e).unwrap_or_default()
                } else {
                    render_event(&e)
                };
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return 0;
                }
            }
            Ok(None) => return 0,
            Err(e) => {
                report(e);
                return 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::types::Backend;

    #[test]
    fn info_text() {
        let i = Info {
            version: "0.1.0".into(),
            backend: Backend::Tcg,
            fallback_reason: Some("no VT-x".into()),
            kernel: "/var/lib/husk/vmlinux".into(),
            virtualization: "pvm".into(),
            containers: 3,
            running: 1,
            images: 2,
            state_dir: "/var/lib/husk".into(),
            networks: vec!["bridge".into(), "front".into()],
            networking_off: None,
        };
        let t = render_info(&i, std::path::Path::new("/run/husk/husk.sock"));
        assert!(t.contains(" Socket:     /run/husk/husk.sock\n"), "{t}");
        assert!(
            t.contains(" Containers: 3\n  Running: 1\n  Stopped: 2\n Images: 2\n"),
            "{t}"
        );
        assert!(
            t.contains(" Backend: tcg\n Fallback Reason: no VT-x\n"),
            "{t}"
        );
        assert!(t.contains(" Networks: bridge front\n"), "{t}");
        let off = Info {
            networks: vec![],
            networking_off: Some("not root".into()),
            ..i
        };
        let t = render_info(&off, std::path::Path::new("/s"));
        assert!(t.contains(" Networks: off (not root)\n"), "{t}");
    }

    #[test]
    fn event_lines() {
        let e = Event {
            time_ms: 1_700_000_000_000,
            id: "ab".repeat(32),
            name: "web".into(),
            action: "die".into(),
            exit_code: Some(0),
        };
        assert_eq!(
            render_event(&e),
            format!(
                "2023-11-14T22:13:20.000000000Z container die {} (name=web, exitCode=0)",
                "ab".repeat(32)
            )
        );
    }
}
