//! Data-driven tests of `State::apply`: each `tests/scenarios/*.scn` file is a list of
//! commands (`> {json}`, or `> id=KEY {json}` for a request carrying the id `KEY`) each
//! followed by the expected outcome (`ok <summary>` or `err <code>: <message>`). The runner also checks, after every refused command, that the
//! state is exactly what it was. `UPDATE_EXPECT=1 cargo test -p haven-state` rewrites the
//! expected lines.

use std::path::Path;

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
    }
}

fn run_file(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).expect("read scenario");
    let mut state = State::default();
    let mut out = String::new();
    let mut at = 0u64;
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        if let Some(rest) = line.strip_prefix("@ ") {
            at = rest.trim().parse().unwrap_or_else(|_| panic!("{}:{}: bad time", path.display(), i + 1));
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
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{}:{}: not a command: {e}", path.display(), i + 1));
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
                assert_eq!(unchanged, before, "{}:{}: a refused command changed the state", path.display(), i + 1);
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
    (text, out)
}

#[test]
fn scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("scenario dir").filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failed = Vec::new();
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "scn")) {
        let (expected, actual) = run_file(f);
        if expected != actual {
            if update {
                std::fs::write(f, &actual).expect("write");
            } else {
                for (e, a) in expected.lines().zip(actual.lines()) {
                    if e != a {
                        eprintln!("{}:\n- {e}\n+ {a}", f.display());
                        break;
                    }
                }
                failed.push(f.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "scenarios differ (rerun with UPDATE_EXPECT=1 to accept): {failed:?}");
}
