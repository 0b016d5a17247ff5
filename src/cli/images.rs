//! `husk images`, `husk pull`, `husk load` and `husk rmi`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};

use clap::Args;

use super::format::{self, Table};
use super::report;
use crate::client::types::{ImageSummary, PullEvent};
use crate::client::DaemonClient;

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Only show image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Output format: `table` or `json` (one object a line).
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// The image, e.g. `busybox`, `registry.example:5000/team/app:1.2`.
    pub reference: String,
    /// Suppress the progress output.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Read from this `docker save` or OCI archive instead of stdin.
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<std::path::PathBuf>,
    /// Name the image when the archive does not, or override its name.
    #[arg(long)]
    pub tag: Option<String>,
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Images: references.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

/// A canonical reference as Docker shows it: REPOSITORY (without
/// `docker.io/` and `library/`) and TAG (`<none>` for a digest only).
pub fn split_reference(reference: &str) -> (String, String) {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (
            &name[..last_slash + i],
            name[last_slash + i + 1..].to_string(),
        ),
        None => (
            name,
            if digest.is_some() {
                "<none>".into()
            } else {
                "latest".into()
            },
        ),
    };
    let repo = repo
        .strip_prefix("docker.io/library/")
        .or_else(|| repo.strip_prefix("docker.io/"))
        .unwrap_or(repo);
    (repo.to_string(), tag)
}

pub fn render(list: &[ImageSummary], args: &ImagesArgs) -> String {
    let id = |i: &ImageSummary| {
        if args.no_trunc {
            i.id.clone()
        } else {
            format::short_id(&i.id).to_string()
        }
    };
    if args.quiet {
        return list.iter().map(|i| id(i) + "\n").collect();
    }
    if args.format == "json" {
        return list
            .iter()
            .map(|i| serde_json::to_string(i).unwrap_or_default() + "\n")
            .collect();
    }
    let mut t = Table::new(&["REPOSITORY", "TAG", "IMAGE ID", "SIZE"]);
    for i in list {
        let (repo, tag) = split_reference(&i.reference);
        t.row(vec![repo, tag, id(i), format::human_size(i.size)]);
    }
    t.render()
}

pub async fn images(client: &DaemonClient, args: ImagesArgs) -> i32 {
    match client.images().await {
        Ok(mut list) => {
            list.sort_by(|a, b| a.reference.cmp(&b.reference));
            print!("{}", render(&list, &args));
            0
        }
        Err(e) => {
            report(e);
            1
        }
    }
}

/// `husk load`: uploads an archive to the daemon, which imports it.
pub async fn load(client: &DaemonClient, args: LoadArgs) -> i32 {
    let input = args.input.unwrap_or_else(|| "-".into());
    if input.as_os_str() == "-" && std::io::stdin().is_terminal() {
        report("refusing to read an archive from a terminal: give -i FILE or pipe one in");
        return 1;
    }
    match client.import(&input, args.tag.as_deref()).await {
        Ok(images) => {
            for i in images {
                println!("Loaded image: {}", i.reference);
            }
            0
        }
        Err(e) => {
            report(e);
            1
        }
    }
}

pub async fn pull(client: &DaemonClient, args: PullArgs) -> i32 {
    let result = if args.quiet {
        pull_with_progress(client, &args.reference, &mut std::io::sink(), false).await
    } else {
        let mut out = std::io::stdout();
        let tty = out.is_terminal();
        pull_with_progress(client, &args.reference, &mut out, tty).await
    };
    match result {
        Ok(reference) => {
            println!("{reference}");
            0
        }
        Err(e) => {
            report(e);
            1
        }
    }
}

pub async fn rmi(client: &DaemonClient, args: RmiArgs) -> i32 {
    let mut code = 0;
    for r in &args.images {
        match client.remove_image(r).await {
            Ok(()) => println!("Untagged: {r}"),
            Err(e) => {
                report(e);
                code = 1;
            }
        }
    }
    code
}

/// Pulls `reference`, showing progress on `out` (redrawn in place on a
/// terminal, a line per change of status otherwise); returns the
/// reference the daemon pulled.
pub async fn pull_with_progress(
    client: &DaemonClient,
    reference: &str,
    out: &mut dyn Write,
    tty: bool,
) -> Result<String, String> {
    let mut stream = client.pull(reference).await.map_err(|e| e.to_string())?;
    let mut view = PullView::new(tty);
    loop {
        match stream.next().await.map_err(|e| e.to_string())? {
            Some(PullEvent::Done { reference, .. }) => return Ok(reference),
            Some(PullEvent::Error { error }) => {
                return Err(format!(
                    "Error response from daemon: {}",
                    crate::text::echo(&error)
                ));
            }
            Some(PullEvent::Progress {
                status,
                layer,
                current,
                total,
            }) => {
                let text = view.update(&status, layer.as_deref(), current, total);
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            None => return Err("the pull stream ended before the pull did".into()),
        }
    }
}

/// The lines of a pull's progress: one per layer (updated in place on a
/// terminal) and one per status without a layer.
pub struct PullView {
    tty: bool,
    /// What each line shows; a layer's line is kept at its place.
    lines: Vec<String>,
    by_layer: HashMap<String, usize>,
    /// Lines on screen now (a terminal redraw moves up over them).
    drawn: usize,
    /// Non-terminal: the last status printed for each layer.
    last_status: HashMap<String, String>,
}

impl PullView {
    pub fn new(tty: bool) -> Self {
        PullView {
            tty,
            lines: Vec::new(),
            by_layer: HashMap::new(),
            drawn: 0,
            last_status: HashMap::new(),
        }
    }

    /// Takes one progress event; returns what to write.
    pub fn update(
        &mut self,
        status: &str,
        layer: Option<&str>,
        current: Option<u64>,
        total: Option<u64>,
    ) -> String {
        let status = crate::text::echo(status).into_owned();
        let Some(layer) = layer else {
            self.lines.push(status.clone());
            return if self.tty {
                self.redraw()
            } else {
                format!("{status}\n")
            };
        };
        let short = format::short_id(layer.rsplit(':').next().unwrap_or(layer)).to_string();
        if !self.tty {
            // One line per new status of a layer, not per byte.
            if self.last_status.get(layer).map(String::as_str) == Some(status.as_str()) {
                return String::new();
            }
            self.last_status.insert(layer.to_string(), status.clone());
            return format!("{short}: {status}\n");
        }
        let line = format!("{short}: {status}{}", progress(current, total));
        match self.by_layer.get(layer) {
            Some(&i) => self.lines[i] = line,
            None => {
                self.by_layer.insert(layer.to_string(), self.lines.len());
                self.lines.push(line);
            }
        }
        self.redraw()
    }

    /// Moves up over the lines drawn before and draws them all again.
    fn redraw(&mut self) -> String {
        let mut s = String::new();
        if self.drawn > 0 {
            s.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for l in &self.lines {
            s.push_str("\x1b[2K");
            s.push_str(l);
            s.push('\n');
        }
        self.drawn = self.lines.len();
        s
    }
}

/// ` [=====>     ] 1.2MB/4.26MB` when the total is known, ` 1.2MB` when
/// only the count is, else nothing.
pub fn progress(current: Option<u64>, total: Option<u64>) -> String {
    const WIDTH: u64 = 50;
    match (current, total) {
        (Some(c), Some(t)) if t > 0 => {
            let c = c.min(t);
            let filled = (c * WIDTH / t) as usize;
            let mut bar = "=".repeat(filled);
            if filled < WIDTH as usize {
                bar.push('>');
                bar.push_str(&" ".repeat(WIDTH as usize - filled - 1));
            }
            format!(
                " [{bar}] {}/{}",
                format::human_size(c),
                format::human_size(t)
            )
        }
        (Some(c), _) => format!(" {}", format::human_size(c)),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::parse;
    use crate::cli::Verb;

    #[test]
    fn references_as_docker_shows_them() {
        let s = |r: &str| split_reference(r);
        assert_eq!(
            s("docker.io/library/busybox:latest"),
            ("busybox".into(), "latest".into())
        );
        assert_eq!(
            s("docker.io/someone/app:1.2"),
            ("someone/app".into(), "1.2".into())
        );
        assert_eq!(
            s("localhost:5000/team/app:dev"),
            ("localhost:5000/team/app".into(), "dev".into())
        );
        assert_eq!(
            s("localhost:5000/app@sha256:abc"),
            ("localhost:5000/app".into(), "<none>".into())
        );
        assert_eq!(
            s("localhost:5000/app"),
            ("localhost:5000/app".into(), "latest".into())
        );
    }

    #[test]
    fn table() {
        let list = [ImageSummary {
            reference: "docker.io/library/busybox:latest".into(),
            id: format!("sha256:{}", "ab".repeat(32)),
            size: 2_156_000,
            manifest: None,
        }];
        let args = |a: &[&str]| {
            let mut v = vec!["images"];
            v.extend_from_slice(a);
            match parse(&v).unwrap() {
                Verb::Images(i) => i,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            render(&list, &args(&[])),
            "REPOSITORY   TAG       IMAGE ID       SIZE\n\
             busybox      latest    abababababab   2.16MB\n"
        );
        assert_eq!(render(&list, &args(&["-q"])), "abababababab\n");
        assert_eq!(
            render(&list, &args(&["-q", "--no-trunc"])),
            format!("sha256:{}\n", "ab".repeat(32))
        );
        let json = render(&list, &args(&["--format", "json"]));
        assert_eq!(
            serde_json::from_str::<ImageSummary>(json.trim()).unwrap(),
            list[0]
        );
    }

    #[test]
    fn progress_bars() {
        assert_eq!(progress(None, None), "");
        assert_eq!(progress(Some(1500), None), " 1.5kB");
        let p = progress(Some(500), Some(1000));
        assert_eq!(
            p,
            format!(" [{}>{}] 500B/1kB", "=".repeat(25), " ".repeat(24))
        );
        let p = progress(Some(1000), Some(1000));
        assert_eq!(p, format!(" [{}] 1kB/1kB", "=".repeat(50)));
    }

    #[test]
    fn plain_lines_when_not_a_terminal() {
        let mut v = PullView::new(false);
        let mut out = String::new();
        out += &v.update("Resolved", None, None, None);
        out += &v.update(
            "Downloading",
            Some("sha256:0123456789abcdef"),
            Some(1),
            Some(9),
        );
        out += &v.update(
            "Downloading",
            Some("sha256:0123456789abcdef"),
            Some(5),
            Some(9),
        );
        out += &v.update("Pull complete", Some("sha256:0123456789abcdef"), None, None);
        assert_eq!(
            out,
            "Resolved\n0123456789ab: Downloading\n0123456789ab: Pull complete\n"
        );
    }

    #[test]
    fn redrawn_in_place_on_a_terminal() {
        let mut v = PullView::new(true);
        assert_eq!(
            v.update("Downloading", Some("sha256:aaaa"), None, None),
            "\x1b[2Kaaaa: Downloading\n"
        );
        assert_eq!(
            v.update("Waiting", Some("sha256:bbbb"), None, None),
            "\x1b[1A\x1b[2Kaaaa: Downloading\n\x1b[2Kbbbb: Waiting\n"
        );
        assert_eq!(
            v.update("Pull complete", Some("sha256:aaaa"), None, None),
            "\x1b[2A\x1b[2Kaaaa: Pull complete\n\x1b[2Kbbbb: Waiting\n"
        );
    }
}
