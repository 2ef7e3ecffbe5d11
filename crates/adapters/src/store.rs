//! State stores: `ssm` (production, shared by every replica), `file` (local, atomic) and
//! `memory` (tests).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use runner_updater_core::domain::rollout::{channel_key, ReleaseRecord};
use runner_updater_core::record::Record;
use runner_updater_ports::{ParameterStore, StateStore, StoreError};

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

    /// `<directory>/_channels/<channel>.json` (not a runner's: `list` reads the top level).
    fn release_path(&self, channel: &str) -> Result<(PathBuf, PathBuf), StoreError> {
        let file = self.path(channel)?;
        let folder = self
            .directory
            .join(runner_updater_core::domain::channel::CHANNELS_FOLDER);
        let name = file.file_name().map(PathBuf::from).unwrap_or_default();
        Ok((folder.join(name), folder))
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
        Ok(Some(Record::decode(&text, runner)?))
    }

    async fn save(&self, record: &Record) -> Result<(), StoreError> {
        let path = self.path(&record.runner)?;
        let text = record.encode()?;
        let directory = self.directory.clone();
        tokio::task::spawn_blocking(move || write_atomically(&directory, &path, &text))
            .await
            .map_err(|e| StoreError::Io(format!("save task: {e}")))?
    }

    async fn load_release(&self, channel: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        let (path, _) = self.release_path(channel)?;
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", &path, &e)),
        };
        Ok(Some(ReleaseRecord::decode(&text, channel)?))
    }

    async fn save_release(&self, record: &ReleaseRecord, _epoch: u64) -> Result<(), StoreError> {
        let (path, folder) = self.release_path(&record.channel)?;
        let text = record.encode()?;
        tokio::task::spawn_blocking(move || write_atomically(&folder, &path, &text))
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
        text.map(|t| Record::decode(&t, runner).map_err(StoreError::from))
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

    async fn load_release(&self, channel: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        self.raw(&channel_key(channel))
            .map(|text| ReleaseRecord::decode(&text, channel).map_err(StoreError::from))
            .transpose()
    }

    async fn save_release(&self, record: &ReleaseRecord, _epoch: u64) -> Result<(), StoreError> {
        let text = record.encode()?;
        let mut records = self
            .records
            .lock()
            .map_err(|_| StoreError::Io("memory store poisoned".to_owned()))?;
        records.insert(channel_key(&record.channel), text);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let records = self
            .records
            .lock()
            .map_err(|_| StoreError::Io("memory store poisoned".to_owned()))?;
        Ok(records
            .keys()
            .filter(|key| !key.starts_with('_'))
            .cloned()
            .collect())
    }
}

/// An SSM Standard parameter holds 4 KB; the record is fitted under it (see
/// [`Record::encode_within`]). The Advanced tier is deliberately not used: it costs money per
/// parameter and month, and a fitted record says everything on-call needs.
pub const SSM_RECORD_BYTES_MAX: usize = 4096;

/// Records in SSM at `<prefix>/<runner>/status`, a JSON document.
#[derive(Clone)]
pub struct SsmStore {
    ssm: Arc<dyn ParameterStore>,
    prefix: String,
}

impl SsmStore {
    /// A store under `prefix`.
    #[must_use]
    pub fn new(ssm: Arc<dyn ParameterStore>, prefix: &str) -> Self {
        SsmStore {
            ssm,
            prefix: prefix.to_owned(),
        }
    }

    fn name(&self, runner: &str) -> String {
        format!("{}/{runner}/status", self.prefix)
    }
}

#[async_trait]
impl StateStore for SsmStore {
    async fn load(&self, runner: &str) -> Result<Option<Record>, StoreError> {
        let parameter = self
            .ssm
            .get(&self.name(runner))
            .await
            .map_err(|e| StoreError::Io(e.to_string()))?;
        parameter
            .map(|p| Record::decode(&p.value, runner).map_err(StoreError::from))
            .transpose()
    }

    async fn save(&self, record: &Record) -> Result<(), StoreError> {
        let text = record.encode_within(SSM_RECORD_BYTES_MAX)?;
        self.ssm
            .put(&self.name(&record.runner), &text, true)
            .await
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(())
    }

    /// At `<prefix>/_channels/<channel>/status`.
    async fn load_release(&self, channel: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        let parameter = self
            .ssm
            .get(&self.name(&channel_key(channel)))
            .await
            .map_err(|e| StoreError::Io(e.to_string()))?;
        parameter
            .map(|p| ReleaseRecord::decode(&p.value, channel).map_err(StoreError::from))
            .transpose()
    }

    async fn save_release(&self, record: &ReleaseRecord, _epoch: u64) -> Result<(), StoreError> {
        let text = record.encode()?;
        if text.len() > SSM_RECORD_BYTES_MAX {
            return Err(StoreError::Io(format!(
                "channel {}'s release record is {} bytes, more than an SSM parameter holds ({SSM_RECORD_BYTES_MAX})",
                record.channel,
                text.len()
            )));
        }
        self.ssm
            .put(&self.name(&channel_key(&record.channel)), &text, true)
            .await
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let folder = format!("{}/", self.prefix);
        let parameters = self
            .ssm
            .get_by_path(&folder)
            .await
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(parameters
            .keys()
            .filter_map(|name| name.strip_prefix(&folder)?.strip_suffix("/status"))
            .filter(|runner| !runner.contains('/'))
            .map(str::to_owned)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_updater_core::machine::{restore, Ctx, RunnerMachine, Settings, State};
    use runner_updater_core::record::RecordError;

    fn record(runner: &str) -> Record {
        let machine = restore(
            RunnerMachine::new(runner, Settings::default()),
            State::Idle {},
            &mut Ctx::default(),
        );
        Record::capture(&machine)
    }

    #[tokio::test]
    async fn the_file_store_round_trips_atomically_and_lists() {
        let directory = tempfile::tempdir().unwrap();
        let store = FileStore::new(directory.path().join("state"));
        assert_eq!(store.load("runner-a").await.unwrap(), None);
        store.save(&record("runner-a")).await.unwrap();
        store.save(&record("runner-b")).await.unwrap();
        assert_eq!(
            store.load("runner-a").await.unwrap(),
            Some(record("runner-a"))
        );
        assert_eq!(store.list().await.unwrap(), vec!["runner-a", "runner-b"]);
        let leftovers: Vec<_> = std::fs::read_dir(directory.path().join("state"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file is left behind");
        std::fs::write(
            directory.path().join("state/runner-a.json"),
            "{\"schema_version\": 1, \"runn",
        )
        .unwrap();
        let error = store.load("runner-a").await.unwrap_err();
        assert!(
            matches!(error, StoreError::Record(ref e) if e.code() == runner_updater_core::domain::code::Code::RecordCorrupt),
            "{error}"
        );
        assert!(store.save(&record("../escape")).await.is_err());
    }

    #[tokio::test]
    async fn the_ssm_store_keeps_records_beside_the_desired_state() {
        let ssm = crate::sim::SimSsm::default();
        ssm.set("/ru/runner-a/desired/version", "2.14.0");
        let store = SsmStore::new(Arc::new(ssm.clone()), "/ru");
        store.save(&record("runner-a")).await.unwrap();
        assert_eq!(
            store.load("runner-a").await.unwrap(),
            Some(record("runner-a"))
        );
        assert_eq!(store.list().await.unwrap(), vec!["runner-a"]);
        ssm.set("/ru/runner-a/status", "{\"schema_version\": 7}");
        let error = store.load("runner-a").await.unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Record(RecordError::NewerSchema { found: 7 })
            ),
            "{error}"
        );
    }
}
