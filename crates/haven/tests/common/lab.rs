//! The lab as a whole: a cluster of real agents in a temporary directory, their configs
//! (the `aggressive` timing profile), founding the cluster and joining every node to it,
//! the lab's progress lines, and the drop that kills every session it started.

use std::path::Path;
use std::time::{Duration, Instant};

use haven_agent::host::kill_session;
use haven_api::Client;

use super::net::{LAB_PORT, Netns, free_loopback_net};
use super::node::{LabNode, Role};

/// A cluster of real agents on loopback, in a temporary directory.
pub struct Lab {
    pub(super) tmp: Option<tempfile::TempDir>,
    pub nodes: Vec<LabNode>,
    /// Every session this lab started (agent pids), killed on drop.
    pub(super) sessions: Vec<i32>,
    pub(super) started: Instant,
    /// `127.a.b` (or `10.a.b` with namespaces), the lab's addresses: tags its progress
    /// lines when labs run side by side.
    pub(super) net: String,
    /// The namespaces, veths and bridge, when the lab uses them; deleted on drop (after the
    /// processes are killed).
    pub(super) netns: Option<Netns>,
    /// The admin API token `cluster init` made (every node's client sends it); empty
    /// before the cluster is founded.
    pub token: String,
    /// The cluster CA's fingerprint (the CLI pins it, [`Lab::cli`]); empty before the
    /// cluster is founded.
    pub ca_fingerprint: String,
}

impl Lab {
    /// Writes the configs of `n` nodes (`node1`..`noden`, ids 1..n, the `aggressive` timing
    /// profile) without starting anything.
    pub fn new(n: usize) -> Lab {
        let nodes: Vec<(String, Role)> = (1..=n).map(|i| (format!("node{i}"), Role::Agent)).collect();
        Lab::create(&nodes, false).expect("a loopback lab needs no privileges")
    }

    /// Writes the configs of `nodes` (ids 1.. in order, the `aggressive` timing profile),
    /// on loopback or each in a network namespace of its own, without starting anything.
    /// `Err` (with the reason) only if network namespaces are wanted and cannot be made.
    fn create(nodes: &[(String, Role)], netns: bool) -> Result<Lab, String> {
        let n = nodes.len();
        let tmp = tempfile::Builder::new().prefix("haven-lab-").tempdir().expect("cannot create the lab directory");
        let (net, ns) = if netns {
            let ns = Netns::create(n)?;
            (ns.subnet.clone(), Some(ns))
        } else {
            (free_loopback_net(n), None)
        };
        let mut lab_nodes = Vec::new();
        for (k, (name, role)) in nodes.iter().enumerate() {
            let i = k + 1;
            let addr = format!("{net}.{i}:{LAB_PORT}");
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).expect("cannot create a node directory");
            // On the namespaces' addresses (not loopback) the agents take the API over HTTPS
            // only, as in production: see `found_with`.
            let config = format!(
                "id = {i}\nname = \"{name}\"\nlisten = \"{addr}\"\nstate_dir = \"{}\"\n\n[timing]\nprofile = \"aggressive\"\n",
                dir.join("state").display()
            );
            std::fs::write(dir.join("agent.toml"), config).expect("cannot write an agent config");
            let client = Client::with_timeout(&addr, Duration::from_secs(10));
            lab_nodes.push(LabNode {
                id: i as u64,
                name: name.clone(),
                addr,
                dir,
                client,
                witness: *role == Role::Witness,
                netns: ns.as_ref().map(|ns| ns.namespaces[k].clone()),
                child: None,
            });
        }
        let how = match &ns {
            Some(ns) => format!("each in a network namespace, bridge {}", ns.bridge),
            None => "on loopback".to_string(),
        };
        println!("[lab {net}] {n} nodes {how}, in {}", tmp.path().display());
        Ok(Lab {
            tmp: Some(tmp),
            nodes: lab_nodes,
            sessions: Vec::new(),
            started: Instant::now(),
            net,
            netns: ns,
            token: String::new(),
            ca_fingerprint: String::new(),
        })
    }

    /// [`Lab::start`] with every node in a network namespace of its own (`node1`..`noden`).
    /// `None` (with the reason printed) when this host cannot make network namespaces
    /// (not root): the caller skips its test.
    pub async fn start_netns(n: usize) -> Option<Lab> {
        let names: Vec<String> = (1..=n).map(|i| format!("node{i}")).collect();
        let nodes: Vec<(&str, Role)> = names.iter().map(|s| (s.as_str(), Role::Agent)).collect();
        Lab::start_with(&nodes, true).await
    }

    /// Starts the named nodes (the first one, a data node, founds the cluster; the others
    /// join it), on loopback or in network namespaces, and waits until every node sees all
    /// of them up, a leader and its own lease. `None` only when namespaces are wanted and
    /// this host cannot make them (the reason is printed).
    pub async fn start_with(nodes: &[(&str, Role)], netns: bool) -> Option<Lab> {
        assert!(nodes.first().is_some_and(|(_, r)| *r == Role::Agent), "the first lab node must be a data node");
        let owned: Vec<(String, Role)> = nodes.iter().map(|(n, r)| (n.to_string(), *r)).collect();
        match Lab::create(&owned, netns) {
            Ok(lab) => Some(lab.found().await),
            Err(why) => {
                println!("SKIPPED: this test needs network namespaces: {why}");
                None
            }
        }
    }

    /// Starts `n` agents, founds a cluster on node 1 and joins the others to it through the
    /// REST API, and waits until every node sees all nodes up, a leader and its own lease.
    pub async fn start(n: usize) -> Lab {
        Lab::new(n).found().await
    }

    /// Starts `n` agents but founds the cluster with the first `members` only: the others
    /// run outside it (for tests of joining), and [`Lab::start`]'s wait covers the members.
    pub async fn start_members(n: usize, members: usize) -> Lab {
        Lab::new(n).found_with(members).await
    }

    /// Starts every agent, founds the cluster on node 0, joins the others, and waits until
    /// every node sees all nodes up, a leader and its own lease.
    async fn found(self) -> Lab {
        let n = self.nodes.len();
        self.found_with(n).await
    }

    /// [`Lab::found`] with the first `n` nodes as the cluster; every agent is started.
    async fn found_with(self, n: usize) -> Lab {
        let mut lab = self;
        for i in 0..lab.nodes.len() {
            lab.spawn(i);
        }
        for i in 0..lab.nodes.len() {
            lab.wait_answering(i).await;
        }
        if lab.netns.is_some() {
            lab.found_from_the_hosts(n).await;
        } else {
            let init = lab.nodes[0].client.init_cluster("lab").await.expect("cluster init failed");
            lab.token = init.admin_token.clone();
            lab.ca_fingerprint = init.ca_fingerprint.clone();
            lab.nodes[0].client = lab.nodes[0].client.with_token(&init.admin_token);
            if n > 1 {
                let token = lab.join_token(n).await;
                for i in 1..n {
                    lab.nodes[i]
                        .client
                        .join_cluster(&lab.nodes[0].addr, &token.token, &token.ca_fingerprint)
                        .await
                        .unwrap_or_else(|e| panic!("{} could not join: {e}", lab.nodes[i].name));
                }
            }
            for node in &mut lab.nodes {
                node.client = node.client.with_token(&init.admin_token);
            }
        }
        lab.wait_until(&format!("all {n} nodes up, with a leader and a lease, on every node"), 30, async || {
            for i in 0..n {
                if !lab.sees_all_up(i, n).await {
                    return false;
                }
            }
            true
        })
        .await;
        lab
    }

    /// A join token for the other `n - 1` founding nodes, from node 1.
    async fn join_token(&self, n: usize) -> haven_api::JoinTokenCreated {
        let uses = u32::try_from(n - 1).unwrap_or(1);
        let request = haven_api::JoinTokenRequest { ttl: None, uses: Some(uses) };
        self.nodes[0].client.create_join_token(&request).await.expect("a join token")
    }

    /// Founds the cluster of the first `n` nodes of a lab in network namespaces as an
    /// operator must when the agents listen on addresses that are not loopback: `cluster
    /// init` and `cluster join` with the CLI run on each node's own host (its namespace),
    /// where the agent takes plain HTTP; from outside, every node's client then speaks
    /// HTTPS and trusts only the cluster CA.
    async fn found_from_the_hosts(&mut self, n: usize) {
        let init = self.cli_on_host(0, &["cluster", "init", "--name", "lab", "--no-config"]);
        let init: haven_api::InitResponse = serde_json::from_value(init).expect("the init's JSON");
        self.token = init.admin_token.clone();
        self.ca_fingerprint = init.ca_fingerprint.clone();
        let timeouts = (haven_api::client::CONNECT_TIMEOUT, Duration::from_secs(10));
        let (https, _) = haven_agent::pki::pinned_client(&init.ca_fingerprint, timeouts).expect("an HTTPS client");
        for node in &mut self.nodes {
            node.client = Client::with_http(&[&node.addr], https.clone(), "https").with_token(&init.admin_token);
        }
        if n > 1 {
            let token = self.join_token(n).await;
            for i in 1..n {
                let member = self.nodes[0].addr.clone();
                let args =
                    ["cluster", "join", &member, "--token", &token.token, "--ca-fingerprint", &token.ca_fingerprint];
                self.cli_on_host(i, &args);
            }
        }
    }

    pub fn dir(&self) -> &Path {
        self.tmp.as_ref().map(|t| t.path()).expect("the lab directory exists until drop")
    }

    pub fn node(&self, i: usize) -> &LabNode {
        &self.nodes[i]
    }

    pub fn client(&self, i: usize) -> &Client {
        &self.nodes[i].client
    }

    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("no lab node is called {name:?}"))
    }

    /// Seconds since the lab was created, for the progress lines.
    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Prints a progress line of the test, tagged and timed like the lab's own.
    pub fn note(&self, what: &str) {
        println!("[lab {} {:6.2}s] {what}", self.net, self.t());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for &sid in &self.sessions {
            kill_session(sid);
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.wait();
            }
        }
        if std::thread::panicking()
            && let Some(tmp) = self.tmp.take()
        {
            println!("[lab {}] the test failed; kept {} for its logs", self.net, tmp.keep().display());
        }
    }
}
