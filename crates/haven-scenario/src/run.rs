//! Scenario files: listing them, splitting one at its `---` line, and the test loop that
//! compares (or, with `UPDATE_EXPECT=1`, rewrites) what each file expects.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::{Error, Line};

/// The name a file is shown by in messages (`drain.scn`).
pub fn file_name(file: &Path) -> String {
    file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Where line `index` (0-based) of the file shown as `name` stands: `name:line`.
pub fn at(name: &str, index: usize) -> String {
    format!("{name}:{}", index + 1)
}

/// A scenario file split at its `---` line.
#[derive(Debug)]
pub struct Sections<'a> {
    /// The file's name, as [`file_name`] shows it.
    pub name: String,
    /// The lines above `---` exactly as written, each ending in `\n`: what an update keeps.
    pub setup: String,
    /// The lines below `---`, each with its 0-based index in the file.
    pub below: Vec<(usize, &'a str)>,
}

impl Sections<'_> {
    /// Where line `index` of the file stands, for a line below `---`.
    pub fn at(&self, index: usize) -> String {
        at(&self.name, index)
    }
}

/// Splits `text` (the contents of `file`) at its first `---` line, handing every setup
/// line that is neither blank nor a `#` comment to `each`, tokenized and in file order.
/// Stops at the first error, from the tokenizer or from `each`.
pub fn split<'a>(
    file: &Path,
    text: &'a str,
    mut each: impl FnMut(&Line) -> Result<(), Error>,
) -> Result<Sections<'a>, Error> {
    let name = file_name(file);
    let mut setup = String::new();
    let mut lines = text.lines().enumerate();
    let mut separated = false;
    for (i, raw) in lines.by_ref() {
        if raw.trim() == "---" {
            separated = true;
            break;
        }
        setup.push_str(raw);
        setup.push('\n');
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        each(&Line::parse(at(&name, i), trimmed)?)?;
    }
    if !separated {
        return Err(format!("{name}: no `---` line separating the setup from what the scenario expects"));
    }
    Ok(Sections { name, setup, below: lines.collect() })
}

/// The `*.scn` files in `dir`, sorted by name. Panics when there are none: a runner that
/// checks nothing must not pass.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "scn"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenario files (*.scn) in {}", dir.display());
    files
}

/// What running one scenario file gave.
#[derive(Debug)]
pub struct Checked {
    /// What the file expects, in the form the runner compares.
    pub expected: String,
    /// What the code does now, in the same form; the file passes when the two are equal.
    pub actual: String,
    /// The whole file as `UPDATE_EXPECT=1` writes it when they differ.
    pub updated: String,
}

/// Runs every file through `run` (given the file and its text) and panics with every
/// failure, each with its `file:line` or a [`diff`]. With `UPDATE_EXPECT` set, a file
/// whose output differs is rewritten with [`Checked::updated`] instead of failing.
pub fn check(files: &[PathBuf], run: impl FnMut(&Path, &str) -> Result<Checked, Error>) {
    check_or_update(files, std::env::var_os("UPDATE_EXPECT").is_some(), run);
}

fn check_or_update(files: &[PathBuf], update: bool, mut run: impl FnMut(&Path, &str) -> Result<Checked, Error>) {
    let mut failures = Vec::new();
    for file in files {
        let name = file_name(file);
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let checked = match run(file, &text) {
            Ok(c) => c,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        if checked.actual == checked.expected {
            continue;
        }
        if update {
            std::fs::write(file, &checked.updated).unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
            eprintln!("updated {name}");
        } else {
            let diff = diff(&checked.expected, &checked.actual);
            failures.push(format!("{name}: output differs (- expected, + actual):\n{diff}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed (rerun with UPDATE_EXPECT=1 to accept new output):\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// A line diff (longest common subsequence): `  ` both, `- ` expected only, `+ ` actual only.
pub fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            writeln!(out, "  {}", a[i]).ok();
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            writeln!(out, "- {}", a[i]).ok();
            i += 1;
        } else {
            writeln!(out, "+ {}", b[j]).ok();
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_each_side() {
        assert_eq!(diff("a\nb\nc", "a\nx\nc\nd"), "  a\n- b\n+ x\n  c\n+ d\n");
        assert_eq!(diff("same", "same"), "  same\n");
    }

    #[test]
    fn split_hands_over_setup_lines_in_order() {
        let text = "# a comment\nnode a\n\ngroup web owner=a\n---\nexpected\n";
        let mut seen = Vec::new();
        let s = split(Path::new("dir/x.scn"), text, |l| {
            seen.push((l.at.clone(), l.words[0].clone()));
            Ok(())
        })
        .expect("splits");
        assert_eq!(seen, [("x.scn:2".to_string(), "node".to_string()), ("x.scn:4".into(), "group".into())]);
        assert_eq!(s.setup, "# a comment\nnode a\n\ngroup web owner=a\n");
        assert_eq!(s.below, [(5, "expected")]);
        assert_eq!(s.at(5), "x.scn:6");
    }

    #[test]
    fn split_stops_at_the_first_error_and_wants_a_separator() {
        let e = split(Path::new("x.scn"), "node a\nnode b\n---\n", |l| Err(l.err("refused"))).unwrap_err();
        assert_eq!(e, "x.scn:1: refused");
        let e = split(Path::new("x.scn"), "node \"a\n---\n", |_| Ok(())).unwrap_err();
        assert_eq!(e, "x.scn:1: unterminated quote");
        let e = split(Path::new("x.scn"), "node a\n", |_| Ok(())).unwrap_err();
        assert!(e.starts_with("x.scn: no `---` line"), "{e}");
    }

    /// A runner that expects the file's text upper-cased below its first line.
    fn shout(_: &Path, text: &str) -> Result<Checked, Error> {
        let (head, body) = text.split_once('\n').ok_or("no body")?;
        let actual = body.to_uppercase();
        Ok(Checked { expected: body.to_string(), updated: format!("{head}\n{actual}"), actual })
    }

    #[test]
    fn check_fails_on_a_difference_and_update_rewrites_only_that_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (good, bad) = (dir.path().join("a.scn"), dir.path().join("b.scn"));
        std::fs::write(&good, "head\nSAME\n").expect("write");
        std::fs::write(&bad, "head\nlower\n").expect("write");
        std::fs::write(dir.path().join("notes.md"), "not a scenario").expect("write");
        let listed = files(dir.path());
        assert_eq!(listed, [good.clone(), bad.clone()]);

        let failed = std::panic::catch_unwind(|| check_or_update(&listed, false, shout));
        let message = failed.expect_err("a difference fails");
        let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.starts_with("1 of 2 scenarios failed"), "{message}");
        assert!(message.contains("b.scn: output differs (- expected, + actual):\n- lower\n+ LOWER"), "{message}");

        check_or_update(&listed, true, shout);
        assert_eq!(std::fs::read_to_string(&bad).expect("read"), "head\nLOWER\n");
        assert_eq!(std::fs::read_to_string(&good).expect("read"), "head\nSAME\n");
        check_or_update(&listed, false, shout);
    }
}
