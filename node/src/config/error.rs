use std::path::PathBuf;

/// Why a configuration was refused. Every variant says where: a file, a variable or a field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// toml's message names the field (an unknown one included) and shows the line.
    #[error("config file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{var}={value:?} (sets {field}): {reason}")]
    Env {
        var: &'static str,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The field path at fault, when the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Env { field, .. } => Some(field),
            ConfigError::Invalid { field, .. } => Some(field),
            ConfigError::Read { .. } | ConfigError::Parse { .. } => None,
        }
    }
}
