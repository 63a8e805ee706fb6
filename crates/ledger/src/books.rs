//! The coordinator's books: builder apps, hashed API keys, top-ups, one
//! ledger entry per job (the countersigned receipt with who pays and the
//! charge breakdown), and signed settlement statements.
//!
//! Balances and spend are not stored: they are derived from top-ups and
//! entries when the coordinator starts, so a crash between "charge" and
//! "update balance" cannot happen — there is no second write.
//!
//! Entries are written through a group-commit thread: concurrent
//! [`Books::record`] calls are inserted together and made durable with one
//! flush, and each call returns only after that flush.
//!
//! Settled statements are read without their job id lists unless a caller
//! needs them: each statement has a head (the record with no job ids) for
//! listings, and a job id → label index ([`Books::settled_in`]) finds the
//! statement that settled a job, so reads cost the page asked for, not
//! every settled job.

use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use sharenet_market::{Charge, CountedBy, Margin};
use sharenet_proto::{CountersignedReceipt, JobId, NanoUsd, PublicKey};

use crate::error::StoreError;

use crate::stored::{AppRouting, Budgets, GenerationFacts, RateLimits};

/// A builder's app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub id: String,
    /// The builder (account) that owns the app.
    pub builder: String,
    pub name: String,
    pub margin: Margin,
    /// For the whole app.
    pub budgets: Budgets,
    /// For each end customer of the app.
    pub customer_budgets: Budgets,
    /// Per API key.
    pub key_limits: RateLimits,
    /// Per end customer.
    pub customer_limits: RateLimits,
    pub created_at_ms: u64,
    /// Routing rules (absent in apps stored before they existed).
    #[serde(default)]
    pub routing: AppRouting,
}

impl AppRecord {
    /// An app named after its id, with `margin`, no budgets, no rate
    /// limits and the default routing.
    pub fn new(id: &str, builder: &str, margin: Margin, created_at_ms: u64) -> Self {
        Self {
            id: id.into(),
            builder: builder.into(),
            name: id.into(),
            margin,
            budgets: Budgets::default(),
            customer_budgets: Budgets::default(),
            key_limits: RateLimits::default(),
            customer_limits: RateLimits::default(),
            created_at_ms,
            routing: AppRouting::default(),
        }
    }
}

/// An API key: only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public handle (the key's first characters), for listing and revoking.
    pub id: String,
    pub app: String,
    #[serde(with = "hex::serde")]
    pub sha256: [u8; 32],
    pub budgets: Budgets,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// Money added to an app's prepaid balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUp {
    pub app: String,
    pub amount: NanoUsd,
    pub at_ms: u64,
}

/// One job as the coordinator accounts for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub receipt: CountersignedReceipt,
    pub app: String,
    pub key_id: String,
    pub end_customer: Option<String>,
    pub charge: Charge,
    /// When the coordinator recorded it (decides its settlement period).
    pub recorded_at_ms: u64,
    /// Who counted the tokens charged; `None` for entries booked before
    /// this was kept. Not part of the signed receipt.
    pub counted_by: Option<CountedBy>,
}

#[derive(Serialize, Deserialize)]
struct EntryFile {
    #[serde(with = "hex::serde")]
    receipt: Vec<u8>,
    app: String,
    key_id: String,
    end_customer: Option<String>,
    charge: Charge,
    recorded_at_ms: u64,
    /// Absent in entries written before it was kept (they read back as
    /// before) and when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counted_by: Option<CountedBy>,
}

impl LedgerEntry {
    pub fn job_id(&self) -> JobId {
        self.receipt.receipt().job_id
    }

    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(&EntryFile {
            receipt: self.receipt.to_bytes(),
            app: self.app.clone(),
            key_id: self.key_id.clone(),
            end_customer: self.end_customer.clone(),
            charge: self.charge,
            recorded_at_ms: self.recorded_at_ms,
            counted_by: self.counted_by,
        })
        .map_err(|e| StoreError::Backend(format!("encode entry: {e}")))
    }

    /// Decodes and re-verifies the receipt's signatures.
    pub(crate) fn from_bytes(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: hex::encode(key),
            reason,
        };
        let (_, json) = split_entry(bytes);
        let f: EntryFile = serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
        let receipt =
            CountersignedReceipt::from_bytes(&f.receipt).map_err(|e| corrupt(e.to_string()))?;
        Self::from_parts(key, receipt, f)
    }

    /// An entry from its verified receipt and the rest of its record.
    fn from_parts(
        key: &[u8],
        receipt: CountersignedReceipt,
        f: EntryFile,
    ) -> Result<Self, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            id: hex::encode(key),
            reason: reason.to_string(),
        };
        if receipt.receipt().amount != f.charge.provider_cost || !f.charge.balances() {
            return Err(corrupt("charge does not match the receipt amount"));
        }
        if receipt.receipt().job_id.0 != key {
            return Err(corrupt("stored under another job id"));
        }
        Ok(Self {
            receipt,
            app: f.app,
            key_id: f.key_id,
            end_customer: f.end_customer,
            charge: f.charge,
            recorded_at_ms: f.recorded_at_ms,
            counted_by: f.counted_by,
        })
    }
}

/// A pending insert for the group-commit thread.
struct Commit {
    key: [u8; 16],
    value: Vec<u8>,
    /// The entry's key in the per-app index.
    index_key: Vec<u8>,
    /// Called once with the outcome, on the commit thread.
    done: Done,
}

/// What the commit thread calls with an insert's outcome.
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A key of the per-app index: the app, a zero byte, the time the entry
/// was recorded (big-endian ms) and the job id, so one app's entries are
/// one range, in time order.
fn app_index_key(app: &str, at_ms: u64, job: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(app.len() + 1 + 8 + 16);
    k.extend_from_slice(app.as_bytes());
    k.push(0);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(job);
    k
}

fn app_prefix(app: &str) -> Vec<u8> {
    let mut k = app.as_bytes().to_vec();
    k.push(0);
    k
}

/// Inserts waiting at most this many to share one flush.
const MAX_GROUP: usize = 4096;

/// The books, in sled.
pub struct Books {
    db: sled::Db,
    entries: sled::Tree,
    apps: sled::Tree,
    keys: sled::Tree,
    topups: sled::Tree,
    statements: sled::Tree,
    /// Job id → its [`GenerationFacts`] (JSON).
    generations: sled::Tree,
    /// Per-app index of `entries` ([`app_index_key`] → nothing).
    by_app: sled::Tree,
    /// Name → value, for callers ([`Books::put_meta`]).
    meta: sled::Tree,
    /// Label → the statement record without its job ids (listings).
    statement_heads: sled::Tree,
    /// Job id → the label of the statement that settled it.
    settled_in: sled::Tree,
    /// Statement records decoded so far, heads included (a diagnostic:
    /// tests check a read touched only what it should).
    statements_decoded: std::sync::atomic::AtomicU64,
    committer: Mutex<Option<mpsc::SyncSender<Commit>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// MAC key for entries ([`Books::open_keyed`]).
    mac_key: Option<[u8; 32]>,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(format!("encode: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        id: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// An entry's record, and its receipt when its MAC vouched for it.
type Decoded = (EntryFile, Option<CountersignedReceipt>);

/// First byte of an entry stored with a MAC (a JSON entry starts with `{`).
const MAC_TAG: u8 = 1;
type Mac = hmac::Hmac<sha2::Sha256>;

/// The MAC of an entry: over its job id and its JSON bytes. (HMAC takes
/// keys of any length, so `None` does not happen.)
fn entry_mac(key: &[u8; 32], job: &[u8], json: &[u8]) -> Option<[u8; 32]> {
    use hmac::Mac as _;
    let mut m = <Mac as hmac::digest::KeyInit>::new_from_slice(key).ok()?;
    m.update(&(job.len() as u64).to_be_bytes());
    m.update(job);
    m.update(json);
    Some(m.finalize().into_bytes().into())
}

/// Splits a stored entry into its MAC (if it has one) and its JSON.
fn split_entry(v: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match v.first() {
        Some(&MAC_TAG) if v.len() > 33 => (v.get(1..33), v.get(33..).unwrap_or_default()),
        _ => (None, v),
    }
}

impl Books {
    /// Opens (or creates) the books in the folder `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = crate::db::open_db(path)?;
        let entries = db.open_tree("entries")?;
        let by_app = db.open_tree("entries_by_app")?;
        // Books from before the index get it built once.
        if by_app.is_empty() && !entries.is_empty() {
            for kv in entries.iter() {
                let (k, v) = kv?;
                let e = LedgerEntry::from_bytes(&k, &v)?;
                by_app.insert(app_index_key(&e.app, e.recorded_at_ms, &e.job_id().0), &[])?;
            }
            db.flush()?;
        }
        let (tx, rx) = mpsc::sync_channel::<Commit>(MAX_GROUP);
        let (tdb, tentries, tindex) = (db.clone(), entries.clone(), by_app.clone());
        let thread = std::thread::Builder::new()
            .name("sharenet-ledger-commit".into())
            .spawn(move || group_commit(tdb, tentries, tindex, rx))
            .map_err(|e| StoreError::Backend(format!("spawn commit thread: {e}")))?;
        let books = Self {
            apps: db.open_tree("apps")?,
            keys: db.open_tree("keys")?,
            topups: db.open_tree("topups")?,
            statements: db.open_tree("statements")?,
            generations: db.open_tree("generations")?,
            meta: db.open_tree("meta")?,
            statement_heads: db.open_tree("statement_heads")?,
            settled_in: db.open_tree("settled_in")?,
            statements_decoded: std::sync::atomic::AtomicU64::new(0),
            entries,
            by_app,
            db,
            committer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            mac_key: None,
        };
        books.index_statements()?;
        Ok(books)
    }

    /// Gives every statement without a head its index entries and head:
    /// statements stored before the index existed, and one whose indexing
    /// a crash cut short (the head is written last, so a statement with a
    /// head is fully indexed). One key lookup per statement otherwise.
    fn index_statements(&self) -> Result<(), StoreError> {
        let mut indexed = false;
        for kv in self.statements.iter() {
            let (k, v) = kv?;
            if self.statement_heads.contains_key(&k)? {
                continue;
            }
            // A record that does not decode stays unindexed (as before the
            // index, reading it is the error; opening is not).
            let Ok(record) = StatementRecord::from_bytes(&String::from_utf8_lossy(&k), &v) else {
                continue;
            };
            self.index_statement(&record)?;
            indexed = true;
        }
        if indexed {
            self.db.flush()?;
        }
        Ok(())
    }

    /// Writes `record`'s job id → label entries, then its head.
    fn index_statement(&self, record: &StatementRecord) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for id in &record.job_ids {
            batch.insert(&id.0, record.label.as_bytes());
        }
        self.settled_in.apply_batch(batch)?;
        let head = StatementRecord {
            job_ids: Vec::new(),
            ..record.clone()
        };
        self.statement_heads
            .insert(record.label.as_bytes(), head.to_bytes()?)?;
        Ok(())
    }

    /// As [`Books::open`], and every entry written from now on carries a MAC
    /// under `mac_key` (a secret derived from the coordinator's own key).
    /// Bulk reads ([`Books::all_entries_of`]) then check the MAC, about a
    /// microsecond, instead of a signature; entries written without a MAC
    /// get their signatures checked as before, and an entry whose MAC does
    /// not match is corruption.
    pub fn open_keyed(path: &Path, mac_key: [u8; 32]) -> Result<Self, StoreError> {
        let mut books = Self::open(path)?;
        books.mac_key = Some(mac_key);
        Ok(books)
    }

    /// Records a job's entry once (a replayed job id is
    /// [`StoreError::Duplicate`]); durable when it returns. Blocking.
    pub fn record(&self, entry: &LedgerEntry) -> Result<(), StoreError> {
        let (done, wait) = mpsc::sync_channel(1);
        self.record_then(
            entry,
            Box::new(move |r| {
                let _ = done.send(r);
            }),
        )?;
        wait.recv()
            .map_err(|_| StoreError::Backend("the commit thread stopped".into()))?
    }

    /// [`Books::record`] without waiting: `done` is called (on the commit
    /// thread) once the entry is durable or refused, so async code can
    /// await a channel instead of blocking a thread. An error here means
    /// `done` will not be called.
    pub fn record_then(&self, entry: &LedgerEntry, done: Done) -> Result<(), StoreError> {
        let key = entry.job_id().0;
        let json = entry.to_bytes()?;
        let value = match self.mac_key.and_then(|k| entry_mac(&k, &key, &json)) {
            None => json,
            Some(mac) => {
                let mut v = Vec::with_capacity(33 + json.len());
                v.push(MAC_TAG);
                v.extend_from_slice(&mac);
                v.extend_from_slice(&json);
                v
            }
        };
        let commit = Commit {
            key,
            value,
            index_key: app_index_key(&entry.app, entry.recorded_at_ms, &key),
            done,
        };
        let sender = self
            .committer
            .lock()
            .map_err(|_| StoreError::Backend("commit lock poisoned".into()))?
            .clone()
            .ok_or_else(|| StoreError::Backend("the books are closed".into()))?;
        sender
            .send(commit)
            .map_err(|_| StoreError::Backend("the commit thread stopped".into()))
    }

    pub fn entry(&self, id: &JobId) -> Result<Option<LedgerEntry>, StoreError> {
        self.entries
            .get(id.0)?
            .map(|v| LedgerEntry::from_bytes(&id.0, &v))
            .transpose()
    }

    /// `app`'s entries recorded in `[since_ms, until_ms)`, oldest first
    /// (re-verified), through the per-app index: the cost is that app's
    /// entries in the range, never the whole ledger.
    pub fn entries_of_app(
        &self,
        app: &str,
        since_ms: u64,
        until_ms: u64,
    ) -> impl Iterator<Item = Result<LedgerEntry, StoreError>> + '_ {
        let prefix = app_prefix(app);
        let bound = |t: u64| {
            let mut k = prefix.clone();
            k.extend_from_slice(&t.to_be_bytes());
            k
        };
        self.by_app
            .range(bound(since_ms)..bound(until_ms))
            .filter_map(move |kv| self.indexed_entry(kv))
    }

    /// The entry an app-index key names. An index key whose entry never
    /// landed (a crash between the two inserts, or a refused replay) lists
    /// nothing.
    fn indexed_entry(
        &self,
        kv: sled::Result<(sled::IVec, sled::IVec)>,
    ) -> Option<Result<LedgerEntry, StoreError>> {
        let id = match kv {
            Ok((k, _)) => k
                .get(k.len().saturating_sub(16)..)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())?,
            Err(e) => return Some(Err(e.into())),
        };
        self.entry(&JobId(id)).transpose()
    }

    /// An app's `limit` most recently recorded entries, newest first.
    pub fn recent_entries_of_app(
        &self,
        app: &str,
        limit: usize,
    ) -> impl Iterator<Item = Result<LedgerEntry, StoreError>> + '_ {
        self.by_app
            .scan_prefix(app_prefix(app))
            .rev()
            .filter_map(move |kv| self.indexed_entry(kv))
            .take(limit)
    }

    /// Every entry, in job id order (re-verified).
    pub fn entries(&self) -> impl Iterator<Item = Result<LedgerEntry, StoreError>> + '_ {
        self.entries.iter().map(|kv| {
            let (k, v) = kv?;
            LedgerEntry::from_bytes(&k, &v)
        })
    }

    /// Every entry, in job id order, when this ledger belongs to the
    /// coordinator `own_key`: each receipt's countersignature by that key is
    /// checked (batched, on every core), which is enough because it covers
    /// the node's signature as well (see
    /// [`sharenet_proto::verify_own_countersigned_batch`]); receipts
    /// countersigned by another key (before a key change) get both
    /// signatures checked. About 2.5× faster than
    /// [`Books::all_entries`] on two cores; for start-up and settlement.
    pub fn all_entries_of(&self, own_key: &PublicKey) -> Result<Vec<LedgerEntry>, StoreError> {
        let raw: Vec<(sled::IVec, sled::IVec)> = self.entries.iter().collect::<Result<_, _>>()?;
        // Decoding the JSON costs as much as the signature checks: spread
        // it over the cores too.
        let threads = std::thread::available_parallelism()
            .map(std::num::NonZeroUsize::get)
            .unwrap_or(1)
            .clamp(1, 16);
        // Decode each entry and check its MAC; an entry whose MAC checks out
        // has its receipt decoded as is (its signatures were verified before
        // it was written), the others go to the signature check below.
        let mac_key = self.mac_key;
        let decode = |part: &[(sled::IVec, sled::IVec)]| -> Result<Vec<Decoded>, StoreError> {
            part.iter()
                .map(|(k, v)| {
                    let corrupt = |reason: String| StoreError::Corrupt {
                        id: hex::encode(k),
                        reason,
                    };
                    let (mac, json) = split_entry(v);
                    let f: EntryFile =
                        serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
                    let trusted = match (mac, &mac_key) {
                        (Some(mac), Some(key)) => {
                            if entry_mac(key, k, json).is_none_or(|m| m.as_slice() != mac) {
                                return Err(corrupt(
                                    "its MAC does not match (altered, or written under another coordinator key)"
                                        .into(),
                                ));
                            }
                            Some(
                                CountersignedReceipt::from_trusted_bytes(&f.receipt)
                                    .map_err(|e| corrupt(e.to_string()))?,
                            )
                        }
                        // Unkeyed books, or an entry from before MACs: the
                        // signatures decide.
                        _ => None,
                    };
                    Ok((f, trusted))
                })
                .collect()
        };
        let per = raw.len().div_ceil(threads).max(1);
        let parts: Vec<Result<Vec<Decoded>, StoreError>> = std::thread::scope(|s| {
            let handles: Vec<_> = raw
                .chunks(per)
                .map(|p| s.spawn(move || decode(p)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(StoreError::Backend(
                            "an entry decoding thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut files = Vec::with_capacity(raw.len());
        for part in parts {
            files.extend(part?);
        }
        let unchecked: Vec<&[u8]> = files
            .iter()
            .filter(|(_, t)| t.is_none())
            .map(|(f, _)| f.receipt.as_slice())
            .collect();
        let mut checked = sharenet_proto::verify_own_countersigned_batch(&unchecked, own_key)
            .map_err(|e| StoreError::Corrupt {
                id: "entries".into(),
                reason: e.to_string(),
            })?
            .into_iter();
        drop(unchecked);
        raw.iter()
            .zip(files)
            .map(|((key, _), (f, trusted))| {
                let receipt = match trusted {
                    Some(r) => r,
                    None => checked
                        .next()
                        .ok_or_else(|| StoreError::Backend("receipt check lost an entry".into()))?,
                };
                LedgerEntry::from_parts(key, receipt, f)
            })
            .collect()
    }

    /// Every entry, in job id order, with the receipts' signatures checked
    /// in batches (about 4× faster than [`Books::entries`]; for start-up
    /// and settlement, which read everything).
    pub fn all_entries(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        const CHUNK: usize = 4096;
        let mut out = Vec::with_capacity(self.entries.len());
        let mut pending: Vec<(sled::IVec, EntryFile)> = Vec::with_capacity(CHUNK);
        let flush = |pending: &mut Vec<(sled::IVec, EntryFile)>,
                     out: &mut Vec<LedgerEntry>|
         -> Result<(), StoreError> {
            let bytes: Vec<&[u8]> = pending.iter().map(|(_, f)| f.receipt.as_slice()).collect();
            let receipts = sharenet_proto::verify_countersigned_batch(&bytes).map_err(|e| {
                StoreError::Corrupt {
                    id: "entries".into(),
                    reason: e.to_string(),
                }
            })?;
            for ((key, f), receipt) in pending.drain(..).zip(receipts) {
                out.push(LedgerEntry::from_parts(&key, receipt, f)?);
            }
            Ok(())
        };
        for kv in self.entries.iter() {
            let (k, v) = kv?;
            let f: EntryFile =
                serde_json::from_slice(split_entry(&v).1).map_err(|e| StoreError::Corrupt {
                    id: hex::encode(&k),
                    reason: e.to_string(),
                })?;
            pending.push((k, f));
            if pending.len() == CHUNK {
                flush(&mut pending, &mut out)?;
            }
        }
        if !pending.is_empty() {
            flush(&mut pending, &mut out)?;
        }
        Ok(out)
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    fn put<T: Serialize>(&self, tree: &sled::Tree, key: &[u8], v: &T) -> Result<(), StoreError> {
        tree.insert(key, encode(v)?)?;
        self.db.flush()?;
        Ok(())
    }

    fn all<T: for<'de> Deserialize<'de>>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn put_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        self.put(&self.apps, app.id.as_bytes(), app)
    }

    pub fn apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        Self::all(&self.apps)
    }

    pub fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.put(&self.keys, key.id.as_bytes(), key)
    }

    pub fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        Self::all(&self.keys)
    }

    /// Appends a top-up (durable when it returns).
    pub fn add_topup(&self, topup: &TopUp) -> Result<(), StoreError> {
        let id = self.db.generate_id()?;
        self.put(&self.topups, &id.to_be_bytes(), topup)
    }

    /// Stores a top-up under a known id (a replica's copy of a shared
    /// top-up), once: false when it was already there. Durable when it
    /// returns.
    pub fn put_topup(&self, id: u64, topup: &TopUp) -> Result<bool, StoreError> {
        let swapped = self.topups.compare_and_swap(
            id.to_be_bytes(),
            None as Option<&[u8]>,
            Some(encode(topup)?),
        )?;
        if swapped.is_err() {
            return Ok(false);
        }
        self.db.flush()?;
        Ok(true)
    }

    /// A value a caller keeps beside the books (e.g. how far a replica has
    /// followed the shared books). Durable when it returns.
    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(name.as_bytes(), value)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(name.as_bytes())?.map(|v| v.to_vec()))
    }

    pub fn topups(&self) -> Result<Vec<TopUp>, StoreError> {
        Self::all(&self.topups)
    }

    /// Keeps a booked job's facts for `generation` lookups. Not flushed
    /// here: they ride on the next flush of the books (a crash may lose
    /// the last few; the money is in the entries).
    pub fn put_generation(&self, job: &JobId, g: &GenerationFacts) -> Result<(), StoreError> {
        self.generations.insert(job.0, encode(g)?)?;
        Ok(())
    }

    /// A job's facts, if it was booked.
    pub fn generation(&self, job: &JobId) -> Result<Option<GenerationFacts>, StoreError> {
        self.generations
            .get(job.0)?
            .map(|v| decode(&job.0, &v))
            .transpose()
    }

    /// Stores a signed statement under its period label, once, then its
    /// index entries and head (see [`Books::settled_in`]). Durable when it
    /// returns.
    pub fn put_statement(&self, record: &StatementRecord) -> Result<(), StoreError> {
        let value = record.to_bytes()?;
        let swapped = self.statements.compare_and_swap(
            record.label.as_bytes(),
            None as Option<&[u8]>,
            Some(value),
        )?;
        if swapped.is_err() {
            return Err(StoreError::Backend(format!(
                "period {} is already settled",
                record.label
            )));
        }
        self.index_statement(record)?;
        self.db.flush()?;
        Ok(())
    }

    fn decoded(&self, label: &str, v: &[u8]) -> Result<StatementRecord, StoreError> {
        self.statements_decoded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        StatementRecord::from_bytes(label, v)
    }

    /// One statement with its job ids.
    pub fn statement(&self, label: &str) -> Result<Option<StatementRecord>, StoreError> {
        self.statements
            .get(label.as_bytes())?
            .map(|v| self.decoded(label, &v))
            .transpose()
    }

    /// Every statement with its job ids, in label order (settlement reads
    /// them all; listings read [`Books::statement_heads`]).
    pub fn statements(&self) -> Result<Vec<StatementRecord>, StoreError> {
        self.statements
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                self.decoded(&String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }

    /// Up to `limit` statements after the label `after` (from the first
    /// without it), in label order, each without its job ids (`job_ids`
    /// empty): the cost is the page, not the settled jobs.
    pub fn statement_heads(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StatementRecord>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        self.statement_heads
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                self.decoded(&String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }

    /// The label of the statement that settled `job`, if one has: one
    /// index lookup, whatever the number of statements.
    pub fn settled_in(&self, job: &JobId) -> Result<Option<String>, StoreError> {
        Ok(self
            .settled_in
            .get(job.0)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// How many statement records (heads included) the books have decoded
    /// since they were opened. For tests and diagnostics: a read that
    /// should touch one statement can be shown to.
    pub fn statements_decoded(&self) -> u64 {
        self.statements_decoded
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The first byte of a stored statement record. Format 1 (no byte, no
/// builder lines) predates builder privacy and is refused as corrupt.
const STATEMENT_RECORD_FORMAT: u8 = 2;

/// A settled period as stored: the signed statement's bytes (public), its
/// builder lines' bytes (private: `Settlement::lines_bytes`), when it was
/// settled, and the job ids it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRecord {
    pub label: String,
    pub statement: Vec<u8>,
    pub builder_lines: Vec<u8>,
    pub settled_at_ms: u64,
    pub job_ids: Vec<JobId>,
}

impl StatementRecord {
    /// The stored form: format byte, the two parts with u32 lengths, the
    /// settlement time, then the job ids.
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, StoreError> {
        let mut value = Vec::with_capacity(
            1 + 16 + self.statement.len() + self.builder_lines.len() + 16 * self.job_ids.len(),
        );
        value.push(STATEMENT_RECORD_FORMAT);
        for part in [&self.statement, &self.builder_lines] {
            let len = u32::try_from(part.len())
                .map_err(|_| StoreError::Backend("statement part over 4 GiB".into()))?;
            value.extend_from_slice(&len.to_be_bytes());
            value.extend_from_slice(part);
        }
        value.extend_from_slice(&self.settled_at_ms.to_be_bytes());
        for id in &self.job_ids {
            value.extend_from_slice(&id.0);
        }
        Ok(value)
    }

    pub(crate) fn from_bytes(label: &str, v: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            id: label.to_string(),
            reason: reason.to_string(),
        };
        let rest = match v.split_first() {
            Some((&STATEMENT_RECORD_FORMAT, rest)) => rest,
            _ => {
                return Err(corrupt(
                    "not a format 2 record (format 1 kept builder lines in the clear)",
                ));
            }
        };
        let part = |v: &'_ [u8]| -> Result<(Vec<u8>, usize), StoreError> {
            let (len, rest) = v.split_at_checked(4).ok_or_else(|| corrupt("truncated"))?;
            let len = u32::from_be_bytes(len.try_into().map_err(|_| corrupt("length"))?) as usize;
            let body = rest.get(..len).ok_or_else(|| corrupt("truncated part"))?;
            Ok((body.to_vec(), 4 + len))
        };
        let (statement, used) = part(rest)?;
        let rest = &rest[used..];
        let (builder_lines, used) = part(rest)?;
        let rest = &rest[used..];
        let (at, ids) = rest
            .split_at_checked(8)
            .ok_or_else(|| corrupt("truncated time"))?;
        if !ids.len().is_multiple_of(16) {
            return Err(corrupt("job id list"));
        }
        Ok(Self {
            label: label.to_string(),
            statement,
            builder_lines,
            settled_at_ms: u64::from_be_bytes(at.try_into().map_err(|_| corrupt("time"))?),
            job_ids: ids
                .chunks_exact(16)
                .map(|c| {
                    let mut id = [0u8; 16];
                    id.copy_from_slice(c);
                    JobId(id)
                })
                .collect(),
        })
    }
}

impl Drop for Books {
    fn drop(&mut self) {
        if let Ok(mut c) = self.committer.lock() {
            c.take();
        }
        if let Ok(mut t) = self.thread.lock()
            && let Some(t) = t.take()
        {
            let _ = t.join();
        }
    }
}

/// Writes each entry's index key before the entry itself: sled recovers a
/// prefix of the writes, so an entry that survives a crash is indexed.
fn group_commit(db: sled::Db, entries: sled::Tree, by_app: sled::Tree, rx: mpsc::Receiver<Commit>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let mut inserted = Vec::with_capacity(group.len());
        for c in group {
            // This thread is the only writer of entries, so "absent now"
            // holds until the insert below.
            match entries.contains_key(c.key) {
                Ok(false) => {}
                Ok(true) => {
                    (c.done)(Err(StoreError::Duplicate(JobId(c.key))));
                    continue;
                }
                Err(e) => {
                    (c.done)(Err(e.into()));
                    continue;
                }
            }
            let written = by_app
                .insert(c.index_key.as_slice(), &[])
                .and_then(|_| entries.insert(c.key, c.value.as_slice()));
            match written {
                Ok(_) => inserted.push(c),
                Err(e) => {
                    (c.done)(Err(e.into()));
                }
            }
        }
        let flushed = db.flush().map(|_| ()).map_err(|e| e.to_string());
        for c in inserted {
            (c.done)(flushed.clone().map_err(StoreError::Backend));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sharenet_proto::{Receipt, SignedReceipt, SigningKey, public_key_of};

    /// Entries written before `counted_by` was kept read back as before
    /// and are written the same; a kept one survives the round trip.
    #[test]
    fn counted_by_is_kept_and_old_entries_read_back_unchanged() {
        let old = entry(1, "a", 5);
        let bytes = old.to_bytes().unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("counted_by"));
        let back = LedgerEntry::from_bytes(&old.job_id().0, &bytes).unwrap();
        assert_eq!(back, old);
        let counted = LedgerEntry {
            counted_by: Some(CountedBy::Coordinator),
            ..entry(2, "a", 5)
        };
        let bytes = counted.to_bytes().unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains(r#""counted_by":"coordinator""#));
        let back = LedgerEntry::from_bytes(&counted.job_id().0, &bytes).unwrap();
        assert_eq!(back, counted);
    }

    pub(crate) fn entry(id: u32, app: &str, at: u64) -> LedgerEntry {
        let node = SigningKey::from_bytes(&[1; 32]);
        let coord = SigningKey::from_bytes(&[2; 32]);
        let mut job = [0u8; 16];
        job[..4].copy_from_slice(&id.to_be_bytes());
        let receipt = Receipt {
            job_id: JobId(job),
            node: public_key_of(&node),
            coordinator: public_key_of(&coord),
            model: "m".into(),
            input_tokens: 3,
            output_tokens: 4,
            price_in: 10,
            price_out: 20,
            amount: 110,
            started_at_ms: 1,
            finished_at_ms: 2,
            request_digest: [0; 32],
            response_digest: [0; 32],
        };
        let signed = SignedReceipt::sign(receipt, &node).unwrap();
        let receipt = CountersignedReceipt::countersign(signed, &coord).unwrap();
        let charge =
            sharenet_market::pricing::charge_receipt(receipt.receipt(), 500, &Margin::default())
                .unwrap();
        LedgerEntry {
            receipt,
            app: app.into(),
            key_id: "key_1".into(),
            end_customer: Some("c".into()),
            charge,
            recorded_at_ms: at,
            counted_by: None,
        }
    }

    #[test]
    fn books_reopen_at_once_after_a_close_in_the_same_process() {
        // sled's flusher may still hold the file lock for a moment after a
        // close; a restart in place waits for it instead of failing.
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20u32 {
            let books = Books::open(dir.path()).unwrap();
            books.record(&entry(i, "a", 5)).unwrap();
            drop(books);
        }
        assert_eq!(Books::open(dir.path()).unwrap().entry_count(), 20);
    }

    #[test]
    fn concurrent_records_are_durable_once_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let books = std::sync::Arc::new(Books::open(dir.path()).unwrap());
            let threads: Vec<_> = (0..8u32)
                .map(|t| {
                    let books = books.clone();
                    std::thread::spawn(move || {
                        for i in 0..50u32 {
                            books.record(&entry(t * 1000 + i, "a", 5)).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert!(matches!(
                books.record(&entry(3, "a", 5)),
                Err(StoreError::Duplicate(_))
            ));
            books
                .add_topup(&TopUp {
                    app: "a".into(),
                    amount: 7,
                    at_ms: 1,
                })
                .unwrap();
        }
        let books = Books::open(dir.path()).unwrap();
        assert_eq!(books.entry_count(), 400);
        assert_eq!(books.entries().filter(|e| e.is_ok()).count(), 400);
        let all = books.all_entries().unwrap();
        assert_eq!(all.len(), 400);
        assert!(
            all.iter()
                .zip(books.entries())
                .all(|(a, b)| *a == b.unwrap())
        );
        assert_eq!(
            books.entry(&entry(1003, "a", 5).job_id()).unwrap(),
            Some(entry(1003, "a", 5))
        );
        assert_eq!(books.topups().unwrap().len(), 1);
    }

    #[test]
    fn keyed_books_are_read_back_through_their_macs_and_catch_changes() {
        let dir = tempfile::tempdir().unwrap();
        let own = public_key_of(&SigningKey::from_bytes(&[2; 32]));
        let key = [9u8; 32];
        {
            // Two entries from before MACs, then keyed ones.
            let books = Books::open(dir.path()).unwrap();
            books.record(&entry(1, "old", 5)).unwrap();
            books.record(&entry(2, "old", 5)).unwrap();
        }
        let books = Books::open_keyed(dir.path(), key).unwrap();
        for i in 3..40 {
            books.record(&entry(i, "a", 5)).unwrap();
        }
        let fast = books.all_entries_of(&own).unwrap();
        let slow = books.all_entries().unwrap();
        assert_eq!(fast.len(), 39);
        assert_eq!(fast, slow, "MAC path = both signatures checked");
        assert_eq!(
            books.entry(&entry(7, "a", 5).job_id()).unwrap(),
            Some(entry(7, "a", 5))
        );
        // A changed field the signatures do not cover (the app) is caught
        // by the MAC.
        let id = entry(9, "a", 5).job_id();
        let stored = books.entries.get(id.0).unwrap().unwrap().to_vec();
        let text = String::from_utf8_lossy(&stored[33..]).replace("\"app\":\"a\"", "\"app\":\"b\"");
        let mut tampered = stored[..33].to_vec();
        tampered.extend_from_slice(text.as_bytes());
        books.entries.insert(id.0, tampered).unwrap();
        let err = books.all_entries_of(&own).unwrap_err();
        assert!(err.to_string().contains("MAC"), "{err}");
    }

    #[test]
    fn each_apps_entries_are_listed_from_its_own_index_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let books = Books::open(dir.path()).unwrap();
            books.record(&entry(1, "a", 300)).unwrap();
            books.record(&entry(2, "b", 100)).unwrap();
            books.record(&entry(3, "a", 100)).unwrap();
            books.record(&entry(4, "a", 200)).unwrap();
            assert!(matches!(
                books.record(&entry(4, "a", 200)),
                Err(StoreError::Duplicate(_))
            ));
        }
        let books = Books::open(dir.path()).unwrap();
        let ids = |app: &str, since: u64, until: u64| -> Vec<u32> {
            books
                .entries_of_app(app, since, until)
                .map(|e| {
                    let id = e.unwrap().job_id().0;
                    u32::from_be_bytes([id[0], id[1], id[2], id[3]])
                })
                .collect()
        };
        assert_eq!(
            ids("a", 0, u64::MAX),
            vec![3, 4, 1],
            "oldest first, after a reopen"
        );
        assert_eq!(ids("a", 150, 300), vec![4]);
        assert_eq!(ids("b", 0, u64::MAX), vec![2]);
        assert!(ids("ab", 0, u64::MAX).is_empty(), "no prefix confusion");
        let recent: Vec<u32> = books
            .recent_entries_of_app("a", 2)
            .map(|e| {
                let id = e.unwrap().job_id().0;
                u32::from_be_bytes([id[0], id[1], id[2], id[3]])
            })
            .collect();
        assert_eq!(recent, vec![1, 4], "newest first, at most the limit");

        // Books written before the index get it built when opened.
        books.by_app.clear().unwrap();
        books.db.flush().unwrap();
        assert_eq!(books.entries_of_app("a", 0, u64::MAX).count(), 0);
        drop(books);
        let books = Books::open(dir.path()).unwrap();
        assert_eq!(books.entries_of_app("a", 0, u64::MAX).count(), 3);
    }

    #[test]
    fn statements_are_stored_once_with_their_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let books = Books::open(dir.path()).unwrap();
        let record = StatementRecord {
            label: "2026-11".into(),
            statement: vec![1, 2, 3],
            builder_lines: vec![4, 5],
            settled_at_ms: 9,
            job_ids: vec![JobId([1; 16]), JobId([2; 16])],
        };
        books.put_statement(&record).unwrap();
        assert!(books.put_statement(&record).is_err());
        assert_eq!(books.statement("2026-11").unwrap(), Some(record.clone()));
        assert_eq!(books.statements().unwrap(), vec![record]);
        // A format 1 record (length first, no builder lines) is refused by
        // name, not misread.
        books
            .statements
            .insert(
                "2026-10",
                [0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 9].to_vec(),
            )
            .unwrap();
        assert!(matches!(
            books.statement("2026-10"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    fn settled(label: &str, jobs: std::ops::Range<u8>) -> StatementRecord {
        StatementRecord {
            label: label.into(),
            statement: label.as_bytes().to_vec(),
            builder_lines: vec![7],
            settled_at_ms: 1,
            job_ids: jobs.map(|j| JobId([j; 16])).collect(),
        }
    }

    /// Issue 26, item 9: the statement that settled a job is one index
    /// lookup, and listings page through heads without job ids. Before the
    /// index, finding a job's statement decoded every statement (and a
    /// corrupt one anywhere failed every lookup).
    #[test]
    fn a_jobs_statement_is_one_lookup_and_listings_page_without_job_ids() {
        let dir = tempfile::tempdir().unwrap();
        let books = Books::open(dir.path()).unwrap();
        for (i, label) in ["2026-01", "2026-02", "2026-03", "2026-04"]
            .iter()
            .enumerate()
        {
            let first = 10 * i as u8;
            books
                .put_statement(&settled(label, first..first + 10))
                .unwrap();
        }
        // A record nobody can decode, among them: a lookup must not touch it.
        books.statements.insert("2026-00", vec![9, 9, 9]).unwrap();
        let before = books.statements_decoded();
        assert_eq!(
            books.settled_in(&JobId([25; 16])).unwrap().as_deref(),
            Some("2026-03")
        );
        assert_eq!(books.settled_in(&JobId([99; 16])).unwrap(), None);
        assert_eq!(books.statements_decoded(), before, "no statement decoded");
        let page = books.statement_heads(None, 2).unwrap();
        let labels: Vec<&str> = page.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["2026-01", "2026-02"]);
        assert!(page.iter().all(|r| r.job_ids.is_empty()));
        assert_eq!(page[1].statement, b"2026-02");
        let next = books.statement_heads(Some("2026-02"), 100).unwrap();
        let labels: Vec<&str> = next.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["2026-03", "2026-04"]);
        assert_eq!(
            books.statements_decoded(),
            before + 4,
            "one per listed head"
        );
    }

    /// Books from before the index (statements, no heads) get it built
    /// when they open, once.
    #[test]
    fn books_from_before_the_index_are_indexed_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        {
            let books = Books::open(dir.path()).unwrap();
            books.put_statement(&settled("2026-05", 1..4)).unwrap();
            books.statement_heads.clear().unwrap();
            books.settled_in.clear().unwrap();
            books.db.flush().unwrap();
            assert_eq!(books.settled_in(&JobId([2; 16])).unwrap(), None);
        }
        let books = Books::open(dir.path()).unwrap();
        assert_eq!(
            books.settled_in(&JobId([2; 16])).unwrap().as_deref(),
            Some("2026-05")
        );
        assert_eq!(books.statement_heads(None, 10).unwrap().len(), 1);
    }
}
