//! The `sharenet-coordinator` binary as an operator runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn init_writes_a_config_only_its_owner_can_read_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_sharenet-coordinator"))
            .args(["init", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{out:?}");
    let path = dir.path().join("coordinator.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("api_keys"), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o600,
            "coordinator.toml holds a key (issue 12, item 19)"
        );
    }
    let again = run();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
}

/// `docker stop` and systemd send SIGTERM: the coordinator drains and
/// exits 0 (before issue 15 it died of the signal); with `--log-format
/// json` its logs are JSON lines.
#[cfg(unix)]
#[test]
fn sigterm_shuts_down_cleanly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_sharenet-coordinator");
    assert!(
        Command::new(bin)
            .args(["init", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap()
            .status
            .success()
    );
    let config = dir.path().join("coordinator.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            r#"http_listen = "127.0.0.1:8080""#,
            r#"http_listen = "127.0.0.1:0""#,
        )
        .replace(
            r#"p2p_listen = ["/ip4/0.0.0.0/udp/4000/quic-v1", "/ip4/0.0.0.0/tcp/4000"]"#,
            r#"p2p_listen = ["/ip4/127.0.0.1/udp/0/quic-v1"]"#,
        )
        .replace(
            r#"metrics_listen = "127.0.0.1:9464""#,
            r#"metrics_listen = "127.0.0.1:0""#,
        );
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(dir.path().join("log.jsonl")).unwrap();
    let mut child = Command::new(bin)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.trim_start().starts_with("API:"));
    assert!(started, "the coordinator did not start");
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM: draining"))
            && rest.iter().any(|l| l.contains("drained; shutting down")),
        "{rest:?}"
    );
    // `--log-format json`: every log line is one JSON object.
    let log = std::fs::read_to_string(dir.path().join("log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["level"] == "INFO" && v["message"] == "coordinator started"),
        "{log}"
    );
}

/// Every setting can come from the environment (`SHARENET_COORDINATOR_`,
/// `__` for a nested table), and `config-check` prints the effective
/// settings with the keys redacted; a misspelt variable is named.
#[test]
fn config_check_shows_environment_overrides_and_hides_keys() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_sharenet-coordinator");
    let init = Command::new(bin)
        .args(["init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(init.status.success());
    let config = dir.path().join("coordinator.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.split('"').nth(1).filter(|k| k.starts_with("sk-")))
        .expect("init wrote an API key")
        .to_owned();
    let out = Command::new(bin)
        .args(["config-check", "--config"])
        .arg(&config)
        .env("SHARENET_COORDINATOR_SPILL_QUEUE_FACTOR", "2")
        .env("SHARENET_COORDINATOR_TIMEOUTS__IDLE_MS", "1234")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains("spill_queue_factor = 2"), "{shown}");
    assert!(shown.contains("idle_ms = 1234"), "{shown}");
    assert!(
        shown.contains("<redacted>") && !shown.contains(&key),
        "{shown}"
    );
    let bad = Command::new(bin)
        .args(["config-check", "--config"])
        .arg(&config)
        .env("SHARENET_COORDINATOR_SPIL_QUEUE_FACTOR", "2")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("spil_queue_factor"), "{err}");
}
