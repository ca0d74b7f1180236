//! Checks the relative links of the repository's Markdown documents: every link to a file
//! points to one that exists, and every `#anchor` to a heading that exists in its target
//! (with GitHub's rule for turning a heading into an anchor).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The Markdown documents whose links are checked: `README.md`, everything under `docs/`,
/// and the README of every folder that has one outside build outputs and dependencies.
pub fn documents(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                let skipped = name.starts_with('.')
                    || ["target", "node_modules", "dist"].contains(&name.as_ref());
                if !skipped {
                    dirs.push(path);
                }
            } else if name.ends_with(".md") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Every broken relative link of `documents`, as `file:line: what is wrong`.
pub fn broken_links(root: &Path, documents: &[PathBuf]) -> Vec<String> {
    let mut anchors: HashMap<PathBuf, Vec<String>> = HashMap::new();
    let mut broken = Vec::new();
    for doc in documents {
        let Ok(text) = std::fs::read_to_string(doc) else {
            broken.push(format!("{}: cannot be read", shown(root, doc)));
            continue;
        };
        for (line, target) in links(&text) {
            let at = format!("{}:{line}", shown(root, doc));
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap_or(root).join(path)
            };
            if !file.exists() {
                broken.push(format!("{at}: `{target}`: no such file"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if file.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let known = anchors.entry(file.clone()).or_insert_with(|| {
                std::fs::read_to_string(&file)
                    .map(|t| heading_anchors(&t))
                    .unwrap_or_default()
            });
            if !known.iter().any(|a| a == anchor) {
                broken.push(format!(
                    "{at}: `{target}`: {} has no heading with that anchor",
                    shown(root, &file)
                ));
            }
        }
    }
    broken
}

fn shown(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The lines outside fenced code blocks, numbered from 1.
fn prose(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut fenced = false;
    text.lines().enumerate().filter_map(move |(i, line)| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return None;
        }
        (!fenced).then_some((i + 1, line))
    })
}

/// The targets of the inline links `[text](target)` outside code, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in prose(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].trim();
            // `[text](target "title")`
            let target = target.split_whitespace().next().unwrap_or_default();
            let target = target.trim_start_matches('<').trim_end_matches('>');
            if !target.is_empty() {
                found.push((number, target.to_string()));
            }
            rest = &after[end..];
        }
    }
    found
}

/// `line` with its code spans (`` `like this` ``) blanked out.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else {
            out.push(if in_code { ' ' } else { c });
        }
    }
    out
}

/// The anchors of `text`'s headings, as GitHub makes them: lowercase, punctuation other
/// than `-` and `_` dropped, spaces turned into `-`, and `-1`, `-2`… after repeats.
pub fn heading_anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = Vec::new();
    for (_, line) in prose(text) {
        let trimmed = line.trim_start();
        let level = trimmed.chars().take_while(|&c| c == '#').count();
        if level == 0 || level > 6 || !trimmed[level..].starts_with(' ') {
            continue;
        }
        let base = slug(trimmed[level..].trim());
        let count = seen.entry(base.clone()).or_insert(0);
        let anchor = if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        };
        *count += 1;
        anchors.push(anchor);
    }
    anchors
}

fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_become_anchors_as_on_github() {
        let text = "# weir\n## Warm instances (opt-in, per plugin)\n### `weir serve`: the API\n\
                    ```\n# not a heading\n```\n## Runs\n## Runs\n#hashtag\n";
        assert_eq!(
            heading_anchors(text),
            [
                "weir",
                "warm-instances-opt-in-per-plugin",
                "weir-serve-the-api",
                "runs",
                "runs-1"
            ]
        );
    }

    #[test]
    fn a_missing_file_or_anchor_is_reported_and_code_is_not_read_as_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("docs")).unwrap();
        std::fs::write(dir.path().join("docs/a.md"), "# A\n## Part one\n").unwrap();
        let readme = dir.path().join("README.md");
        std::fs::write(
            &readme,
            "See [a](docs/a.md#part-one), [top](#top), [web](https://x.example/#y).\n\
             # Top\n\
             Broken: [b](docs/b.md) and [part](docs/a.md#part-two).\n\
             `[not](a-link.md)`\n```\n[nor](this.md)\n```\n",
        )
        .unwrap();
        let broken = broken_links(dir.path(), &[readme]);
        assert_eq!(
            broken,
            [
                "README.md:3: `docs/b.md`: no such file",
                "README.md:3: `docs/a.md#part-two`: docs/a.md has no heading with that anchor",
            ]
        );
    }

    #[test]
    fn every_relative_link_in_the_repository_documents_resolves() {
        let root = crate::repo_root();
        let documents = documents(&root);
        assert!(documents.iter().any(|d| d.ends_with("README.md")));
        assert!(documents.iter().any(|d| d.starts_with(root.join("docs"))));
        let broken = broken_links(&root, &documents);
        assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    }
}
