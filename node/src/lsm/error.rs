use std::path::PathBuf;

/// Everything the engine can fail with. Expected outcomes (a missing key) are not errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corruption in {path} at offset {offset}: {reason}")]
    Corruption {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("key is {len} bytes, above the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    #[error("keys out of order in {path}: {reason}")]
    KeyOrder { path: PathBuf, reason: String },
    #[error("key is empty")]
    KeyEmpty,
    #[error("value is {len} bytes, above the limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    #[error("batch is {len} bytes, above the limit of {max} bytes")]
    BatchTooLarge { len: usize, max: usize },
    #[error("invalid option {name}: {reason}")]
    InvalidOption { name: &'static str, reason: String },
    #[error("manifest error: {0}")]
    Manifest(String),
    #[error("the database is closed")]
    Closed,
    #[error("a background task failed earlier and the database is read-only: {0}")]
    BackgroundFailed(String),
    #[error("injected failure at {0}")]
    Injected(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn corruption(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corruption {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}

/// Adds the path to a bare I/O result.
pub trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
