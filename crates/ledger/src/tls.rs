//! TLS to PostgreSQL: the `database_url`'s `sslmode` and `sslrootcert`
//! honoured as libpq does, with rustls (through `tokio-postgres-rustls`).
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default, as in libpq) | if the server offers TLS, else plain text | no |
//! | `require` | always (a server without TLS is refused) | no; with `sslrootcert`, the chain (libpq's compatibility rule) |
//! | `verify-ca` | always | the chain up to `sslrootcert`, not the host name |
//! | `verify-full` | always | the chain up to `sslrootcert` and the host name |
//!
//! `sslrootcert` is the path of a PEM file of the CA certificates to trust.
//! `verify-ca` and `verify-full` need it: there is no implicit
//! `~/.postgresql/root.crt` and no `sslrootcert=system`; to trust the
//! system's public CAs, name their bundle (on Debian,
//! `/etc/ssl/certs/ca-certificates.crt`). A file that cannot be read or
//! holds no certificate is a startup error naming `sslrootcert`.
//!
//! `prefer` and `require` encrypt without authenticating the server, as in
//! libpq: the explicit [`AcceptAnyServerCert`] verifier does that (it still
//! checks the handshake's signature against the certificate presented). They
//! stop a passive eavesdropper, not someone in the middle; use
//! `verify-full` across any network you do not control. `sslmode=allow`
//! (plain text first) is refused: use `prefer`. A URL whose hosts are all
//! Unix sockets is never encrypted, whatever `sslmode` says (as in libpq:
//! PostgreSQL offers no TLS on a socket).
//!
//! tokio-postgres parses only `disable`/`prefer`/`require` and no
//! `sslrootcert`, so [`DatabaseUrl::parse`] takes both keys out of the URL
//! (either form: `postgresql://…?sslmode=…` or `key=value …`) before handing
//! the rest to it.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::StoreError;

/// libpq's `sslmode`, the five values this crate honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, StoreError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(url_error(
                    "sslmode=allow is not supported (use prefer, or require)",
                ));
            }
            other => {
                return Err(url_error(format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }
}

/// A parsed `database_url`: tokio-postgres's config plus the TLS keys it
/// does not know.
#[derive(Debug, Clone)]
pub struct DatabaseUrl {
    /// Everything else, with tokio-postgres's `sslmode` set to match.
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    /// `sslrootcert`, as given.
    pub root_cert: Option<PathBuf>,
}

impl DatabaseUrl {
    /// Parses a libpq URL or `key=value` string (no file is read here).
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let (rest, mode, root) = take_tls_keys(url).map_err(url_error)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(url_error)?;
        let ssl_mode = match mode {
            Some(m) => SslMode::parse(&m)?,
            None => SslMode::Prefer,
        };
        if matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && root.is_none() {
            return Err(url_error(format!(
                "sslmode={} needs sslrootcert (the PEM file of the CA that signed the server's certificate)",
                if ssl_mode == SslMode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                }
            )));
        }
        let hosts = config.get_hosts();
        let sockets_only = !hosts.is_empty()
            && hosts
                .iter()
                .all(|h| !matches!(h, tokio_postgres::config::Host::Tcp(_)));
        config.ssl_mode(match ssl_mode {
            _ if sockets_only => PgSslMode::Disable,
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        Ok(Self {
            config,
            ssl_mode,
            root_cert: root.map(PathBuf::from),
        })
    }

    /// The TLS connector for this URL: reads `sslrootcert` (a bad file is an
    /// error naming it) and picks the verifier from the table above.
    pub fn connector(&self) -> Result<MakeRustlsConnect, StoreError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Backend(format!("TLS for PostgreSQL: {e}")))?;
        let roots = match &self.root_cert {
            Some(path) if self.ssl_mode != SslMode::Prefer => Some(load_roots(path)?),
            _ => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (self.ssl_mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => webpki(roots, &provider)?,
            (SslMode::VerifyCa | SslMode::Require, Some(roots)) => Arc::new(ChainOnly {
                inner: webpki(roots, &provider)?,
            }),
            _ => Arc::new(AcceptAnyServerCert { provider }),
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

fn url_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("database_url: {e}"))
}

fn load_roots(path: &std::path::Path) -> Result<RootCertStore, StoreError> {
    let bad = |why: String| {
        StoreError::Backend(format!(
            "database_url: sslrootcert {}: {why}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn webpki(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, StoreError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| StoreError::Backend(format!("database_url: sslrootcert: {e}")))
}

/// `sslmode=prefer`/`require` without `sslrootcert`: the session is
/// encrypted but the server is not authenticated (libpq's meaning of those
/// modes). Any certificate is accepted; the handshake signature is still
/// checked against it, so the key exchange is bound to that certificate.
#[derive(Debug)]
pub struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `sslmode=verify-ca` (and `require` with `sslrootcert`): the chain must
/// lead to `sslrootcert`, the host name is not checked. webpki checks the
/// chain (dates, usage, signatures) before the name, so a name mismatch is
/// reported only for a certificate whose chain is good.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `sslmode` and `sslrootcert` taken out of `url` (last one wins, as in
/// libpq): the rest of the URL, and their values.
type TlsKeys = (String, Option<String>, Option<String>);

fn take_tls_keys(url: &str) -> Result<TlsKeys, String> {
    let (mut mode, mut root) = (None, None);
    // Errors never quote the URL: it may hold a password.
    let mut keep = |key: &str, value: &dyn Fn() -> Result<String, String>| {
        match key {
            "sslmode" => mode = Some(value()?),
            "sslrootcert" => root = Some(value()?),
            _ => return Ok(true),
        }
        Ok::<_, String>(false)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if keep(key, &|| percent_decode(value))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = String::new();
        let mut s = url.trim_start();
        while !s.is_empty() {
            let key_len = s
                .find(|c: char| c == '=' || c.is_whitespace())
                .unwrap_or(s.len());
            let key = &s[..key_len];
            let after = s[key_len..].trim_start();
            let after = after
                .strip_prefix('=')
                .ok_or("expected key=value pairs, or a postgresql:// URL")?
                .trim_start();
            let (value, used) = kv_value(after)?;
            let whole = s.len() - after.len() + used;
            if keep(key, &|| Ok(value.clone()))? {
                kept.push_str(&s[..whole]);
                kept.push(' ');
            }
            s = s[whole..].trim_start();
        }
        kept
    };
    Ok((rest, mode, root))
}

/// A `key=value` string's value: `'quoted'` or bare, with `\` escapes;
/// the unescaped value and the bytes it took.
fn kv_value(s: &str) -> Result<(String, usize), String> {
    let quoted = s.starts_with('\'');
    let mut value = String::new();
    let mut chars = s.char_indices().skip(usize::from(quoted));
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e)) => value.push(e),
                None => return Err("a value ends in \\".into()),
            },
            '\'' if quoted => return Ok((value, i + 1)),
            c if !quoted && c.is_whitespace() => return Ok((value, i)),
            c => value.push(c),
        }
    }
    if quoted {
        Err("unterminated quoted value".into())
    } else {
        Ok((value, s.len()))
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a bad percent escape in sslmode or sslrootcert")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "sslmode or sslrootcert is not UTF-8 once decoded".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_come_out_of_both_url_forms() {
        let (rest, mode, root) = take_tls_keys(
            "postgresql://u@db:5432/books?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgresql://u@db:5432/books?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));

        let (rest, mode, root) = take_tls_keys(
            "host=db sslmode = verify-ca sslrootcert='/a b/ca.pem' password='it\\'s' dbname=x",
        )
        .unwrap();
        assert_eq!(rest, "host=db password='it\\'s' dbname=x ");
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(root.as_deref(), Some("/a b/ca.pem"));
        assert!(rest.parse::<tokio_postgres::Config>().is_ok());

        let (rest, mode, root) = take_tls_keys("postgresql://u@db/x?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), mode.as_deref(), root),
            ("postgresql://u@db/x", Some("require"), None)
        );
    }

    #[test]
    fn sslmode_is_checked_and_defaults_to_prefer() {
        assert_eq!(
            DatabaseUrl::parse("postgresql://db/x").unwrap().ssl_mode,
            SslMode::Prefer
        );
        let url = DatabaseUrl::parse("host=db sslmode=disable").unwrap();
        assert_eq!(url.config.get_ssl_mode(), PgSslMode::Disable);
        let url =
            DatabaseUrl::parse("postgresql://db/x?sslmode=verify-ca&sslrootcert=ca.pem").unwrap();
        assert_eq!(url.ssl_mode, SslMode::VerifyCa);
        assert_eq!(url.config.get_ssl_mode(), PgSslMode::Require);
        // A Unix socket carries no TLS (libpq ignores sslmode there).
        let url = DatabaseUrl::parse("host=/run/postgresql sslmode=require").unwrap();
        assert_eq!(url.config.get_ssl_mode(), PgSslMode::Disable);
        for (bad, says) in [
            ("postgresql://db/x?sslmode=verify-full", "needs sslrootcert"),
            ("postgresql://db/x?sslmode=allow", "allow"),
            ("postgresql://db/x?sslmode=on", "not one of"),
            ("host=db sslmode='require", "unterminated"),
            ("postgresql://db/x?nonsense=1", "database_url"),
            ("postgres:/u:secret@db", "key=value"),
            ("postgresql://u:secret@db/x?sslmode=%zz", "percent"),
        ] {
            let e = DatabaseUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_bad_sslrootcert_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [dir.path().join("missing.pem"), empty] {
            let url = format!(
                "postgresql://db/x?sslmode=verify-full&sslrootcert={}",
                path.display()
            );
            let Err(e) = DatabaseUrl::parse(&url).unwrap().connector() else {
                panic!("{} accepted", path.display());
            };
            let e = e.to_string();
            assert!(
                e.contains("sslrootcert") && e.contains(&path.display().to_string()),
                "{e}"
            );
        }
    }

    /// A CA, a server certificate it signed for `localhost` only, and an
    /// unrelated CA; the PEM paths.
    struct Certs {
        ca: PathBuf,
        wrong_ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    }

    fn make_certs(dir: &std::path::Path) -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_params = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            p
        };
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params("sharenet test CA").self_signed(&ca_key).unwrap();
        let wrong_key = KeyPair::generate().unwrap();
        let wrong = ca_params("someone else's CA")
            .self_signed(&wrong_key)
            .unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let certs = Certs {
            ca: dir.join("ca.pem"),
            wrong_ca: dir.join("wrong-ca.pem"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        std::fs::write(&certs.ca, ca.pem()).unwrap();
        std::fs::write(&certs.wrong_ca, wrong.pem()).unwrap();
        std::fs::write(&certs.cert, cert.pem()).unwrap();
        std::fs::write(&certs.key, key.serialize_pem()).unwrap();
        certs
    }

    /// A test cluster with `ssl = on`, serving `certs`.
    async fn tls_cluster(dir: &std::path::Path) -> (TestPostgres, Certs) {
        use std::os::unix::fs::PermissionsExt;
        let certs = make_certs(dir);
        // PostgreSQL wants its key private to the user it runs as (as
        // root, the tests run it as `postgres`).
        std::fs::set_permissions(&certs.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        if std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
        {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()
                .unwrap();
            assert!(ok.success(), "chown the certificates to postgres");
        }
        let pg = TestPostgres::start().unwrap();
        let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for (key, path) in [("ssl_cert_file", &certs.cert), ("ssl_key_file", &certs.key)] {
            client
                .batch_execute(&format!("ALTER SYSTEM SET {key} = '{}'", path.display()))
                .await
                .unwrap();
        }
        client
            .batch_execute("ALTER SYSTEM SET ssl = on")
            .await
            .unwrap();
        client
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
        // The postmaster reloads asynchronously: wait for a new session to
        // see it.
        for _ in 0..100 {
            if session_ssl(&format!("{}?sslmode=require", pg.url())).await == Ok(true) {
                return (pg, certs);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("ssl = on never took effect: {}", pg.log());
    }

    /// Connects as the pool does; whether the session is encrypted, by the
    /// server's own account.
    async fn session_ssl(url: &str) -> Result<bool, String> {
        let url = DatabaseUrl::parse(url).map_err(|e| e.to_string())?;
        let tls = url.connector().map_err(|e| e.to_string())?;
        let (client, conn) = url
            .config
            .connect(tls)
            .await
            .map_err(|e| StoreError::from(e).to_string())?;
        tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    }

    use crate::testing::TestPostgres;

    /// `postgresql://sharenet@localhost:PORT/postgres` (the certificate's
    /// name), dialled at 127.0.0.1 (the server listens on IPv4 only).
    fn by_name(pg: &TestPostgres) -> String {
        pg.url().replace("@127.0.0.1:", "@localhost:") + "?hostaddr=127.0.0.1"
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sslmode_is_honoured_against_a_tls_server() {
        let dir = tempfile::tempdir().unwrap();
        let (pg, certs) = tls_cluster(dir.path()).await;
        let url = pg.url();
        let named = by_name(&pg);
        let root = |p: &PathBuf| format!("&sslrootcert={}", p.display());

        // require: encrypted, whatever the certificate.
        assert_eq!(
            session_ssl(&format!("{url}?sslmode=require")).await,
            Ok(true)
        );
        // prefer (and no sslmode at all): encrypted when offered.
        assert_eq!(
            session_ssl(&format!("{url}?sslmode=prefer")).await,
            Ok(true)
        );
        assert_eq!(session_ssl(&url).await, Ok(true));
        // disable: plain text.
        assert_eq!(
            session_ssl(&format!("{url}?sslmode=disable")).await,
            Ok(false)
        );

        // verify-full with the right CA, by the certificate's name.
        assert_eq!(
            session_ssl(&format!("{named}&sslmode=verify-full{}", root(&certs.ca))).await,
            Ok(true)
        );
        // verify-full by another name (127.0.0.1 is not in the
        // certificate): refused; verify-ca does not check the name.
        let e = session_ssl(&format!("{url}?sslmode=verify-full{}", root(&certs.ca)))
            .await
            .unwrap_err();
        assert!(e.contains("certificate not valid for name"), "{e}");
        assert_eq!(
            session_ssl(&format!("{url}?sslmode=verify-ca{}", root(&certs.ca))).await,
            Ok(true)
        );
        // Someone else's CA: refused in every verifying mode, and by
        // require once sslrootcert is given (libpq's rule).
        for mode in ["verify-full", "verify-ca", "require"] {
            let e = session_ssl(&format!("{named}&sslmode={mode}{}", root(&certs.wrong_ca)))
                .await
                .unwrap_err();
            assert!(
                e.contains("TLS") && e.contains("UnknownIssuer"),
                "{mode}: {e}"
            );
        }

        // The shared books themselves: connect (and migrate) over
        // verify-full; the wrong CA is a clear startup error.
        let books = crate::pg::PgLedger::connect(
            &format!("{named}&sslmode=verify-full{}", root(&certs.ca)),
            2,
        )
        .await;
        assert!(books.is_ok(), "{:?}", books.err());
        let Err(e) = crate::pg::PgLedger::connect(
            &format!("{named}&sslmode=verify-full{}", root(&certs.wrong_ca)),
            2,
        )
        .await
        else {
            panic!("connected with someone else's CA");
        };
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_without_tls_is_refused_unless_plain_text_is_allowed() {
        let pg = TestPostgres::start().unwrap();
        let url = pg.url();
        let e = session_ssl(&format!("{url}?sslmode=require"))
            .await
            .unwrap_err();
        assert!(e.contains("server does not support TLS"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let certs = make_certs(dir.path());
        let e = session_ssl(&format!(
            "{}&sslmode=verify-full&sslrootcert={}",
            by_name(&pg),
            certs.ca.display()
        ))
        .await
        .unwrap_err();
        assert!(e.contains("server does not support TLS"), "{e}");
        // prefer (the default) falls back to plain text.
        assert_eq!(
            session_ssl(&format!("{url}?sslmode=prefer")).await,
            Ok(false)
        );
        assert_eq!(session_ssl(&url).await, Ok(false));
        assert_eq!(
            session_ssl(&format!("{url}?sslmode=disable")).await,
            Ok(false)
        );
    }
}
