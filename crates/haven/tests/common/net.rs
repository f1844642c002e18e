//! The lab's network: a free block of loopback addresses for a plain lab, or one network
//! namespace per node wired to a bridge, and the faults a test cuts into the latter: a
//! node cut off ([`Lab::isolate`], [`Lab::heal`]) or nodes separated from each other while
//! each still reaches the rest ([`Lab::separate`], [`Lab::reconnect`]).

use std::process::{Command, Stdio};

use super::lab::Lab;

/// Every lab node listens on this port, each on an address of its own. It is below the
/// kernel's ephemeral range (32768 and up by default), so no outgoing connection can take
/// it while a killed node is down and the node gets its address back when it restarts.
pub(super) const LAB_PORT: u16 = 7400;

/// A random `127.a.b` whose addresses `127.a.b.1..=n` are free on [`LAB_PORT`], so labs
/// running side by side (cargo runs test binaries in turn, nextest in parallel) never
/// share an address. Linux routes all of 127.0.0.0/8 to the loopback interface.
pub(super) fn free_loopback_net(n: usize) -> String {
    for _ in 0..50 {
        let mut r = [0u8; 2];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut r))
            .expect("cannot read /dev/urandom");
        let net = format!("127.{}.{}", r[0].max(1), r[1]);
        let free = (1..=n).all(|i| std::net::TcpListener::bind(format!("{net}.{i}:{LAB_PORT}")).is_ok());
        if free {
            return net;
        }
    }
    panic!("found no free 127.a.b.1..{n} addresses on port {LAB_PORT} in 50 tries");
}

// ---- network namespaces ----

/// One network namespace per node (`haven-<tag>-<i>`, address `10.a.b.<i>/24` on its
/// `eth0`, `lo` up), each wired by a veth pair (`hv<tag>h<i>` in the root namespace) to the
/// bridge `hvb<tag>`, which holds `10.a.b.254` so the test process reaches every node.
/// Dropping it deletes them all (also while a failed test unwinds).
pub(super) struct Netns {
    /// `10.a.b`
    pub(super) subnet: String,
    pub(super) bridge: String,
    pub(super) namespaces: Vec<String>,
    pub(super) host_veths: Vec<String>,
    bridge_made: bool,
}

impl Netns {
    /// `Err` if the first `ip netns add` fails (not root, no `ip`): the caller skips. Any
    /// later failure panics (what was made so far is deleted by the drop).
    pub(super) fn create(n: usize) -> Result<Netns, String> {
        let (tag, subnet) = free_netns_names();
        let mut ns = Netns {
            subnet: subnet.clone(),
            bridge: format!("hvb{tag}"),
            namespaces: Vec::new(),
            host_veths: Vec::new(),
            bridge_made: false,
        };
        for i in 1..=n {
            let name = format!("haven-{tag}-{i}");
            if let Err(e) = ip(&["netns", "add", &name]) {
                if i == 1 {
                    return Err(format!("`ip netns add {name}` failed: {e}"));
                }
                panic!("`ip netns add {name}` failed: {e}");
            }
            ns.namespaces.push(name);
        }
        let must = |args: &[&str]| ip(args).unwrap_or_else(|e| panic!("`ip {}` failed: {e}", args.join(" ")));
        must(&["link", "add", &ns.bridge, "type", "bridge"]);
        ns.bridge_made = true;
        must(&["addr", "add", &format!("{subnet}.254/24"), "dev", &ns.bridge]);
        must(&["link", "set", &ns.bridge, "up"]);
        for i in 1..=n {
            let netns = ns.namespaces[i - 1].clone();
            let veth = format!("hv{tag}h{i}");
            must(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns]);
            ns.host_veths.push(veth.clone());
            must(&["link", "set", &veth, "master", &ns.bridge, "up"]);
            must(&["-n", &netns, "addr", "add", &format!("{subnet}.{i}/24"), "dev", "eth0"]);
            must(&["-n", &netns, "link", "set", "eth0", "up"]);
            must(&["-n", &netns, "link", "set", "lo", "up"]);
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes the other; then the (empty) namespaces.
        for v in &self.host_veths {
            if let Err(e) = ip(&["link", "del", v]) {
                println!("warning: cannot delete veth {v}: {e}");
            }
        }
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                println!("warning: cannot delete network namespace {ns}: {e}");
            }
        }
        if self.bridge_made
            && let Err(e) = ip(&["link", "del", &self.bridge])
        {
            println!("warning: cannot delete bridge {}: {e}", self.bridge);
        }
    }
}

/// Runs `ip ARGS`; `Err` with its stderr if it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn bridge_port_isolated(veth: &str, on: bool) {
    let state = if on { "on" } else { "off" };
    let out = Command::new("bridge")
        .args(["link", "set", "dev", veth, "isolated", state])
        .stdin(Stdio::null())
        .output()
        .expect("cannot run bridge (iproute2)");
    assert!(
        out.status.success(),
        "`bridge link set dev {veth} isolated {state}` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A random tag (for namespace and interface names) and a `10.a.b` subnet that no
/// interface or route of this host uses, so labs running side by side never collide.
fn free_netns_names() -> (String, String) {
    let text = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let used = format!("{}{}{}", text(&["-o", "-4", "addr"]), text(&["-4", "route"]), text(&["netns", "list"]));
    for _ in 0..50 {
        let mut r = [0u8; 5];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut r))
            .expect("cannot read /dev/urandom");
        let subnet = format!("10.{}.{}", 64 + r[0] % 128, r[1]);
        let tag = format!("{:02x}{:02x}{:02x}", r[2], r[3], r[4]);
        if !used.contains(&format!("{subnet}.")) && !used.contains(&tag) {
            return (tag, subnet);
        }
    }
    panic!("found no free 10.a.b subnet for the lab in 50 tries");
}

// ---- network faults (labs with network namespaces only) ----

impl Lab {
    fn netns(&self) -> &Netns {
        self.netns
            .as_ref()
            .expect("this lab runs on loopback; start it with Lab::start_netns or Lab::start_with(.., true)")
    }

    /// Cuts node `i` off from every other node and from the test process: its veth's end
    /// on the bridge goes down, so its packets (and everyone's packets to it) are lost, as
    /// when a host's cable is pulled. Its processes keep running.
    pub fn isolate(&self, i: usize) {
        let veth = &self.netns().host_veths[i];
        ip(&["link", "set", veth, "down"]).unwrap_or_else(|e| panic!("cannot isolate {}: {e}", self.nodes[i].name));
        self.note(&format!("isolated {} (link {veth} down)", self.nodes[i].name));
    }

    /// Undoes [`Lab::isolate`].
    pub fn heal(&self, i: usize) {
        let veth = &self.netns().host_veths[i];
        ip(&["link", "set", veth, "up"]).unwrap_or_else(|e| panic!("cannot heal {}: {e}", self.nodes[i].name));
        self.note(&format!("healed {} (link {veth} up)", self.nodes[i].name));
    }

    /// Separates the nodes in `which` from each other while each still reaches every other
    /// node and the test process (a partial partition): their ports on the bridge become
    /// isolated ports, which forward only to and from ports that are not.
    pub fn separate(&self, which: &[usize]) {
        for &i in which {
            let veth = &self.netns().host_veths[i];
            bridge_port_isolated(veth, true);
        }
        let names: Vec<&str> = which.iter().map(|i| self.name(*i)).collect();
        self.note(&format!("separated {} from each other", names.join(" | ")));
    }

    /// Undoes [`Lab::separate`].
    pub fn reconnect(&self, which: &[usize]) {
        for &i in which {
            let veth = &self.netns().host_veths[i];
            bridge_port_isolated(veth, false);
        }
        let names: Vec<&str> = which.iter().map(|i| self.name(*i)).collect();
        self.note(&format!("reconnected {}", names.join(", ")));
    }
}
