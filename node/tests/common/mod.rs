//! What the node's binary tests share: editing the node.toml `init` wrote.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

/// Replaces `from` (which must be there) with `to` in the config file.
pub fn edit(config: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(
        text.contains(from),
        "{from:?} is not in {}",
        config.display()
    );
    std::fs::write(config, text.replace(from, to)).unwrap();
}

/// Makes an `init`-written config listen on loopback only (QUIC on a free
/// port) with its local API on a free port, which it returns.
pub fn on_loopback(config: &Path) -> u16 {
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    edit(
        config,
        r#"listen = ["/ip4/0.0.0.0/udp/4001/quic-v1", "/ip4/0.0.0.0/tcp/4001"]"#,
        r#"listen = ["/ip4/127.0.0.1/udp/0/quic-v1"]"#,
    );
    edit(
        config,
        r#"admin_listen = "127.0.0.1:9470""#,
        &format!(r#"admin_listen = "127.0.0.1:{admin_port}""#),
    );
    admin_port
}
