//! Opening a sled database, shared by the receipt store and the books.

use std::path::Path;

use crate::error::StoreError;

/// The longest a write made with `ReceiptStore::upsert_soon` waits for a
/// flush (sled's background flusher).
pub const BACKGROUND_FLUSH_MS: u64 = 500;

/// Opens a sled database, waiting up to two seconds for its file lock:
/// a store closed a moment ago in this process (a restart in place) may
/// still be releasing it from sled's background flusher. Any other error,
/// or a lock still held after that (another process has the store), is
/// returned at once.
pub(crate) fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let opened = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(BACKGROUND_FLUSH_MS))
            .open();
        match opened {
            Ok(db) => return Ok(db),
            // sled reports a held lock as an `Other` I/O error whose text
            // names it.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(e) => {
                return Err(StoreError::Backend(format!("open {}: {e}", path.display())));
            }
        }
    }
}
