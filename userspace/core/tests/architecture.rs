//! ARCHITECTURE.md must stay true: every path and every type it names in backticks has to
//! exist in the tree. Paths are resolved from the repository root, from the crate its
//! `### \`dir\`` section is about (and that crate's `src/`), or from any crate's `src/`;
//! types (`CamelCase`, also inside `a::B::c` paths) must be defined or re-exported in some
//! Rust file, and the last lowercase segment of a `::` path must be a function, module,
//! constant or public field.
use std::{
    fs,
    path::{Path, PathBuf},
};

/// Names from dependencies, not defined in this repository.
const EXTERNAL: &[&str] = &["Pod", "ResourceSpans", "Span", "Resource"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_sources(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            rust_sources(&path, out);
        } else if name.ends_with(".rs")
            && let Ok(text) = fs::read_to_string(&path)
        {
            out.push(text);
        }
    }
}

fn crate_src_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for top in ["userspace", "ebpf"] {
        if let Ok(entries) = fs::read_dir(root.join(top)) {
            for e in entries.flatten() {
                dirs.push(e.path());
                dirs.push(e.path().join("src"));
            }
        }
    }
    dirs.push(root.join("tests"));
    dirs.push(root.join("xtask"));
    dirs
}

fn is_path(token: &str) -> bool {
    !token.starts_with('/')
        && !token.starts_with('-')
        && !token.contains("://")
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
        && (token.contains('/')
            || [".rs", ".py", ".sh", ".toml", ".md"]
                .iter()
                .any(|e| token.ends_with(e)))
}

fn is_camel(seg: &str) -> bool {
    let mut chars = seg.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && seg.chars().any(|c| c.is_ascii_lowercase())
        && seg.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_ident_path(token: &str) -> bool {
    !token.is_empty()
        && token
            .split("::")
            .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

fn defines(sources: &[String], name: &str, kinds: &[&str]) -> bool {
    sources.iter().any(|text| {
        text.match_indices(name).any(|(i, _)| {
            let before = &text[..i];
            let after = text[i + name.len()..].chars().next();
            let boundary = after.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            let prev = before.chars().last();
            let starts = prev.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            if !boundary || !starts {
                return false;
            }
            let line_start = before.rfind('\n').map_or(0, |p| p + 1);
            let line_head = before[line_start..].trim_start();
            // An enum variant or macro-generated name at the start of its line.
            (line_head.is_empty() && after.is_some_and(|c| " ({,=".contains(c)))
                || kinds.iter().any(|k| line_head.ends_with(&format!("{k} ")))
                || line_head.starts_with("pub use")
                || line_head.starts_with("use ")
                || before[line_start..].contains("pub use")
        })
    })
}

#[test]
fn every_path_and_type_in_architecture_md_exists() {
    let root = root();
    let doc = fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut sources = Vec::new();
    rust_sources(&root, &mut sources);
    let crate_dirs = crate_src_dirs(&root);
    let mut section: Option<PathBuf> = None;
    let mut missing = Vec::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("### `") {
            section = h.split('`').next().map(|d| root.join(d));
        } else if line.starts_with("## ") {
            section = None;
        }
        for token in line.split('`').skip(1).step_by(2) {
            if is_path(token) {
                let mut candidates = vec![root.join(token)];
                if let Some(dir) = &section {
                    candidates.push(dir.join(token));
                    candidates.push(dir.join("src").join(token));
                    candidates.push(dir.join("tests").join(token));
                }
                candidates.extend(crate_dirs.iter().map(|d| d.join(token)));
                if !candidates.iter().any(|c| c.exists()) {
                    missing.push(format!("path `{token}`"));
                }
            } else if is_ident_path(token) {
                let segs: Vec<&str> = token.split("::").collect();
                for (i, seg) in segs.iter().enumerate() {
                    let last = i + 1 == segs.len();
                    let ok = if is_camel(seg) {
                        EXTERNAL.contains(seg)
                            || defines(
                                &sources,
                                seg,
                                &["struct", "enum", "trait", "type", "const", "mod"],
                            )
                    } else if last && segs.len() > 1 {
                        defines(&sources, seg, &["fn", "mod", "const", "static", "pub"])
                    } else {
                        true
                    };
                    if !ok {
                        missing.push(format!("`{seg}` (in `{token}`)"));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names what does not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_check_itself_catches_a_missing_name() {
    let mut sources = Vec::new();
    rust_sources(&root().join("userspace/core/src"), &mut sources);
    assert!(defines(&sources, "ConnTable", &["struct"]));
    assert!(!defines(&sources, "NoSuchTypeAnywhere", &["struct"]));
    assert!(defines(&sources, "on_event", &["fn"]));
}
