//! `husk ps`: list containers.

use clap::Args;

use super::format::{self, Table};
use crate::client::types::{ContainerRecord, ContainerState, ListOptions};
use crate::client::DaemonClient;

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show all containers (default: running ones only).
    #[arg(short, long)]
    pub all: bool,
    /// Only display container IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Output format: `table` or `json` (one object a line).
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Filter: `state=running|exited|created|starting|dead` (or
    /// `status=...`), `label=key` or `label=key=value`, `name=...`,
    /// `id=...`. Repeated filters of one kind match any; of different
    /// kinds, all.
    #[arg(short, long = "filter", value_name = "FILTER")]
    pub filter: Vec<String>,
}

/// What `-f` asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub states: Vec<ContainerState>,
    pub labels: Vec<String>,
    pub names: Vec<String>,
    pub ids: Vec<String>,
}

impl Filters {
    pub fn parse(items: &[String]) -> Result<Filters, String> {
        let mut f = Filters::default();
        for item in items {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("bad format of filter {item:?} (expected name=value)"))?;
            match k {
                "state" | "status" => f.states.push(ContainerState::parse(v).ok_or_else(|| {
                    format!(
                        "invalid filter '{k}={v}': the states are created, starting, running, \
                         exited and dead"
                    )
                })?),
                "label" if !v.is_empty() => f.labels.push(v.to_string()),
                "name" => f.names.push(v.to_string()),
                "id" => f.ids.push(v.to_string()),
                _ => return Err(format!("invalid filter '{item}'")),
            }
        }
        Ok(f)
    }

    /// What to ask the daemon: it filters by one state and one label;
    /// the rest is filtered here. A state filter implies `--all`, as in
    /// Docker.
    pub fn list_options(&self, all: bool) -> ListOptions {
        ListOptions {
            all: all || !self.states.is_empty(),
            state: match self.states.as_slice() {
                [one] => Some(*one),
                _ => None,
            },
            label: self.labels.first().cloned(),
        }
    }

    pub fn matches(&self, r: &ContainerRecord) -> bool {
        let label_ok = |l: &String| match l.split_once('=') {
            Some((k, v)) => r.config.labels.get(k).is_some_and(|x| x == v),
            None => r.config.labels.contains_key(l),
        };
        (self.states.is_empty() || self.states.contains(&r.state))
            && self.labels.iter().all(label_ok)
            && (self.names.is_empty() || self.names.iter().any(|n| r.name.contains(n.as_str())))
            && (self.ids.is_empty() || self.ids.iter().any(|i| r.id.starts_with(i.as_str())))
    }
}

pub async fn ps(client: &DaemonClient, args: PsArgs) -> i32 {
    let filters = match Filters::parse(&args.filter) {
        Ok(f) => f,
        Err(e) => {
            super::report(e);
            return 1;
        }
    };
    let mut list = match client.list(&filters.list_options(args.all)).await {
        Ok(l) => l,
        Err(e) => {
            super::report(e);
            return 1;
        }
    };
    list.retain(|r| filters.matches(r));
    // Newest first, as Docker lists them.
    list.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
    print!("{}", render(&list, &args, format::now_ms()));
    0
}

/// The whole output of `ps` for these records.
pub fn render(list: &[ContainerRecord], args: &PsArgs, now_ms: u64) -> String {
    let id = |r: &ContainerRecord| {
        if args.no_trunc {
            r.id.clone()
        } else {
            format::short_id(&r.id).to_string()
        }
    };
    if args.quiet {
        return list.iter().map(|r| id(r) + "\n").collect();
    }
    if args.format == "json" {
        return list
            .iter()
            .map(|r| serde_json::to_string(r).unwrap_or_default() + "\n")
            .collect();
    }
    let mut t = Table::new(&[
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ]);
    for r in list {
        let cmd = format::command_line(r);
        let cmd = if args.no_trunc {
            cmd
        } else {
            format::ellipsis(&cmd, 20)
        };
        t.row(vec![
            id(r),
            r.image.clone(),
            format::quote(&cmd),
            format::ago(r.created_ms, now_ms),
            format::status(r, now_ms),
            r.network
                .iter()
                .flat_map(|n| n.ports.iter().map(|p| p.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
            r.name.clone(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::parse;
    use crate::cli::Verb;
    use crate::client::types::CreateRequest;

    fn args(a: &[&str]) -> PsArgs {
        let mut v = vec!["ps"];
        v.extend_from_slice(a);
        match parse(&v).unwrap() {
            Verb::Ps(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn rec(id: &str, name: &str, state: ContainerState) -> ContainerRecord {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("team".to_string(), "a".to_string());
        ContainerRecord {
            id: id.repeat(64 / id.len()),
            name: name.into(),
            image: "busybox".into(),
            config: CreateRequest {
                image: "busybox".into(),
                cmd: Some(vec!["sleep".into(), "1000".into()]),
                labels,
                ..Default::default()
            },
            state,
            exit_code: (state == ContainerState::Exited).then_some(0),
            signal: None,
            error: None,
            created_ms: 10_000,
            started_ms: Some(11_000),
            finished_ms: (state == ContainerState::Exited).then_some(12_000),
            backend: None,
            pids: vec![],
            vcpus: 1,
            memory_mib: 256,
            guest_pid: None,
            network: None,
        }
    }

    #[test]
    fn table() {
        let mut web = rec("a1", "web", ContainerState::Running);
        web.network = Some(crate::client::types::NetworkSettings {
            network: "bridge".into(),
            ip_address: "172.20.0.2".parse().unwrap(),
            prefix_len: 16,
            gateway: "172.20.0.1".parse().unwrap(),
            mac_address: "02:42:ac:14:00:02".into(),
            tap: "htap0123456789a".into(),
            ports: vec![
                "8080:80".parse().unwrap(),
                "127.0.0.1:53:53/udp".parse().unwrap(),
            ],
        });
        let list = [web, rec("b2", "job", ContainerState::Exited)];
        let out = render(&list, &args(&["-a"]), 15_000);
        assert_eq!(
            out,
            "CONTAINER ID   IMAGE     COMMAND        CREATED         STATUS                     PORTS                                        NAMES\n\
             a1a1a1a1a1a1   busybox   \"sleep 1000\"   5 seconds ago   Up 4 seconds               0.0.0.0:8080->80/tcp, 127.0.0.1:53->53/udp   web\n\
             b2b2b2b2b2b2   busybox   \"sleep 1000\"   5 seconds ago   Exited (0) 3 seconds ago                                                job\n"
        );
        assert_eq!(
            render(&list, &args(&["-q"]), 15_000),
            "a1a1a1a1a1a1\nb2b2b2b2b2b2\n"
        );
        assert_eq!(
            render(&list[..1], &args(&["-q", "--no-trunc"]), 15_000),
            format!("{}\n", "a1".repeat(32))
        );
        let json = render(&list[..1], &args(&["--format", "json"]), 15_000);
        let back: ContainerRecord = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(back, list[0]);
        assert!(parse(&["ps", "--format", "{{.ID}}"]).is_err());
    }

    #[test]
    fn filters() {
        let f = Filters::parse(&["state=exited".into(), "label=team=a".into()]).unwrap();
        assert_eq!(f.states, [ContainerState::Exited]);
        let o = f.list_options(false);
        assert!(o.all, "a state filter implies --all");
        assert_eq!(o.state, Some(ContainerState::Exited));
        assert_eq!(o.label.as_deref(), Some("team=a"));
        assert!(f.matches(&rec("b2", "job", ContainerState::Exited)));
        assert!(!f.matches(&rec("a1", "web", ContainerState::Running)));

        let f = Filters::parse(&["status=running".into(), "status=exited".into()]).unwrap();
        assert_eq!(f.list_options(false).state, None);
        assert!(f.matches(&rec("a1", "web", ContainerState::Running)));

        let f = Filters::parse(&["label=team".into(), "label=team=b".into()]).unwrap();
        assert!(!f.matches(&rec("a1", "web", ContainerState::Running)));
        let f = Filters::parse(&["name=we".into(), "id=a1a".into()]).unwrap();
        assert!(f.matches(&rec("a1", "web", ContainerState::Running)));

        assert!(Filters::parse(&["state=sleeping".into()]).is_err());
        assert!(Filters::parse(&["color=red".into()]).is_err());
        assert!(Filters::parse(&["state".into()]).is_err());
    }
}
