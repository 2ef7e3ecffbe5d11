//! State stores: `file` (local, atomic) and `memory` (tests). The SSM store comes with issue 3.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::ports::{StateStore, StoreError};
use crate::record::Record;

/// One JSON file per runner in a directory. A save writes a temporary file, fsyncs it, renames
/// it over the record and fsyncs the directory: a crash leaves the old or the new record, never
/// a torn one.
#[derive(Debug, Clone)]
pub struct FileStore {
    directory: PathBuf,
}

impl FileStore {
    /// A store in `directory` (created on first save).
    #[must_use]
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        FileStore {
            directory: directory.into(),
        }
    }

    fn path(&self, runner: &str) -> Result<PathBuf, StoreError> {
        let safe = !runner.is_empty()
            && runner.len() <= 64
            && runner
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !safe {
            return Err(StoreError::Io(format!(
                "runner name {runner:?} is not a safe file name"
            )));
        }
        Ok(self.directory.join(format!("{runner}.json")))
    }
}

fn io(context: &str, path: &Path, error: &std::io::Error) -> StoreError {
    StoreError::Io(format!("{context} {}: {error}", path.display()))
}

fn write_atomically(directory: &Path, path: &Path, text: &str) -> Result<(), StoreError> {
    std::fs::create_dir_all(directory).map_err(|e| io("creating", directory, &e))?;
    let temporary = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&temporary).map_err(|e| io("creating", &temporary, &e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| io("writing", &temporary, &e))?;
    file.sync_all().map_err(|e| io("syncing", &temporary, &e))?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(|e| io("renaming", &temporary, &e))?;
    std::fs::File::open(directory)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", directory, &e))
}

#[async_trait]
impl StateStore for FileStore {
    async fn load(&self, runner: &str) -> Result<Option<Record>, StoreError> {
        let path = self.path(runner)?;
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", &path, &e)),
        };
        Ok(Some(Record::decode(&text)?))
    }

    async fn save(&self, record: &Record) -> Result<(), StoreError> {
        let path = self.path(&record.runner)?;
        let text = record.encode()?;
        let directory = self.directory.clone();
        tokio::task::spawn_blocking(move || write_atomically(&directory, &path, &text))
            .await
            .map_err(|e| StoreError::Io(format!("save task: {e}")))?
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut runners = Vec::new();
        let mut entries = match tokio::fs::read_dir(&self.directory).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(runners),
            Err(e) => return Err(io("listing", &self.directory, &e)),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io("listing", &self.directory, &e))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(runner) = name.strip_suffix(".json") {
                runners.push(runner.to_owned());
            }
        }
        runners.sort();
        Ok(runners)
    }
}

/// Records in memory, as the encoded text (so every save and load goes through the codec).
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    records: Arc<Mutex<BTreeMap<String, String>>>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces a runner's stored text (tests: corrupt or foreign records).
    pub fn put_raw(&self, runner: &str, text: &str) {
        if let Ok(mut records) = self.records.lock() {
            records.insert(runner.to_owned(), text.to_owned());
        }
    }

    /// Number of saves is not tracked here; the stored text is.
    #[must_use]
    pub fn raw(&self, runner: &str) -> Option<String> {
        self.records.lock().ok()?.get(runner).cloned()
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn load(&self, runner: &str) -> Result<Option<Record>, StoreError> {
        let text = self.raw(runner);
        text.map(|t| Record::decode(&t).map_err(StoreError::from))
            .transpose()
    }

    async fn save(&self, record: &Record) -> Result<(), StoreError> {
        let text = record.encode()?;
        let mut records = self
            .records
            .lock()
            .map_err(|_| StoreError::Io("memory store poisoned".to_owned()))?;
        records.insert(record.runner.clone(), text);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let records = self
            .records
            .lock()
            .map_err(|_| StoreError::Io("memory store poisoned".to_owned()))?;
        Ok(records.keys().cloned().collect())
    }
}
