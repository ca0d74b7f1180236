//! The one error type of scaffolding and building, each variant saying what to do.

use std::path::PathBuf;

/// Why a plugin project could not be scaffolded or built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The project folder has no `weir-plugin.toml`, or it is invalid.
    #[error("{path}: {reason}")]
    Project {
        /// The file (or folder) at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A compiler or packaging tool the language needs is not installed.
    #[error("{tool} is needed to build {lang} plugins but was not found: {hint}")]
    ToolMissing {
        /// The missing tool.
        tool: &'static str,
        /// The language that needs it.
        lang: &'static str,
        /// How to install it, or which environment variable points at it.
        hint: &'static str,
    },
    /// A tool ran and failed; its own output was shown above (on stderr).
    #[error("{command} failed ({status})")]
    ToolFailed {
        /// The command line that failed.
        command: String,
        /// How it ended.
        status: String,
    },
    /// Generating bindings or packaging the component failed.
    #[error("cannot package {name}: {reason}")]
    Package {
        /// The processor being built.
        name: String,
        /// What went wrong, with its causes.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot write", …).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl BuildError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| BuildError::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn package(name: &str, err: impl std::fmt::Display) -> Self {
        BuildError::Package {
            name: name.to_string(),
            reason: err.to_string(),
        }
    }
}
