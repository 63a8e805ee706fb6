//! Child processes of the benchmark: spawned with their output in log
//! files, waited for, measured (CPU time and resident memory of the whole
//! process tree, from `/proc`), and killed when dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `cmd`, its stdout and stderr copied to `log` (stdout lines
    /// are also kept for [`Proc::wait_for`]).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = file.try_clone()?;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("start {name} ({cmd:?})"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = mpsc::sync_channel(1024);
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = file;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                let _ = tx.try_send(line);
            }
        });
        Ok(Self {
            name: name.to_string(),
            child,
            lines: rx,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stdout lines until one satisfies `f` (returned with those before
    /// it), or `timeout`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        f: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = f(&line);
                    seen.push(line);
                    if hit {
                        return Ok(seen);
                    }
                }
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        bail!("{} exited with {status}; see its log", self.name);
                    }
                    bail!("{} did not get ready in {timeout:?}", self.name);
                }
            }
        }
    }

    /// CPU seconds (user + system) of the process and its descendants.
    pub fn cpu_secs(&self) -> f64 {
        tree_cpu_secs(self.pid())
    }

    /// Resident memory of the process and its descendants, bytes.
    pub fn rss_bytes(&self) -> u64 {
        descendants(self.pid())
            .into_iter()
            .filter_map(|p| {
                let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb * 1024)
            })
            .sum()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        for p in descendants(self.pid()).into_iter().rev() {
            // SIGKILL the whole tree (LiteLLM runs uvicorn workers).
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pid` and every process below it.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = stat_fields(p) {
                parent.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = parent.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// (ppid, utime + stime in clock ticks) from `/proc/PID/stat`.
fn stat_fields(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn tree_cpu_secs(pid: u32) -> f64 {
    // Linux reports these in USER_HZ, 100 on every mainstream build.
    let ticks: u64 = descendants(pid)
        .into_iter()
        .filter_map(|p| stat_fields(p).map(|(_, t)| t))
        .sum();
    ticks as f64 / 100.0
}

/// A free loopback TCP port (bound and released: a small race, fine on a
/// quiet machine).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `url` answers 200.
pub async fn wait_http(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer 200 in {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A binary in the release build folder.
pub fn bin(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p sharenet-coordinator -p sharenet-node -p sharenet-bench`",
            p.display()
        );
    }
    Ok(p)
}
