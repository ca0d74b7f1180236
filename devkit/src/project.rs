//! A plugin project: its `weir-plugin.toml` (processor name and language) and its folder.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::BuildError;

/// The file that marks a folder as a plugin project.
pub const PROJECT_FILE: &str = "weir-plugin.toml";

/// A language a plugin can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// Rust with `weir-sdk`, built by cargo for `wasm32-wasip2`.
    Rust,
    /// Python, built by componentize-py.
    Python,
    /// JavaScript, built by componentize-js.
    Js,
    /// C, built by a wasm32-wasi C compiler (zig cc by default).
    C,
    /// Go, built by the standard Go toolchain for wasip1.
    Go,
}

impl Lang {
    /// Every language, in the order the docs list them.
    pub const ALL: [Lang; 5] = [Lang::Rust, Lang::Python, Lang::Js, Lang::C, Lang::Go];

    /// The name used in `weir-plugin.toml` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
            Lang::Go => "go",
        }
    }

    /// The language's name for people.
    pub fn display_name(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
            Lang::C => "C",
            Lang::Go => "Go",
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rust" | "rs" => Ok(Lang::Rust),
            "python" | "py" => Ok(Lang::Python),
            "js" | "javascript" => Ok(Lang::Js),
            "c" => Ok(Lang::C),
            "go" | "golang" => Ok(Lang::Go),
            other => Err(format!(
                "unknown language `{other}`: expected one of rust, python, js, c, go"
            )),
        }
    }
}

/// The stack a Rust or C plugin gets in its linear memory unless its project sets
/// `stack_size`: 128 KiB.
///
/// The stack is the first thing in a guest's linear memory, so it sets how much memory
/// every fresh sandbox starts with, and resetting that memory is most of the cost of
/// recycling a sandbox. The toolchains' own defaults (1 MiB for Rust, 16 MiB for zig's C)
/// made a small processor's memory 1.1–16 MiB where 192 KiB holds it; with this default a
/// fresh sandbox of a small Rust processor costs half as much (`cargo xtask bench
/// execute`). Overflowing it traps the guest (`trap`), never another execution's memory.
pub const DEFAULT_STACK_BYTES: u32 = 128 << 10;

/// The smallest `stack_size` a project may set.
const MIN_STACK_BYTES: u32 = 16 << 10;
/// The largest `stack_size` a project may set (a quarter of the host's default memory cap).
const MAX_STACK_BYTES: u32 = 16 << 20;

/// A plugin project, read from its `weir-plugin.toml`:
///
/// ```toml
/// name = "text-stats"   # the processor's name and the output file's stem
/// lang = "python"       # rust, python, js, c or go
/// stack_size = 262144   # Rust and C only: the guest's stack in bytes (default 131072)
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Project {
    /// The processor's name: the component is written as `<name>.wasm`.
    pub name: String,
    /// The language of its sources.
    pub lang: Lang,
    /// The project folder.
    pub dir: PathBuf,
    /// The stack of a Rust or C guest, in bytes (see [`DEFAULT_STACK_BYTES`]); other
    /// languages' runtimes manage their own.
    pub stack_bytes: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectFile {
    name: String,
    lang: Lang,
    stack_size: Option<u32>,
}

impl Project {
    /// Reads the project in `dir`.
    pub fn open(dir: &Path) -> Result<Project, BuildError> {
        let path = dir.join(PROJECT_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| BuildError::Project {
            path: path.clone(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "not a plugin project (no {PROJECT_FILE}); create one with `weir new NAME --lang LANG`"
                )
            } else {
                format!("cannot read it: {e}")
            },
        })?;
        let file: ProjectFile = toml::from_str(&text).map_err(|e| BuildError::Project {
            path: path.clone(),
            reason: e.message().to_string(),
        })?;
        check_name(&file.name).map_err(|reason| BuildError::Project {
            path: path.clone(),
            reason,
        })?;
        let stack_bytes = check_stack(file.lang, file.stack_size)
            .map_err(|reason| BuildError::Project { path, reason })?;
        Ok(Project {
            name: file.name,
            lang: file.lang,
            dir: dir.to_path_buf(),
            stack_bytes,
        })
    }
}

/// The stack a project of `lang` gets, given its `stack_size` if it sets one.
fn check_stack(lang: Lang, asked: Option<u32>) -> Result<u32, String> {
    let Some(bytes) = asked else {
        return Ok(DEFAULT_STACK_BYTES);
    };
    if !matches!(lang, Lang::Rust | Lang::C) {
        return Err(format!(
            "`stack_size` applies to Rust and C plugins only; a {} runtime manages its own stack",
            lang.display_name()
        ));
    }
    if !(MIN_STACK_BYTES..=MAX_STACK_BYTES).contains(&bytes) || bytes % 16 != 0 {
        return Err(format!(
            "`stack_size = {bytes}` is not a usable stack: give a multiple of 16 bytes from {MIN_STACK_BYTES} to {MAX_STACK_BYTES} (the default is {DEFAULT_STACK_BYTES})"
        ));
    }
    Ok(bytes)
}

/// A processor name is a file stem: lowercase letters, digits and `-`, starting with a
/// letter (the rule `weir-sdk`'s `processor` attribute applies too).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid processor name: use lowercase letters, digits and `-`, starting with a letter (e.g. `text-stats`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_kebab_case() {
        assert!(check_name("text-stats").is_ok());
        assert!(check_name("a1").is_ok());
        for bad in ["", "Text", "1abc", "-a", "a_b", "a b", "a/b", "a.b"] {
            assert!(check_name(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn languages_parse_from_their_names_and_aliases() {
        for lang in Lang::ALL {
            assert_eq!(lang.as_str().parse::<Lang>(), Ok(lang));
        }
        assert_eq!("javascript".parse::<Lang>(), Ok(Lang::Js));
        assert!(
            "cobol"
                .parse::<Lang>()
                .unwrap_err()
                .contains("rust, python, js, c, go")
        );
    }

    #[test]
    fn a_project_file_names_the_processor_and_language() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join(PROJECT_FILE),
            "name = \"pick-route\"\nlang = \"go\"\n",
        )
        .expect("write");
        let project = Project::open(dir.path()).expect("valid project");
        assert_eq!(project.name, "pick-route");
        assert_eq!(project.lang, Lang::Go);
    }

    #[test]
    fn a_project_may_size_its_stack_within_bounds() {
        let open = |text: &str| {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::write(dir.path().join(PROJECT_FILE), text).expect("write");
            Project::open(dir.path())
        };
        let default = open("name = \"a\"\nlang = \"rust\"\n").expect("valid");
        assert_eq!(default.stack_bytes, DEFAULT_STACK_BYTES);
        let sized = open("name = \"a\"\nlang = \"c\"\nstack_size = 1048576\n").expect("valid");
        assert_eq!(sized.stack_bytes, 1 << 20);
        for bad in ["1000", "1024", "33554432"] {
            let err = open(&format!(
                "name = \"a\"\nlang = \"rust\"\nstack_size = {bad}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains("multiple of 16"), "{bad}: {err}");
        }
        let err = open("name = \"a\"\nlang = \"python\"\nstack_size = 65536\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Rust and C plugins only"), "{err}");
    }

    #[test]
    fn a_folder_without_a_project_file_says_how_to_make_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = Project::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("weir new"), "{err}");
    }

    #[test]
    fn an_unknown_language_is_rejected_with_the_choices() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join(PROJECT_FILE),
            "name = \"x\"\nlang = \"cobol\"\n",
        )
        .expect("write");
        let err = Project::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cobol") && err.contains("python"), "{err}");
    }
}
