//! `Command::Batch` bounds and helpers: the length bound, how `batches` splits a long list
//! of commands into log entries, and how `outcomes` gives one response per command.

use haven_state::{BATCH_LIMIT, BATCH_MAX_BYTES, Command, ErrorCode, Reply, Request, State, batches, outcomes};

fn noops(n: usize) -> Vec<Command> {
    vec![Command::Noop; n]
}

#[test]
fn a_batch_is_bounded_and_a_long_one_changes_nothing() {
    let mut s = State::default();
    let ok = s.apply(&Request::new(1, "test", Command::Batch { commands: noops(BATCH_LIMIT) }));
    let Ok(Reply::Batch(replies)) = ok else { panic!("{ok:?}") };
    assert_eq!(replies.len(), BATCH_LIMIT);
    let before = s.clone();
    let e = s.apply(&Request::new(2, "test", Command::Batch { commands: noops(BATCH_LIMIT + 1) })).unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);
    assert_eq!(e.field.as_deref(), Some("commands"));
    expect_test::expect![
        "invalid commands: a batch of 1001 commands is too long; the most allowed is 1000 (send the rest in another batch)"
    ]
    .assert_eq(&e.to_string());
    assert_eq!(s, before);
}

#[test]
fn an_ha_wizard_change_cannot_carry_a_batch() {
    let mut s = State::default();
    let report: haven_model::HaReport = serde_json::from_value(serde_json::json!({
        "vm": "v", "definition": "v.toml", "node": "a", "group": null, "ok": true, "dry_run": false,
        "applied": true, "checks": [], "warnings": 0, "errors": 0
    }))
    .unwrap_or_else(|e| panic!("a report: {e}"));
    let wizard = Command::HaWizard { report: Box::new(report), commands: vec![Command::Batch { commands: noops(1) }] };
    let e = s.apply(&Request::new(1, "test", wizard)).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("commands[0]"), "{e}");
}

#[test]
fn batches_split_by_count_and_size_and_keep_the_order() {
    assert_eq!(batches(Vec::new()), Vec::<Command>::new());
    assert_eq!(batches(noops(1)), noops(1), "a single command is sent as it is");
    let split = batches((0..2 * BATCH_LIMIT + 1).map(|i| Command::DeleteGroup { name: format!("g{i}") }).collect());
    let lens: Vec<usize> = split
        .iter()
        .map(|c| match c {
            Command::Batch { commands } => commands.len(),
            _ => 1,
        })
        .collect();
    assert_eq!(lens, [BATCH_LIMIT, BATCH_LIMIT, 1]);
    assert_eq!(split[2], Command::DeleteGroup { name: format!("g{}", 2 * BATCH_LIMIT) });
    // Large commands: each batch stays within the byte budget.
    let big = "x".repeat(BATCH_MAX_BYTES / 4);
    let split = batches((0..10).map(|_| Command::DeleteGroup { name: big.clone() }).collect());
    assert!(split.len() >= 3, "{} batches", split.len());
    for c in &split {
        assert!(serde_json::to_vec(c).map(|v| v.len()).unwrap_or(usize::MAX) <= BATCH_MAX_BYTES + 1024);
    }
}

#[test]
fn outcomes_give_one_response_per_command() {
    let mut s = State::default();
    let batch = Command::Batch { commands: vec![Command::Noop, Command::DeleteGroup { name: "ghost".into() }] };
    let resp = s.apply(&Request::new(1, "test", batch.clone()));
    let out = outcomes(&batch, resp);
    assert_eq!(out.len(), 2);
    assert!(out[0].is_ok());
    assert_eq!(out[1].as_ref().map_err(|e| e.code), Err(ErrorCode::NotFound));
    let nested = Command::Batch { commands: vec![Command::Noop, batch] };
    let resp = s.apply(&Request::new(2, "test", nested.clone()));
    assert!(outcomes(&nested, resp).iter().all(|r| r.is_err()), "a malformed batch refuses every command");
    let single = Command::Noop;
    assert_eq!(outcomes(&single, Ok(Reply::None)), vec![Ok(Reply::None)]);
}
