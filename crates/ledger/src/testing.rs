//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary
//! folder, a server on a free loopback port, stopped (immediately) and
//! removed on drop. It uses the Debian packages' binaries
//! (`/usr/lib/postgresql/<version>/bin`, or `$SHARENET_PG_BIN`), which
//! `scripts/setup-test-deps` installs. As root, the server runs as the
//! `postgres` user (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A running test cluster.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// Why a test cluster could not start.
#[derive(Debug, thiserror::Error)]
#[error("test PostgreSQL: {0}")]
pub struct TestPgError(String);

fn bin_dir() -> Result<PathBuf, TestPgError> {
    if let Some(dir) = std::env::var_os("SHARENET_PG_BIN") {
        return Ok(dir.into());
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            TestPgError(format!(
                "no /usr/lib/postgresql ({e}): run scripts/setup-test-deps (installs Debian's postgresql) or set SHARENET_PG_BIN"
            ))
        })?
        .filter_map(|d| {
            let d = d.ok()?;
            let v = d.file_name().to_str()?.parse().ok()?;
            let bin = d.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| TestPgError("no PostgreSQL server binaries in /usr/lib/postgresql".into()))
}

fn is_root() -> bool {
    // SAFETY-free check: the effective uid is in /proc/self/status.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> Result<u16, TestPgError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| TestPgError(format!("find a free port: {e}")))
}

impl TestPostgres {
    /// initdb and start a server (about a second).
    pub fn start() -> Result<Self, TestPgError> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("sharenet-pg-")
            .tempdir()
            .map_err(|e| TestPgError(format!("temp dir: {e}")))?;
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .map_err(|e| TestPgError(format!("chown: {e}")))?;
            if !status.success() {
                return Err(TestPgError(
                    "chown to the postgres user failed (is Debian's postgresql installed?)".into(),
                ));
            }
        }
        let mut pg = Self {
            dir,
            bin,
            port: 0,
            as_postgres,
        };
        let data = pg.data_dir();
        pg.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-A",
                "trust",
                "-U",
                "sharenet",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        pg.port = free_port()?;
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), TestPgError> {
        let out = self
            .command(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| TestPgError(format!("run {tool}: {e}")))?;
        if !out.status.success() {
            return Err(TestPgError(format!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<(), TestPgError> {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=200",
            self.port,
            path_str(self.dir.path())?
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-o",
                &opts,
                "-l",
                path_str(&log)?,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
    }

    /// A connection URL to the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgresql://sharenet@127.0.0.1:{}/postgres", self.port)
    }

    /// A new database on this cluster; its URL.
    pub fn create_database(&self, name: &str) -> Result<String, TestPgError> {
        self.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "sharenet",
                name,
            ],
        )?;
        Ok(format!(
            "postgresql://sharenet@127.0.0.1:{}/{name}",
            self.port
        ))
    }

    /// Stops the server the way a crash would (`-m immediate`: no
    /// checkpoint, WAL replay on start), then starts it again.
    pub fn crash_and_restart(&self) -> Result<(), TestPgError> {
        self.stop_immediately()?;
        self.pg_ctl_start()
    }

    fn stop_immediately(&self) -> Result<(), TestPgError> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", "immediate", "-w", "stop"],
        )
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

fn path_str(p: &Path) -> Result<&str, TestPgError> {
    p.to_str()
        .ok_or_else(|| TestPgError(format!("path {} is not UTF-8", p.display())))
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = self.stop_immediately();
    }
}
