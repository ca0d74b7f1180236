//! `weir new`: writes a working plugin project for a language from its template.
//!
//! Every template is the same small processor (`greeting` from `name`), so a new project
//! builds and runs before its author changes a line.

use std::path::{Path, PathBuf};

use crate::project::check_name;
use crate::{BuildError, Lang, PROJECT_FILE};

/// Choices for [`scaffold`].
#[derive(Clone, Debug, Default)]
pub struct ScaffoldOptions {
    /// For Rust projects: the `weir-sdk` folder to depend on by path. `None` depends on the
    /// crates.io release.
    pub rust_sdk_path: Option<PathBuf>,
}

/// One template file: its path in the project and its text, with `{{name}}` (and, for the
/// Rust manifest, `{{sdk}}`) to fill in.
type Template = (&'static str, &'static str);

const RUST: &[Template] = &[
    ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    (".gitignore", ".weir/\ntarget/\n"),
];
const PYTHON: &[Template] = &[
    ("app.py", include_str!("../templates/python/app.py")),
    (".gitignore", ".weir/\n__pycache__/\n"),
];
const JS: &[Template] = &[
    ("app.js", include_str!("../templates/js/app.js")),
    (".gitignore", ".weir/\nnode_modules/\n"),
];
const C: &[Template] = &[
    (
        "processor_impl.c",
        include_str!("../templates/c/processor_impl.c"),
    ),
    (".gitignore", ".weir/\n"),
];
const GO: &[Template] = &[
    ("processor.go", include_str!("../templates/go/processor.go")),
    (".gitignore", ".weir/\n"),
];

fn templates(lang: Lang) -> &'static [Template] {
    match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Js => JS,
        Lang::C => C,
        Lang::Go => GO,
    }
}

/// Writes a new project for processor `name` in `lang` into `dir`, which must not exist or
/// be empty. Returns the files written.
pub fn scaffold(
    name: &str,
    lang: Lang,
    dir: &Path,
    options: &ScaffoldOptions,
) -> Result<Vec<PathBuf>, BuildError> {
    check_name(name).map_err(|reason| BuildError::Project {
        path: dir.to_path_buf(),
        reason,
    })?;
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        return Err(BuildError::Project {
            path: dir.to_path_buf(),
            reason: "the folder exists and is not empty: choose a new one".to_string(),
        });
    }
    let sdk = match &options.rust_sdk_path {
        // Cargo reads a relative path from the new project's folder: make it absolute.
        Some(path) => {
            let path = std::path::absolute(path).map_err(BuildError::io("cannot resolve", path))?;
            let quoted = toml::Value::String(path.display().to_string()).to_string();
            format!("{{ path = {quoted} }}")
        }
        None => "\"0.1\"".to_string(),
    };
    let mut written = Vec::new();
    let project_file = format!("name = \"{name}\"\nlang = \"{lang}\"\n");
    for (path, text) in std::iter::once((PROJECT_FILE, project_file.as_str()))
        .chain(templates(lang).iter().copied())
    {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(BuildError::io("cannot create", parent))?;
        }
        let text = text.replace("{{name}}", name).replace("{{sdk}}", &sdk);
        std::fs::write(&target, text).map_err(BuildError::io("cannot write", &target))?;
        written.push(target);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Project;

    #[test]
    fn every_language_scaffolds_a_project_that_names_the_processor() {
        for lang in Lang::ALL {
            let dir = tempfile::tempdir().expect("temp dir");
            let project_dir = dir.path().join("hello-there");
            let files = scaffold(
                "hello-there",
                lang,
                &project_dir,
                &ScaffoldOptions::default(),
            )
            .expect("scaffolds");
            let project = Project::open(&project_dir).expect("the project file is valid");
            assert_eq!((project.name.as_str(), project.lang), ("hello-there", lang));
            for file in files {
                let text = std::fs::read_to_string(&file).expect("readable");
                assert!(
                    !text.contains("{{"),
                    "{} keeps a placeholder",
                    file.display()
                );
            }
        }
    }

    #[test]
    fn a_rust_project_depends_on_the_given_sdk_folder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = ScaffoldOptions {
            rust_sdk_path: Some(PathBuf::from("/src/weir/guest-sdk")),
        };
        scaffold("greet", Lang::Rust, dir.path(), &options).expect("scaffolds");
        let manifest = std::fs::read_to_string(dir.path().join("Cargo.toml")).expect("manifest");
        assert!(
            manifest.contains(r#"weir-sdk = { path = "/src/weir/guest-sdk" }"#),
            "{manifest}"
        );
    }

    #[test]
    fn a_non_empty_folder_or_a_bad_name_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("keep.txt"), "mine").expect("write");
        let err = scaffold("greet", Lang::Go, dir.path(), &ScaffoldOptions::default()).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        let err = scaffold(
            "Greet",
            Lang::Go,
            &dir.path().join("new"),
            &ScaffoldOptions::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("not a valid processor name"),
            "{err}"
        );
    }
}
