//! The provider's first steps, through the real binary: init, generate a
//! model, check that it loads.

use std::process::Command;

mod common;
use common::edit;

fn node() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sharenet-node"))
}

/// A fresh folder with what `sharenet-node init` writes.
#[allow(clippy::unwrap_used)]
fn initialized() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let init = node()
        .args(["init", "--dir"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(init.success());
    dir
}

#[test]
fn init_then_gen_tiny_model_then_models_lists_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = node()
        .args(["init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = dir.path().join("identity.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let config = dir.path().join("node.toml");
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("# sharenet-node configuration")
    );

    // A second init refuses to overwrite.
    let again = node()
        .args(["init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());

    // The model the template points at does not exist yet: `models` says so.
    let missing = node()
        .args(["models", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stdout).contains("FAIL  tiny-llama"));

    let out = node()
        .arg("gen-tiny-model")
        .arg(dir.path().join("models/tiny-llama"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = node()
        .args(["models", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ok    tiny-llama"), "{stdout}");

    // No receipts yet, and the store opens.
    let out = node()
        .args(["receipts", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 receipts"));
}

#[test]
fn a_bad_config_is_refused_naming_the_key() {
    let dir = initialized();
    let config = dir.path().join("node.toml");
    edit(&config, "price_in = 100", "price_in = -5");
    let out = node()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("price_in"), "{stderr}");
}

#[test]
fn init_with_a_coordinator_serves_only_that_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = sharenet_p2p::Identity::generate().peer_id();
    let addr = format!("/ip4/127.0.0.1/udp/4000/quic-v1/p2p/{coordinator}");
    let out = node()
        .args(["init", "--dir"])
        .arg(dir.path())
        .args(["--coordinator", &addr])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let config = sharenet_node::NodeConfig::from_file(&dir.path().join("node.toml")).unwrap();
    assert_eq!(config.coordinators, vec![coordinator]);

    // An address without the coordinator's id cannot name whom to serve.
    let dir = tempfile::tempdir().unwrap();
    let out = node()
        .args(["init", "--dir"])
        .arg(dir.path())
        .args(["--coordinator", "/ip4/127.0.0.1/udp/4000/quic-v1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/p2p/"));
}

/// SIGHUP (and `sharenet-node reload`) reprices from the edited config;
/// `docker stop` and systemd send
/// SIGTERM: the node drains and exits 0 (before issue 15 it died of the
/// signal mid-whatever-it-was-doing).
#[cfg(unix)]
#[test]
fn sighup_reprices_and_sigterm_drains_and_exits_cleanly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = initialized();
    assert!(
        node()
            .arg("gen-tiny-model")
            .arg(dir.path().join("models/tiny-llama"))
            .status()
            .unwrap()
            .success()
    );
    let config = dir.path().join("node.toml");
    common::on_loopback(&config);
    let mut child = node()
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("listening on"));
    assert!(started, "the node did not start");
    // `status` asks the running daemon through its local API.
    let out = node()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains("tiny-llama") && shown.contains("100/200"),
        "{shown}"
    );
    // SIGHUP applies a price change from the edited config.
    edit(&config, "price_in = 100", "price_in = 120");
    assert!(
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let repriced = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("reload: repriced tiny-llama: 120/200"));
    assert!(repriced, "SIGHUP did not reprice");
    // `sharenet-node reload` does the same through the local API.
    edit(&config, "price_out = 200", "price_out = 210");
    let out = node()
        .args(["reload", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let repriced = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("reload: repriced tiny-llama: 120/210"));
    assert!(repriced, "`sharenet-node reload` did not reprice");
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
}

/// `SHARENET_NODE_<KEY>` overrides node.toml, and `config-check` shows it.
#[test]
fn config_check_shows_environment_overrides() {
    let dir = initialized();
    let config = dir.path().join("node.toml");
    let out = node()
        .args(["config-check", "--config"])
        .arg(&config)
        .env("SHARENET_NODE_ADVERT_TTL_SECS", "42")
        .env("SHARENET_NODE_REGION", "eu-west")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains("advert_ttl_secs = 42"), "{shown}");
    assert!(shown.contains(r#"region = "eu-west""#), "{shown}");
}
