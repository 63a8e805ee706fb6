//! API keys: authentication (the Bearer key's SHA-256 names an app and a
//! key; unknown or revoked: 401), issuing, installing, listing and
//! revoking. Only hashes are kept; on shared books the database decides
//! which replica's key stands.

use sharenet_ledger::{Budgets, KeyRecord};

use super::backend::BooksBackend;
use super::service::Accounts;
use super::types::{AccountsError, Principal, key_hash, key_id_of, new_key};

impl Accounts {
    /// The app and key a Bearer key belongs to; 401 if unknown or revoked.
    pub fn authenticate(&self, key: &str) -> Result<Principal, AccountsError> {
        let state = self.lock();
        match state.keys.get(&key_hash(key)) {
            Some(k) if k.revoked_at_ms.is_none() => Ok(Principal {
                app: k.app.clone(),
                key_id: k.id.clone(),
            }),
            Some(_) => Err(AccountsError::Unauthorized(
                "this API key has been revoked".into(),
            )),
            None => Err(AccountsError::Unauthorized("invalid API key".into())),
        }
    }

    /// Issues a key for `app`; the plaintext is returned once and never stored.
    pub async fn create_key(
        &self,
        app: &str,
        budgets: Budgets,
        now_ms: u64,
    ) -> Result<(String, KeyRecord), AccountsError> {
        let plaintext = new_key();
        let record = self.install_key(app, &plaintext, budgets, now_ms).await?;
        Ok((plaintext, record))
    }

    /// Installs a known key (config bootstrap keys). Idempotent.
    pub async fn install_key(
        &self,
        app: &str,
        plaintext: &str,
        budgets: Budgets,
        now_ms: u64,
    ) -> Result<KeyRecord, AccountsError> {
        let hash = key_hash(plaintext);
        {
            let state = self.lock();
            if !state.apps.contains_key(app) {
                return Err(AccountsError::NotFound(format!("no app {app}")));
            }
            if let Some(existing) = state.keys.get(&hash) {
                return Ok(existing.clone());
            }
        }
        let mut record = KeyRecord {
            id: key_id_of(&hash),
            app: app.to_string(),
            sha256: hash,
            budgets,
            created_at_ms: now_ms,
            revoked_at_ms: None,
        };
        if let BooksBackend::Shared(shared) = &self.backend {
            // Another replica may have installed it first: theirs stands.
            record = shared.pg.install_key(&record).await?;
        }
        let mut state = self.lock();
        if let Some(existing) = state.keys.get(&hash) {
            return Ok(existing.clone());
        }
        self.books.put_key(&record)?;
        state.key_hash_by_id.insert(record.id.clone(), hash);
        state.keys.insert(hash, record.clone());
        Ok(record)
    }

    pub fn keys(&self, app: &str) -> Vec<KeyRecord> {
        let state = self.lock();
        let mut keys: Vec<KeyRecord> = state
            .keys
            .values()
            .filter(|k| k.app == app)
            .cloned()
            .collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        keys
    }

    /// Revokes a key. On shared books every replica refuses it within
    /// [`super::backend::FOLLOW_INTERVAL`] (plus the time of its follow query).
    pub async fn revoke_key(&self, key_id: &str, now_ms: u64) -> Result<KeyRecord, AccountsError> {
        let not_found = || AccountsError::NotFound(format!("no key {key_id}"));
        let shared_record = match &self.backend {
            BooksBackend::Shared(shared) => Some(
                shared
                    .pg
                    .revoke_key(key_id, now_ms)
                    .await?
                    .ok_or_else(not_found)?,
            ),
            BooksBackend::Embedded => None,
        };
        let mut state = self.lock();
        let hash = match &shared_record {
            Some(k) => k.sha256,
            None => *state.key_hash_by_id.get(key_id).ok_or_else(not_found)?,
        };
        let key = match shared_record {
            Some(k) => k,
            None => {
                let mut k = state.keys.get(&hash).cloned().ok_or_else(not_found)?;
                if k.revoked_at_ms.is_none() {
                    k.revoked_at_ms = Some(now_ms);
                }
                k
            }
        };
        self.books.put_key(&key)?;
        state.key_hash_by_id.insert(key.id.clone(), hash);
        state.keys.insert(hash, key.clone());
        Ok(key)
    }
}
