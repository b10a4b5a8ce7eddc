//! `brokers.json`: the node-to-address map, kept across restarts.
//!
//! Clients reconnect to the broker ports they cached. After a restart, those ports must open
//! even when discovery cannot reach or authenticate to the cluster yet, so the proxy remembers
//! every broker it learned. The file holds node ids and `HOST:PORT` only, never a credential.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "brokers.json";

#[derive(Debug, thiserror::Error)]
pub enum BrokerMapFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a broker map ({source}); delete it and discovery writes it again")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct BrokerMap {
    /// Upstream `HOST:PORT` by node id.
    brokers: BTreeMap<i32, String>,
}

/// Where the map lives: in `spool.dir`, else beside the config file.
pub fn location(spool_dir: Option<&Path>, config_path: &Path) -> PathBuf {
    match spool_dir {
        Some(dir) => dir.join(FILE_NAME),
        None => config_path
            .parent()
            .unwrap_or_else(|| Path::new(""))
            .join(FILE_NAME),
    }
}

/// The saved map; empty when there is no file yet.
pub fn load(path: &Path) -> Result<BTreeMap<i32, String>, BrokerMapFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(BrokerMapFileError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let map: BrokerMap =
        serde_json::from_str(&text).map_err(|source| BrokerMapFileError::Parse {
            path: path.to_owned(),
            source,
        })?;
    Ok(map.brokers)
}

/// Replaces the file atomically (write, fsync, rename), so a crash leaves the old map or the
/// new one, never half of one.
pub fn save(path: &Path, brokers: &BTreeMap<i32, String>) -> Result<(), BrokerMapFileError> {
    let io = |source| BrokerMapFileError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let text = serde_json::to_string_pretty(&BrokerMap {
        brokers: brokers.clone(),
    })
    .expect("a map of integers to strings serializes");
    let temporary = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool").join(FILE_NAME);
        assert!(load(&path).unwrap().is_empty());
        let map = BTreeMap::from([
            (1, "kafka-a:9092".to_owned()),
            (2, "kafka-b:9092".to_owned()),
        ]);
        save(&path, &map).unwrap();
        assert_eq!(load(&path).unwrap(), map);
    }

    #[test]
    fn corrupt_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "{ nope").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains(FILE_NAME), "{err}");
    }

    #[test]
    fn beside_the_config_without_a_spool() {
        assert_eq!(
            location(None, Path::new("/etc/kkp/proxy.toml")),
            PathBuf::from("/etc/kkp/brokers.json")
        );
        assert_eq!(
            location(
                Some(Path::new("/var/lib/kkp")),
                Path::new("/etc/kkp/proxy.toml")
            ),
            PathBuf::from("/var/lib/kkp/brokers.json")
        );
    }
}
