//! Who may call the API, against a real agent: for every operation of the OpenAPI document
//! and every role, a call the role may not make is refused (401 without a token, 403
//! naming the role needed) and changes nothing; the history names the caller of every
//! change and records refused calls; no secret (tokens, a fence password) appears in any
//! API answer, CLI output, log line or history entry; bad tokens from one address are
//! answered 429 with `Retry-After`.

mod common;

use std::time::Duration;

use common::Lab;
use haven_api::{Client, ClientError, TokenCreate};
use haven_state::Role;
use serde_json::{Value, json};

/// The roles in order, and what the OpenAPI document calls them.
const ROLES: [(Role, &str); 3] = [(Role::Reader, "reader"), (Role::Operator, "operator"), (Role::Admin, "admin")];

async fn token(admin: &Client, name: &str, role: Role) -> String {
    admin.create_token(&TokenCreate { name: name.into(), role, ttl: None }).await.expect("create a token").token
}

/// Sends `method` to `path` (a `{}` body for writes); the status, 200 for a success.
async fn call(c: &Client, method: &str, path: &str) -> (u16, String) {
    let r: Result<Value, ClientError> = match method {
        "get" => c.get(path).await,
        "post" => c.post(path, &json!({})).await,
        "put" => c.put(path, &json!({})).await,
        "patch" => c.patch(path, &json!({})).await,
        "delete" => c.delete(path).await,
        other => panic!("no such method {other}"),
    };
    match r {
        Ok(_) => (200, String::new()),
        Err(ClientError::Api { status, message, .. }) => (status, message),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// What a refused call must leave as it was: every object, token and fence agent, and the
/// history but its audit trail (`api-request` events), the join tokens the admin made
/// (`POST /cluster/join-tokens` with `{}` is a whole request: its defaults make a token, so
/// the admin's call of the walk succeeds; a join token made by anyone else still shows),
/// and the admin's CA rotation (`POST /cluster/ca/rotate` takes no body: the admin's call
/// rotates, and the node then renews its certificate).
async fn objects(admin: &Client) -> Value {
    let history: Value = admin.get("/api/v1/history?limit=100000").await.expect("history");
    let events: Vec<&Value> = history
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| {
            let by_admin = |kind: &str| e["kind"] == kind && e["by"] == "admin";
            let renewal = e["kind"] == "node-cert-renewed" && e["by"] == "node1";
            !(e["kind"] == "api-request" || by_admin("join-token-created") || by_admin("ca-rotated") || renewal)
        })
        .collect();
    let groups: Value = admin.get("/api/v1/groups").await.expect("groups");
    let groups: Vec<Value> =
        groups.as_array().expect("groups").iter().map(|g| json!([g["name"], g["online"]])).collect();
    json!({
        "groups": groups,
        "resources": admin.get::<Value>("/api/v1/resources").await.expect("resources"),
        "nodes": admin
            .get::<Value>("/api/v1/nodes")
            .await
            .expect("nodes")
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| json!([n["name"], n["paused"], n["fence"]]))
            .collect::<Vec<_>>(),
        "tokens": admin.get::<Value>("/api/v1/tokens").await.expect("tokens"),
        "events": events,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_every_role_below_the_one_it_needs_and_changes_nothing() {
    let lab = Lab::start(1).await;
    let admin = lab.client(0).clone();
    let _: Value = admin.post("/api/v1/groups", &json!({"name": "g", "online": false})).await.expect("group");
    let addr = lab.node(0).addr.clone();
    let anonymous = Client::with_timeout(&addr, Duration::from_secs(10));
    let mut clients = Vec::new();
    for (role, name) in ROLES {
        let secret =
            if role == Role::Admin { lab.token.clone() } else { token(&admin, &format!("t-{name}"), role).await };
        clients.push((role, name, anonymous.with_token(&secret)));
    }
    let doc: Value = anonymous.get("/api/v1/openapi.json").await.expect("the OpenAPI document is public");
    let before = objects(&admin).await;

    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().expect("paths") {
        let path = template.replace("{name}", "nosuch-x").replace("{id}", "nosuch-id");
        for (method, op) in item.as_object().expect("operations") {
            let needs = op["x-required-role"].as_str().unwrap_or_else(|| panic!("{method} {template}: no role"));
            let what = format!("{} {template} (needs {needs})", method.to_uppercase());
            let (status, message) = call(&anonymous, method, &path).await;
            match needs {
                // Public, or public only until this node belongs to a cluster (it does).
                "public" => assert!(status != 401 && status != 403, "{what} without a token: {status} {message}"),
                _ => {
                    assert_eq!(status, 401, "{what} without a token: {message}");
                    assert!(message.contains("HAVEN_TOKEN") && message.contains("haven token create"), "{message}");
                }
            }
            let needed = match needs {
                "public" => None,
                "bootstrap" => Some(Role::Admin),
                other => Some(ROLES.iter().find(|(_, n)| *n == other).unwrap_or_else(|| panic!("{what}")).0),
            };
            for (role, name, c) in &clients {
                let (status, message) = call(c, method, &path).await;
                match needed {
                    Some(needed) if *role < needed => {
                        assert_eq!(status, 403, "{what} as {name}: {message}");
                        let role_needed = needed.to_string();
                        assert!(message.contains(&format!("needs the {role_needed} role")), "{what}: {message}");
                    }
                    _ => assert!(status != 401 && status != 403, "{what} as {name}: {status} {message}"),
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 35, "only {checked} operations checked");
    assert_eq!(objects(&admin).await, before, "a refused call (or a call on a missing object) changed the state");

    // The refused calls are in the history, with who and from where.
    let refused = lab
        .wait_for("the refused writes in the history", 10, async || {
            let h: Value = admin.get("/api/v1/history?limit=100000").await.ok()?;
            let audit: Vec<Value> = h.as_array()?.iter().filter(|e| e["kind"] == "api-request").cloned().collect();
            let anon = audit.iter().any(|e| e["by"] == "anonymous" && e["audit"]["status"] == 401);
            let reader = audit.iter().any(|e| e["by"] == "t-reader" && e["audit"]["status"] == 403);
            (anon && reader).then_some(audit)
        })
        .await;
    let e = refused.iter().find(|e| e["by"] == "t-reader").expect("a refused reader");
    assert!(e["audit"]["client"].as_str().is_some_and(|c| c.starts_with("127.")), "{e}");
    assert_eq!(e["audit"]["outcome"], "forbidden", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_names_every_caller_and_no_secret_is_ever_shown() {
    let lab = Lab::start(1).await;
    let admin = lab.client(0).clone();
    let addr = lab.node(0).addr.clone();
    let node = lab.name(0).to_string();
    let ops_secret = token(&admin, "ops", Role::Operator).await;
    let reader_secret = token(&admin, "ro", Role::Reader).await;
    let ops = Client::with_timeout(&addr, Duration::from_secs(10)).with_token(&ops_secret);
    let fence_password = format!("fence-pw-{}", &ops_secret[4..16]);
    let guessed = "hvn_not-a-real-token-guessed-by-an-attacker";
    let mut secrets = vec![lab.token.clone(), ops_secret.clone(), reader_secret.clone(), fence_password.clone()];

    // Changes by two callers; a fence agent with a password.
    let _: Value = admin.post("/api/v1/groups", &json!({"name": "g", "online": false})).await.expect("group");
    let fence = json!({"agent": "fence_nowhere", "params": {"ip": "10.9.9.9", "password": fence_password}});
    let keyed = admin.with_idempotency_key("set-fence-1");
    let _: Value = keyed.put(&format!("/api/v1/nodes/{node}/fence"), &fence).await.expect("fence");
    let _: Value = ops.post("/api/v1/groups/g/online", &json!({})).await.expect("online as ops");
    let _: Value = ops.post("/api/v1/groups/g/offline", &json!({})).await.expect("offline as ops");
    let created = admin
        .create_token(&TokenCreate {
            name: "short".into(),
            role: Role::Reader,
            ttl: Some(haven_model::Dur::from_secs(3600)),
        })
        .await
        .expect("a token with a ttl");
    secrets.push(created.token.clone());
    assert!(created.expires_at.is_some());
    let _: Value = admin.delete("/api/v1/tokens/short").await.expect("revoke");
    let revoked = Client::with_timeout(&addr, Duration::from_secs(10)).with_token(&created.token);
    let (status, message) = call(&revoked, "get", "/api/v1/groups").await;
    assert_eq!(status, 401, "a revoked token: {message}");
    let guess = Client::with_timeout(&addr, Duration::from_secs(10)).with_token(guessed);
    assert_eq!(call(&guess, "post", "/api/v1/groups").await.0, 401);
    // The last admin token stays.
    let (status, message) = call(&admin, "delete", "/api/v1/tokens/admin").await;
    assert_eq!(status, 409, "{message}");
    assert!(message.contains("last admin token"), "{message}");

    // The history names the caller of each change, and every write, with where it came from.
    let history: Value = lab
        .wait_for("the guessed token's refusal in the history", 10, async || {
            let h: Value = admin.get("/api/v1/history?limit=100000").await.ok()?;
            h.as_array()?.iter().any(|e| e["by"] == "invalid-token").then_some(h)
        })
        .await;
    let events = history.as_array().expect("events");
    let by = |kind: &str| events.iter().filter(|e| e["kind"] == kind).map(|e| e["by"].clone()).collect::<Vec<_>>();
    assert_eq!(by("group-online"), [json!("ops")]);
    assert_eq!(by("group-offline"), [json!("ops")]);
    assert_eq!(by("group-created"), [json!("admin")]);
    assert_eq!(by("fence-configured"), [json!("admin")]);
    assert_eq!(by("token-revoked"), [json!("admin")]);
    assert!(by("cluster-init").contains(&json!("bootstrap")), "{:?}", by("cluster-init"));
    let audit = |method: &str, path: &str| {
        events.iter().find(|e| e["audit"]["method"] == method && e["audit"]["path"] == path).cloned()
    };
    let online = audit("POST", "/api/v1/groups/g/online").expect("the move is audited");
    assert_eq!(
        (&online["by"], &online["audit"]["status"], &online["audit"]["outcome"]),
        (&json!("ops"), &json!(200), &json!("ok"))
    );
    assert!(online["audit"]["client"].as_str().is_some_and(|c| c.starts_with("127.")), "{online}");
    let refused = audit("DELETE", "/api/v1/tokens/admin").expect("the refused revoke is audited");
    assert_eq!(refused["audit"]["status"], 409, "{refused}");

    // Now read everything back, every way, and look for the secrets.
    let mut seen = vec![history.to_string()];
    let doc: Value = admin.get("/api/v1/openapi.json").await.expect("doc");
    for (template, item) in doc["paths"].as_object().expect("paths") {
        if item.get("get").is_none() {
            continue;
        }
        for name in [node.as_str(), "g", "set-fence-1"] {
            let path = template.replace("{name}", name).replace("{id}", name);
            if let Ok(v) = admin.get::<Value>(&path).await {
                seen.push(v.to_string());
            }
        }
    }
    for args in [["token", "list"], ["node", "list"], ["history", "--limit=1000"]] {
        for format in ["json", "table"] {
            let out = lab.cli(0).args(["-o", format]).args(args).output().expect("run the CLI");
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
        }
    }
    let out = lab.cli(0).args(["node", "show", &node]).output().expect("run the CLI");
    seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
    let log = std::fs::read_to_string(lab.node(0).log_path()).expect("the agent's log");
    assert!(log.lines().count() > 3, "the agent logs");
    seen.push(log);
    assert!(seen.iter().any(|s| s.contains("10.9.9.9")), "the fence agent's other parameters are shown");
    secrets.push(guessed.to_string());
    for secret in &secrets {
        for (i, text) in seen.iter().enumerate() {
            assert!(!text.contains(secret.as_str()), "a secret ({}...) is shown in answer {i}: {text}", &secret[..8]);
        }
    }

    // Bad tokens from one address: after the limit, 429 with Retry-After, even with a good
    // token (the address is blocked, not the token).
    // Two bad tokens were sent above; the limit is 10 a minute.
    let mut answers = Vec::new();
    for _ in 0..10 {
        let (status, message) = call(&guess, "get", "/api/v1/groups").await;
        answers.push(status);
        if status != 401 {
            assert_eq!(status, 429, "{message}");
            assert!(message.contains("try again in"), "{message}");
            break;
        }
    }
    assert_eq!(answers, [401, 401, 401, 401, 401, 401, 401, 401, 429], "10 bad tokens, then 429");
    let head = raw_head(&addr, &lab.token);
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let retry = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().to_string()))
        .expect("a Retry-After header");
    assert!(retry.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s)), "Retry-After: {retry}");
}

/// The head of the answer to `GET /api/v1/groups` with `token`, as sent.
fn raw_head(addr: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let req =
        format!("GET /api/v1/groups HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split("\r\n\r\n").next().unwrap_or_default().to_string()
}

/// `haven` with `XDG_CONFIG_HOME=config` and neither HAVEN_SERVER nor HAVEN_TOKEN: what an
/// operator's shell looks like after `cluster init`.
fn haven_cli(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(common::HAVEN)
        .env("XDG_CONFIG_HOME", config)
        .env_remove("HAVEN_SERVER")
        .env_remove("HAVEN_TOKEN")
        .args(args)
        .output()
        .expect("run the haven CLI");
    println!("`haven {}`: {}\n{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_init_writes_the_cli_config_and_the_token_commands_use_it() {
    let mut lab = Lab::new(1);
    lab.spawn(0);
    lab.wait_answering(0).await;
    let addr = lab.node(0).addr.clone();
    let config = lab.dir().join("operator-config");

    let out = haven_cli(&config, &["--server", &addr, "cluster", "init", "--name", "c"]);
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let file = config.join("haven").join("cli.toml");
    let text = std::fs::read_to_string(&file).expect("cluster init writes the CLI config");
    let admin = printed.split_whitespace().find(|w| w.starts_with("hvn_")).expect("init prints the admin token");
    assert!(text.contains(admin) && text.contains(&addr), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).expect("file").permissions().mode() & 0o777, 0o600);

    // From now on the file alone: server and token.
    let out = haven_cli(&config, &["token", "create", "--name", "ci", "--role", "reader", "--ttl", "1h"]);
    assert!(out.status.success());
    let created = String::from_utf8_lossy(&out.stdout).into_owned();
    let ci = created.split_whitespace().find(|w| w.starts_with("hvn_")).expect("the new secret is printed").to_string();
    let out = haven_cli(&config, &["-o", "json", "token", "list"]);
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listed.contains("\"ci\"") && !listed.contains(&ci) && !listed.contains(admin), "{listed}");
    // A flag wins over the file: the reader may read, not write (exit 1, the role named).
    let out = haven_cli(&config, &["--token", &ci, "group", "list"]);
    assert!(out.status.success());
    let out = haven_cli(&config, &["--token", &ci, "group", "create", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs the admin role"));
    let out = haven_cli(&config, &["token", "revoke", "ci"]);
    assert!(out.status.success());
    let out = haven_cli(&config, &["--token", &ci, "group", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid"), "a revoked token");
    // Without any token: 401, saying how to pass one.
    let out = haven_cli(&lab.dir().join("nobody"), &["--server", &addr, "node", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HAVEN_TOKEN"));
}
