//! Human tables and JSON output for the CLI.

use serde::Serialize;

/// `-o table` (default) or `-o json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Prints rows as an aligned table with a header.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{:<w$}  ", c, w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// A list: as JSON with `-o json`, else a table of `header` with one `row` per item.
pub fn list_of<T: Serialize>(fmt: Format, items: &[T], header: &[&str], row: impl Fn(&T) -> Vec<String>) {
    if fmt == Format::Json {
        json(&items);
    } else {
        table(header, items.iter().map(row).collect());
    }
}

pub fn json<T: Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot print JSON: {e}"),
    }
}

/// `a, b` or `-` for an empty list.
pub fn list(items: &[String]) -> String {
    if items.is_empty() { "-".to_string() } else { items.join(",") }
}

pub fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".to_string())
}

/// An epoch-ms timestamp as RFC 3339 (UTC, seconds).
pub fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}
