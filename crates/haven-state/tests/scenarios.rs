//! Data-driven tests of `State::apply`: each `tests/scenarios/*.scn` file is a list of
//! commands (`> {json}`, or `> id=KEY {json}` for a request carrying the id `KEY`) each
//! followed by the expected outcome (`ok <summary>` or `err <code>: <message>`; a batch
//! answers `ok batch of N` and a line per command). The runner also checks, after every refused command, that the
//! state is exactly what it was. `UPDATE_EXPECT=1 cargo test -p haven-state` rewrites the
//! expected lines.

use std::path::Path;

use haven_scenario::{Checked, Error};
use haven_state::{Command, Reply, Request, State};

fn summary(reply: &Reply) -> String {
    match reply {
        Reply::None => "ok".into(),
        Reply::Node(n) => format!("ok node {} {}", n.name, n.status()),
        Reply::Group(g) => format!(
            "ok group {} owner={} generation={} failovers={} failed={}{}",
            g.spec.name,
            g.owner.as_deref().unwrap_or("-"),
            g.generation,
            g.failovers.len(),
            g.failed_reason.as_deref().unwrap_or("-"),
            g.handoff.as_ref().map(|h| format!(" moving={}->{}", h.from, h.to)).unwrap_or_default()
        ),
        Reply::Resource(r) => format!(
            "ok resource {} {:?}@{} failures={}",
            r.spec.name,
            r.status.state,
            r.status.node.as_deref().unwrap_or("-"),
            r.status.failures.len()
        ),
        // One line for the batch, then one per command: `ok [1] <summary>` or `err [2] …`.
        Reply::Batch(replies) => {
            let mut out = format!("ok batch of {}", replies.len());
            for (i, r) in replies.iter().enumerate() {
                let line = match r {
                    Ok(reply) => format!("ok [{}] {}", i + 1, summary(reply).trim_start_matches("ok").trim_start()),
                    Err(e) => format!("err [{}] {:?}: {}", i + 1, e.code, e.message),
                };
                out.push('\n');
                out.push_str(line.trim_end());
            }
            out
        }
    }
}

/// Runs the file's commands in order; the file passes when its text is what this gives.
fn run_file(path: &Path, text: &str) -> Result<Checked, Error> {
    let name = haven_scenario::file_name(path);
    let mut state = State::default();
    let mut out = String::new();
    let mut at = 0u64;
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        if let Some(rest) = line.strip_prefix("@ ") {
            at = rest.trim().parse().map_err(|_| format!("{}: bad time", haven_scenario::at(&name, i)))?;
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let Some(json) = line.strip_prefix("> ") else {
            if !line.starts_with("ok") && !line.starts_with("err ") {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        };
        out.push_str(line);
        out.push('\n');
        let (id, json) = match json.strip_prefix("id=").and_then(|rest| rest.split_once(' ')) {
            Some((id, json)) => (Some(id), json),
            None => (None, json),
        };
        let command: Command =
            serde_json::from_str(json).map_err(|e| format!("{}: not a command: {e}", haven_scenario::at(&name, i)))?;
        at += 1000;
        let before = state.clone();
        let request = Request::new(at, "test", command);
        let result = state.apply(&match id {
            Some(id) => request.with_id(id),
            None => request,
        });
        let line = match result {
            Ok(reply) => summary(&reply),
            Err(e) => {
                // A request with an id records its outcome, refusals too; nothing else changes.
                let mut unchanged = state.clone();
                unchanged.requests = before.requests.clone();
                if unchanged != before {
                    return Err(format!("{}: a refused command changed the state", haven_scenario::at(&name, i)));
                }
                format!("err {:?}: {}", e.code, e.message)
            }
        };
        out.push_str(&line);
        out.push('\n');
        // Skip the expected line(s) that follow in the file.
        while lines.peek().is_some_and(|(_, l)| l.starts_with("ok") || l.starts_with("err ")) {
            lines.next();
        }
    }
    Ok(Checked { expected: text.to_string(), actual: out.clone(), updated: out })
}

#[test]
fn scenarios() {
    let files = haven_scenario::files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios"));
    haven_scenario::check(&files, run_file);
}
