//! The verbs that act on containers by id: `start`, `stop`, `restart`,
//! `kill`, `rm`, `wait`, `inspect`. Each takes several ids, goes on past a failure, and
//! exits 1 if any failed (as Docker does).

use clap::Args;

use super::{parse, report};
use crate::client::DaemonClient;

#[derive(Args, Debug)]
pub struct IdsArgs {
    /// Containers: ids, id prefixes or names.
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before powering the VM off.
    #[arg(short = 't', long = "time", visible_alias = "timeout")]
    pub time: Option<u64>,
    /// Containers: ids, id prefixes or names.
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal to send: a number or a name (KILL, SIGTERM, ...).
    #[arg(short, long, default_value = "KILL", value_parser = parse::signal)]
    pub signal: i32,
    /// Containers: ids, id prefixes or names.
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Force the removal of a running container (kills it).
    #[arg(short, long)]
    pub force: bool,
    /// Remove the container's anonymous volumes too.
    #[arg(short, long)]
    pub volumes: bool,
    /// Containers: ids, id prefixes or names.
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// Runs `f` for each id in turn; prints what it returns, or the error.
async fn each<F, Fut>(ids: &[String], mut f: F) -> i32
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<String, crate::client::ClientError>>,
{
    let mut code = 0;
    for id in ids {
        match f(id.clone()).await {
            Ok(line) => println!("{line}"),
            Err(e) => {
                report(e);
                code = 1;
            }
        }
    }
    code
}

pub async fn start(client: &DaemonClient, args: IdsArgs) -> i32 {
    each(&args.containers, |id| async move {
        client.start(&id).await.map(|()| id)
    })
    .await
}

pub async fn stop(client: &DaemonClient, args: StopArgs) -> i32 {
    let time = args.time;
    each(&args.containers, |id| async move {
        client.stop(&id, time).await.map(|()| id)
    })
    .await
}

pub async fn restart(client: &DaemonClient, args: StopArgs) -> i32 {
    let time = args.time;
    each(&args.containers, |id| async move {
        // A --rm container is removed once it stops: refused before the
        // stop, rather than stopped and gone.
        if client.inspect(&id).await?.config.auto_remove {
            return Err(crate::client::ClientError::Local {
                path: id,
                err: "was run with --rm: it is removed when it stops, so it cannot be restarted"
                    .into(),
            });
        }
        client.stop(&id, time).await?;
        client.start(&id).await.map(|()| id)
    })
    .await
}

pub async fn kill(client: &DaemonClient, args: KillArgs) -> i32 {
    let signal = args.signal;
    each(&args.containers, |id| async move {
        client.kill(&id, signal).await.map(|()| id)
    })
    .await
}

pub async fn rm(client: &DaemonClient, args: RmArgs) -> i32 {
    let (force, volumes) = (args.force, args.volumes);
    each(&args.containers, |id| async move {
        client.remove_with(&id, force, volumes).await.map(|()| id)
    })
    .await
}

pub async fn wait(client: &DaemonClient, args: IdsArgs) -> i32 {
    each(&args.containers, |id| async move {
        client.wait(&id).await.map(|w| w.exit_code.to_string())
    })
    .await
}

pub async fn inspect(client: &DaemonClient, args: IdsArgs) -> i32 {
    let mut found = Vec::new();
    let mut code = 0;
    for id in &args.containers {
        match client.inspect(id).await {
            Ok(r) => found.push(r),
            Err(e) => {
                report(e);
                code = 1;
            }
        }
    }
    println!("{}", pretty_json(&found));
    code
}

/// JSON indented by 4 spaces, as Docker prints `inspect`.
pub fn pretty_json<T: serde::Serialize>(v: &T) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    match v.serialize(&mut ser) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(e) => format!("\"cannot encode: {e}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::parse as parse_args;
    use crate::cli::Verb;

    #[test]
    fn arguments() {
        match parse_args(&["kill", "-s", "SIGTERM", "a", "b"]).unwrap() {
            Verb::Kill(k) => {
                assert_eq!(k.signal, 15);
                assert_eq!(k.containers, ["a", "b"]);
            }
            other => panic!("{other:?}"),
        }
        match parse_args(&["kill", "a"]).unwrap() {
            Verb::Kill(k) => assert_eq!(k.signal, 9),
            other => panic!("{other:?}"),
        }
        match parse_args(&["kill", "--signal", "1", "a"]).unwrap() {
            Verb::Kill(k) => assert_eq!(k.signal, 1),
            other => panic!("{other:?}"),
        }
        assert!(parse_args(&["kill", "-s", "BOGUS", "a"]).is_err());
        match parse_args(&["stop", "-t", "3", "a"]).unwrap() {
            Verb::Stop(s) => assert_eq!(s.time, Some(3)),
            other => panic!("{other:?}"),
        }
        match parse_args(&["stop", "--timeout", "0", "a"]).unwrap() {
            Verb::Stop(s) => assert_eq!(s.time, Some(0)),
            other => panic!("{other:?}"),
        }
        match parse_args(&["rm", "-f", "a"]).unwrap() {
            Verb::Rm(r) => assert!(r.force),
            other => panic!("{other:?}"),
        }
        assert!(parse_args(&["rm"]).is_err());
        assert!(parse_args(&["wait"]).is_err());
        assert!(parse_args(&["inspect"]).is_err());
    }

    #[test]
    fn inspect_json_is_indented_by_four() {
        let v = serde_json::json!([{"id": "a"}]);
        assert_eq!(pretty_json(&v), "[\n    {\n        \"id\": \"a\"\n    }\n]");
        let empty: Vec<u8> = vec![];
        assert_eq!(pretty_json(&empty), "[]");
    }
}
