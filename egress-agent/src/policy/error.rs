use std::path::PathBuf;

/// Why a policy file was refused. Every variant names the file; a parse or validation error
/// also names the line, column and field, so that an operator can go straight to the fault.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("failed to read policy file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {field}: {message}")]
    Invalid {
        file: String,
        line: u64,
        column: u64,
        /// Path of the offending field, e.g. `spec.ports[0].number`; `(document)` when the
        /// fault is the document itself.
        field: String,
        message: String,
    },
}

impl PolicyError {
    pub fn invalid(
        file: &str,
        (line, column): (u64, u64),
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            file: file.to_owned(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }
}
