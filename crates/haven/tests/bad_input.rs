//! Bad input through the API and the CLI: every refusal is a 4xx whose message names the
//! offending value, the CLI prints it and exits non-zero, and the cluster state is
//! exactly as it was.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haven_api::{Client, ClientError};
use serde_json::{Value, json};

const HAVEN: &str = env!("CARGO_BIN_EXE_haven");

struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
    addr: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

async fn start_agent() -> Agent {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let config = format!(
        "id = 1\nname = \"n1\"\nlisten = \"{addr}\"\nstate_dir = \"{}\"\n[timing]\nprofile = \"aggressive\"\n",
        dir.path().join("state").display()
    );
    std::fs::write(dir.path().join("agent.toml"), config).expect("config");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let child = Command::new(HAVEN)
        .args(["agent", "--config"])
        .arg(dir.path().join("agent.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn agent");
    let agent = Agent { child, _dir: dir, addr };
    let c = Client::new(&agent.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get::<Value>("/api/v1/cluster").await.is_err() {
        assert!(Instant::now() < deadline, "agent did not answer within 30s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _: Value = c.post("/api/v1/cluster/init", &json!({"name": "t"})).await.expect("init");
    agent
}

/// Everything an operator can see of the cluster's configuration and history.
async fn snapshot(c: &Client) -> Value {
    let groups: Value = c.get("/api/v1/groups").await.expect("groups");
    let resources: Value = c.get("/api/v1/resources").await.expect("resources");
    let nodes: Value = c.get("/api/v1/nodes").await.expect("nodes");
    let history: Value = c.get("/api/v1/history?limit=100000").await.expect("history");
    json!({"groups": groups, "resources": resources, "nodes": nodes, "history": history.as_array().map(|h| h.len())})
}

fn refused(r: Result<Value, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api { status, message, .. }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn assert_refused(r: Result<Value, ClientError>, status: u16, needle: &str) {
    let (s, m) = refused(r);
    assert_eq!(s, status, "status for {m:?}");
    assert!(m.contains(needle), "message {m:?} should name {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_named_value_and_changes_nothing() {
    let agent = start_agent().await;
    let c = Client::new(&agent.addr);
    // A group kept offline so nothing runs, two resources, one dependency.
    let _: Value = c.post("/api/v1/groups", &json!({"name": "g", "online": false})).await.expect("group");
    for (name, deps) in [("a", json!([])), ("b", json!(["a"]))] {
        let body = json!({"name": name, "group": "g", "type": "process", "params": {"argv": ["sleep", "9"]}, "depends_on": deps});
        let _: Value = c.post("/api/v1/resources", &body).await.expect("resource");
    }
    let before = snapshot(&c).await;

    // Unknown node, unknown group, unknown resource.
    assert_refused(c.post("/api/v1/groups/g/move", &json!({"node": "nosuch"})).await, 404, "\"nosuch\"");
    assert_refused(
        c.post("/api/v1/groups", &json!({"name": "h", "preferred_owners": ["ghost"]})).await,
        404,
        "\"ghost\"",
    );
    assert_refused(c.get("/api/v1/groups/nogroup").await, 404, "\"nogroup\"");
    assert_refused(c.post("/api/v1/groups/nogroup/online", &json!({})).await, 404, "\"nogroup\"");
    let in_missing_group = json!({"name": "c", "group": "nogroup", "type": "process", "params": {"argv": ["true"]}});
    assert_refused(c.post("/api/v1/resources", &in_missing_group).await, 404, "\"nogroup\"");
    assert_refused(c.delete("/api/v1/resources/nores").await, 404, "\"nores\"");
    assert_refused(c.post("/api/v1/nodes/nonode/pause", &json!({})).await, 404, "\"nonode\"");

    // Invalid property values.
    assert_refused(
        c.patch("/api/v1/resources/a", &json!({"props": {"restart_period": "forever"}})).await,
        400,
        "\"forever\"",
    );
    assert_refused(c.patch("/api/v1/resources/a", &json!({"props": {"restart_threshold": -1}})).await, 400, "-1");
    assert_refused(c.patch("/api/v1/resources/a", &json!({"props": {"restartz": 1}})).await, 400, "restartz");
    assert_refused(c.patch("/api/v1/groups/g", &json!({"failover_period": "soon"})).await, 400, "\"soon\"");
    assert_refused(c.post("/api/v1/groups", &json!({"name": "Bad Name"})).await, 400, "\"Bad Name\"");
    let empty_argv = json!({"name": "d", "group": "g", "type": "process", "params": {"argv": []}});
    assert_refused(c.post("/api/v1/resources", &empty_argv).await, 400, "argv");
    let bad_type = json!({"name": "d", "group": "g", "type": "teleporter", "params": {}});
    assert_refused(c.post("/api/v1/resources", &bad_type).await, 400, "teleporter");

    // Values beyond their documented bound (docs/OPERATIONS.md, "Bounds"), among them the
    // interval that used to panic the owner's group worker, are refused with the bound.
    for (path, body, needle) in [
        (
            "/api/v1/resources",
            json!({"name": "pan1", "group": "g", "type": "process", "params": {"argv": ["sleep", "infinity"]},
                "props": {"is_alive_interval": "292277000000y"}}),
            "invalid props.is_alive_interval: 292277000000years is too long; the most allowed is 1day",
        ),
        ("/api/v1/groups", json!({"name": "pan", "failover_period": "500000000y"}), "the most allowed is 30days"),
    ] {
        let (status, message) = refused(c.post(path, &body).await);
        assert!((400..500).contains(&status), "status {status} for {message:?}");
        assert!(message.contains(needle), "message {message:?} should say {needle:?}");
    }
    let (status, message) =
        refused(c.patch("/api/v1/resources/a", &json!({"props": {"restart_threshold": 1001}})).await);
    assert!((400..500).contains(&status) && message.contains("the most allowed is 1000"), "{status} {message}");

    // A dependency cycle is spelled out.
    assert_refused(c.patch("/api/v1/resources/a", &json!({"depends_on": ["b"]})).await, 400, "a -> b -> a");

    // Duplicate names.
    assert_refused(c.post("/api/v1/groups", &json!({"name": "g"})).await, 409, "\"g\" already exists");
    let dup = json!({"name": "a", "group": "g", "type": "process", "params": {"argv": ["true"]}});
    assert_refused(c.post("/api/v1/resources", &dup).await, 409, "\"a\" already exists");

    // Malformed JSON, unknown fields, oversized bodies.
    assert_refused(c.post_raw("/api/v1/groups", b"{\"name\": \"x\",".to_vec()).await, 400, "not valid JSON");
    assert_refused(c.post("/api/v1/groups", &json!({"name": "x", "colour": "red"})).await, 400, "colour");
    // The agent answers 413 without reading the rest of the body, so a client still
    // sending may see the connection close before it reads the answer: try a few times;
    // a too-large body must never be accepted, and an answer must be the 413.
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024)).into_bytes();
    let mut saw_413 = false;
    for _ in 0..5 {
        match c.post_raw::<Value>("/api/v1/groups", huge.clone()).await {
            Err(ClientError::Api { status, message, .. }) => {
                assert_eq!(status, 413, "{message}");
                assert!(message.contains("larger than 1048576 bytes"), "{message}");
                saw_413 = true;
                break;
            }
            Err(ClientError::Unreachable { .. }) => continue,
            other => panic!("an oversized body was not refused: {other:?}"),
        }
    }
    assert!(saw_413, "never received the 413 answer to an oversized body");
    // The agent closes a connection whose body it did not read; a pooled connection may
    // be that one, closed under the next request. Go on with fresh connections.
    let c = Client::new(&agent.addr);

    // Conflicts: deleting what others depend on, a group that has resources.
    assert_refused(c.delete("/api/v1/resources/a").await, 409, "\"b\"");
    assert_refused(c.delete("/api/v1/groups/g").await, 409, "\"a\", \"b\"");

    assert_eq!(snapshot(&c).await, before, "a refused request changed the cluster state");

    // The CLI prints the agent's message and exits 1; an unreachable agent exits 3.
    let cli = |args: &[&str]| {
        let out = Command::new(HAVEN).arg("--server").arg(&agent.addr).args(args).output().expect("run cli");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = cli(&["group", "move", "g", "--to", "nosuch"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no node named \"nosuch\""), "{err}");
    let (code, err) = cli(&["resource", "set", "a", "--prop", "restart_period=forever"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("\"forever\" is not a duration"), "{err}");
    let (code, err) = cli(&[
        "resource",
        "create",
        "pan1",
        "--group",
        "g",
        "--prop",
        "is_alive_interval=292277000000y",
        "--",
        "sleep",
        "infinity",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("props.is_alive_interval") && err.contains("the most allowed is 1day"), "{err}");
    let (code, err) = cli(&["resource", "set", "a", "--depends-on", "b"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("dependency cycle a -> b -> a"), "{err}");
    let (code, err) = cli(&["group", "create", "g"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already exists"), "{err}");
    let (code, err) = cli(&["group", "create", "x", "--failback", "sometimes"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("\"sometimes\""), "{err}");
    let out = Command::new(HAVEN).args(["--server", "127.0.0.1:1", "node", "list"]).output().expect("run cli");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the Haven agent at http://127.0.0.1:1"));

    assert_eq!(snapshot(&c).await, before, "a refused CLI command changed the cluster state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_the_routes() {
    let agent = start_agent().await;
    let c = Client::new(&agent.addr);
    let doc: Value = c.get("/api/v1/openapi.json").await.expect("openapi");
    let paths = doc["paths"].as_object().expect("paths");
    for p in ["/api/v1/groups", "/api/v1/groups/{name}/move", "/api/v1/resources", "/api/v1/nodes", "/api/v1/history"] {
        assert!(paths.contains_key(p), "openapi.json lacks {p}");
    }
    assert!(doc["components"]["schemas"]["GroupSpec"].is_object());
}
