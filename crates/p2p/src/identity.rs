//! One ed25519 key per node and per coordinator: it signs adverts and
//! receipts, and the libp2p PeerId is derived from it.

use std::io::Write;
use std::path::Path;

use libp2p::PeerId;
use sharenet_proto::{PublicKey, SigningKey, public_key_of};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("read identity key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("write identity key {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("identity key {path} is not 64 hex digits")]
    Malformed { path: String },
    #[error("identity key {0} already exists; refusing to overwrite it")]
    Exists(String),
    #[error("invalid ed25519 public key")]
    BadPublicKey,
}

/// An ed25519 identity: the signing key and the PeerId derived from it.
#[derive(Clone)]
pub struct Identity {
    secret: [u8; 32],
    signing: SigningKey,
    peer_id: PeerId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// From a 32-byte ed25519 secret seed.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&secret);
        // A 32-byte seed is always a valid ed25519 secret key.
        let peer_id = peer_id_of(&public_key_of(&signing)).unwrap_or_else(|_| PeerId::random());
        Self {
            secret,
            signing,
            peer_id,
        }
    }

    /// A fresh random identity.
    pub fn generate() -> Self {
        Self::from_secret(rand::random())
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub fn public_key(&self) -> PublicKey {
        public_key_of(&self.signing)
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub(crate) fn libp2p_keypair(&self) -> libp2p::identity::Keypair {
        let mut secret = self.secret;
        // Infallible for a 32-byte slice; fall back to a random key only to
        // avoid a panic path (the peer id check below would then fail loudly).
        libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
            .unwrap_or_else(|_| libp2p::identity::Keypair::generate_ed25519())
    }

    /// Reads a key file written by [`Identity::create`].
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut secret = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut secret).map_err(|_| IdentityError::Malformed {
            path: path.display().to_string(),
        })?;
        Ok(Self::from_secret(secret))
    }

    /// Creates a new key file (mode 0600 on Unix); never overwrites one.
    pub fn create(path: &Path) -> Result<Self, IdentityError> {
        let id = Self::generate();
        let write_err = |source| IdentityError::Write {
            path: path.display().to_string(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = match opts.open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(IdentityError::Exists(path.display().to_string()));
            }
            Err(e) => return Err(write_err(e)),
        };
        writeln!(file, "{}", hex::encode(id.secret)).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        Ok(id)
    }

    /// Loads the key at `path`, creating it first if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        if path.exists() {
            Self::load(path)
        } else {
            Self::create(path)
        }
    }
}

/// The PeerId of the peer whose ed25519 public key is `key`.
pub fn peer_id_of(key: &PublicKey) -> Result<PeerId, IdentityError> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(key)
        .map_err(|_| IdentityError::BadPublicKey)?;
    Ok(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_matches_signing_key() {
        let id = Identity::generate();
        let kp = id.libp2p_keypair();
        assert_eq!(kp.public().to_peer_id(), id.peer_id());
        assert_eq!(peer_id_of(&id.public_key()).unwrap(), id.peer_id());
    }

    #[test]
    fn create_load_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        let a = Identity::create(&path).unwrap();
        let b = Identity::load(&path).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        assert!(matches!(
            Identity::create(&path),
            Err(IdentityError::Exists(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "nothex").unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(IdentityError::Malformed { .. })
        ));
    }
}
