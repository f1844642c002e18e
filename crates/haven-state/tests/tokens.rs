//! API tokens and the audit trail in the state machine: tokens are stored as hashes under
//! unique, unreserved names; the last admin token stays; an API request records its
//! outcome (refused ones too) with its author and origin; `RecordAudit` is bounded.

use haven_state::tokens::AUDIT_BATCH_LIMIT;
use haven_state::{ApiOrigin, ApiToken, AuditEntry, AuditRecord, Command, ErrorCode, Event, Request, Role, State};

fn command(json: &str) -> Command {
    serde_json::from_str(json).expect("a command")
}

fn cluster() -> State {
    let mut s = State::default();
    let init = command(
        r#"{"op":"init_cluster","name":"c","join_token":"t","node":{"id":1,"name":"a","address":"127.0.0.1:1","role":"voter","liveness":"up","paused":false,"capacity":{"cpus":4,"memory_mib":8192},"since":0}}"#,
    );
    s.apply(&Request::new(1, "bootstrap", init)).expect("init");
    s
}

fn token(name: &str, role: Role) -> ApiToken {
    ApiToken {
        name: name.into(),
        role,
        hash: format!("{:064x}", name.len()),
        created_at: 0,
        created_by: String::new(),
        expires_at: None,
    }
}

fn create(s: &mut State, at: u64, by: &str, t: ApiToken) -> haven_state::Response {
    s.apply(&Request::new(at, by, Command::CreateToken { token: t }))
}

fn audit_events(s: &State) -> Vec<&Event> {
    s.history.iter().filter(|e| e.kind == "api-request").collect()
}

#[test]
fn a_token_is_stored_with_its_author_and_time_under_a_unique_unreserved_name() {
    let mut s = cluster();
    create(&mut s, 10, "bootstrap", token("admin", Role::Admin)).expect("created");
    let t = &s.api_tokens["admin"];
    assert_eq!((t.created_at, t.created_by.as_str(), t.role), (10, "bootstrap", Role::Admin));
    let again = create(&mut s, 11, "admin", token("admin", Role::Reader)).expect_err("a taken name");
    assert_eq!(again.code, ErrorCode::AlreadyExists);
    for reserved in ["controller", "anonymous", "invalid-token"] {
        let e = create(&mut s, 12, "admin", token(reserved, Role::Reader)).expect_err("reserved");
        assert!(e.message.contains("reserved"), "{}", e.message);
    }
    let bad_hash = ApiToken { hash: "secret-in-clear".into(), ..token("x", Role::Reader) };
    assert_eq!(create(&mut s, 13, "admin", bad_hash).expect_err("not a hash").field.as_deref(), Some("hash"));
    let expired = ApiToken { expires_at: Some(5), ..token("late", Role::Reader) };
    assert!(create(&mut s, 14, "admin", expired).is_err(), "a token that expires before it is made");
    assert!(create(&mut State::default(), 1, "x", token("early", Role::Admin)).is_err(), "no cluster yet");
    assert_eq!(s.api_tokens.len(), 1);
    assert!(s.history.iter().any(|e| e.kind == "token-created" && e.by == "bootstrap"));
}

#[test]
fn the_last_admin_token_that_has_not_expired_cannot_be_revoked() {
    let mut s = cluster();
    create(&mut s, 10, "bootstrap", token("admin", Role::Admin)).expect("admin");
    create(&mut s, 11, "admin", token("ro", Role::Reader)).expect("reader");
    let revoke =
        |s: &mut State, at, name: &str| s.apply(&Request::new(at, "admin", Command::RevokeToken { name: name.into() }));
    let e = revoke(&mut s, 12, "admin").expect_err("the last admin");
    assert!(e.message.contains("last admin token"), "{}", e.message);
    create(&mut s, 13, "admin", ApiToken { expires_at: Some(20), ..token("admin2", Role::Admin) }).expect("admin2");
    // admin2 counts only while it has not expired.
    revoke(&mut s, 14, "ro").expect("a reader goes");
    assert!(revoke(&mut s, 25, "admin").is_err(), "admin2 has expired by then");
    revoke(&mut s, 15, "admin").expect("admin2 is still valid at 15");
    assert_eq!(s.api_tokens.keys().collect::<Vec<_>>(), ["admin2"]);
    assert_eq!(revoke(&mut s, 16, "nosuch").expect_err("unknown").code, ErrorCode::NotFound);
}

#[test]
fn an_api_request_records_its_outcome_refused_or_not_and_a_replay_does_not() {
    let mut s = cluster();
    let origin = ApiOrigin { method: "POST".into(), path: "/api/v1/groups".into(), client: "10.0.0.9:4000".into() };
    let group = command(r#"{"op":"create_group","spec":{"name":"web"}}"#);
    let mut req = Request::new(10, "alice", group.clone()).with_id("k1");
    req.origin = Some(origin.clone());
    s.apply(&req).expect("created");
    s.apply(&req).expect("replayed");
    let mut dup = Request::new(11, "alice", group).with_id("k2");
    dup.origin = Some(origin);
    assert!(s.apply(&dup).is_err(), "the name is taken");
    let audit = audit_events(&s);
    assert_eq!(audit.len(), 2, "one entry per applied request, none for the replay: {audit:?}");
    let (ok, refused) = (audit[0].audit.as_ref().expect("record"), audit[1].audit.as_ref().expect("record"));
    assert_eq!((ok.status, ok.outcome.as_str(), audit[0].by.as_str()), (200, "ok", "alice"));
    assert_eq!((refused.status, refused.outcome.as_str()), (409, "already_exists"));
    assert_eq!(refused.client, "10.0.0.9:4000");
    assert!(audit[1].message.contains("POST /api/v1/groups from 10.0.0.9:4000: 409"), "{}", audit[1].message);
    // The change itself is by the caller too; a request without an origin records nothing.
    assert!(s.history.iter().any(|e| e.kind == "group-created" && e.by == "alice"));
    let before = audit_events(&s).len();
    s.apply(&Request::new(12, "controller", Command::Noop)).expect("noop");
    assert_eq!(audit_events(&s).len(), before);
}

#[test]
fn recorded_audit_entries_are_events_and_a_batch_is_bounded() {
    let mut s = cluster();
    let entry = |by: &str, status| AuditEntry {
        at: 5,
        by: by.into(),
        record: AuditRecord {
            method: "DELETE".into(),
            path: "/api/v1/nodes/a".into(),
            client: "10.0.0.7:1".into(),
            status,
            outcome: if status == 401 { "unauthorized".into() } else { "forbidden".into() },
            suppressed: if status == 401 { 41 } else { 0 },
        },
    };
    let entries = vec![entry("anonymous", 401), entry("ro", 403)];
    s.apply(&Request::new(6, "a", Command::RecordAudit { entries })).expect("recorded");
    let audit = audit_events(&s);
    assert_eq!(audit.iter().map(|e| (e.by.as_str(), e.at)).collect::<Vec<_>>(), [("anonymous", 5), ("ro", 5)]);
    assert!(audit[0].message.contains("(and 41 more like it)"), "{}", audit[0].message);
    let too_many = vec![entry("anonymous", 401); AUDIT_BATCH_LIMIT + 1];
    let before = s.clone();
    assert!(s.apply(&Request::new(7, "a", Command::RecordAudit { entries: too_many })).is_err());
    assert_eq!(s, before, "a refused batch of audit entries changes nothing");
}
