//! Requests with an id are applied at most once: a retry returns the first outcome, another
//! command under a used id is refused, and the table of outcomes stays bounded.

use haven_state::{
    Command, ErrorCode, REQUEST_OUTCOME_AGE_MS, REQUEST_OUTCOME_LIMIT, Reply, Request, State, validate_request_id,
};

fn command(json: &str) -> Command {
    serde_json::from_str(json).expect("a command")
}

fn cluster() -> State {
    let mut s = State::default();
    let init = command(
        r#"{"op":"init_cluster","name":"c","join_token":"t","node":{"id":1,"name":"a","address":"127.0.0.1:1","role":"voter","liveness":"up","paused":false,"capacity":{"cpus":4,"memory_mib":8192},"since":0}}"#,
    );
    s.apply(&Request::new(1, "test", init)).expect("init");
    s
}

fn create_group(name: &str) -> Command {
    command(&format!(r#"{{"op":"create_group","spec":{{"name":"{name}"}}}}"#))
}

fn events_of(s: &State, group: &str) -> usize {
    s.history_of(Some(group), None).count()
}

#[test]
fn the_same_id_twice_returns_the_first_outcome_and_records_one_event() {
    let mut s = cluster();
    let first = s.apply(&Request::new(10, "operator", create_group("web")).with_id("k1"));
    let Ok(Reply::Group(g)) = &first else { panic!("created: {first:?}") };
    assert_eq!(g.spec.name, "web");
    // A re-forwarded copy (same stamp) and a client retry (a later stamp) both get it again.
    let again = s.apply(&Request::new(10, "operator", create_group("web")).with_id("k1"));
    assert_eq!(again, first);
    let retry = s.apply(&Request::new(20, "operator", create_group("web")).with_id("k1"));
    assert_eq!(retry, first, "a retry must not be told that its own group already exists");
    assert_eq!(events_of(&s, "web"), 1, "one history event for one request");
    // Without an id it is a new request, refused as usual.
    let dup = s.apply(&Request::new(30, "operator", create_group("web")));
    assert_eq!(dup.map_err(|e| e.code), Err(ErrorCode::AlreadyExists));
}

#[test]
fn a_refusal_is_an_outcome_too() {
    let mut s = cluster();
    let del = command(r#"{"op":"delete_group","name":"ghost"}"#);
    let first = s.apply(&Request::new(10, "operator", del.clone()).with_id("k2"));
    assert_eq!(first.clone().map_err(|e| e.code), Err(ErrorCode::NotFound));
    let before = s.clone();
    assert_eq!(s.apply(&Request::new(11, "operator", del).with_id("k2")), first);
    assert_eq!(s.history, before.history);
    assert_eq!(s.groups, before.groups);
}

#[test]
fn an_id_reused_for_another_command_is_refused_and_changes_nothing() {
    let mut s = cluster();
    s.apply(&Request::new(10, "operator", create_group("web")).with_id("k3")).expect("created");
    let before = s.clone();
    let other = s.apply(&Request::new(11, "operator", create_group("db")).with_id("k3"));
    let e = other.expect_err("another command under a used id");
    assert_eq!(e.code, ErrorCode::RequestIdReused);
    assert!(e.message.contains("\"k3\"") && e.message.contains("another request"), "{}", e.message);
    assert_eq!(s, before, "the refusal is not recorded and creates nothing");
    // The first outcome is still what the id answers.
    assert!(matches!(s.apply(&Request::new(12, "operator", create_group("web")).with_id("k3")), Ok(Reply::Group(_))));
}

#[test]
fn outcomes_are_pruned_by_age_with_the_proposer_time_stamp() {
    let mut s = cluster();
    s.apply(&Request::new(1_000, "operator", create_group("old")).with_id("old")).expect("created");
    s.apply(&Request::new(1_000 + REQUEST_OUTCOME_AGE_MS, "operator", Command::Noop).with_id("n1")).expect("noop");
    assert!(s.requests.get("old").is_some(), "kept for exactly the documented age");
    s.apply(&Request::new(1_001 + REQUEST_OUTCOME_AGE_MS, "operator", Command::Noop).with_id("n2")).expect("noop");
    assert!(s.requests.get("old").is_none(), "dropped once older than the documented age");
    // Past the bound the id is a new request again: here refused as a duplicate name.
    let late = s.apply(&Request::new(2_000 + REQUEST_OUTCOME_AGE_MS, "operator", create_group("old")).with_id("old"));
    assert_eq!(late.map_err(|e| e.code), Err(ErrorCode::AlreadyExists));
}

#[test]
fn outcomes_are_pruned_by_count_oldest_first() {
    let mut s = cluster();
    for i in 0..REQUEST_OUTCOME_LIMIT + 10 {
        s.apply(&Request::new(10, "operator", Command::Noop).with_id(format!("r{i}"))).expect("noop");
    }
    assert_eq!(s.requests.len(), REQUEST_OUTCOME_LIMIT);
    assert!(s.requests.get("r9").is_none());
    assert!(s.requests.get("r10").is_some());
    assert!(s.requests.get(&format!("r{}", REQUEST_OUTCOME_LIMIT + 9)).is_some());
}

#[test]
fn outcomes_survive_a_snapshot_and_old_entries_without_an_id_still_read() {
    let mut s = cluster();
    s.apply(&Request::new(10, "operator", create_group("web")).with_id("k4")).expect("created");
    let snapshot = serde_json::to_string(&s).expect("serialize");
    let mut restored: State = serde_json::from_str(&snapshot).expect("deserialize");
    assert_eq!(restored, s);
    let retry = restored.apply(&Request::new(20, "operator", create_group("web")).with_id("k4"));
    assert!(matches!(retry, Ok(Reply::Group(_))), "{retry:?}");
    // A log entry written before requests had ids.
    let old: Request = serde_json::from_str(r#"{"at":5,"by":"operator","command":{"op":"noop"}}"#).expect("old entry");
    assert_eq!(old.request_id, None);
    // A state written before the table existed.
    let mut v: serde_json::Value = serde_json::from_str(&snapshot).expect("json");
    v.as_object_mut().expect("object").remove("requests");
    let without: State = serde_json::from_value(v).expect("an old snapshot reads");
    assert!(without.requests.is_empty());
}

#[test]
fn request_ids_are_validated() {
    assert!(validate_request_id("0b9c6a2e-1f3d-4e5a-9b7c-1234567890ab").is_ok());
    assert!(validate_request_id(&"x".repeat(128)).is_ok());
    for bad in ["", "has space", "tab\there", "é", &"x".repeat(129)] {
        let e = validate_request_id(bad).expect_err(bad);
        assert_eq!(e.field, "Idempotency-Key");
        assert!(e.to_string().contains("128"), "{e}");
    }
}
