//! Running the `haven` CLI against a lab node, the way an operator would.

use serde_json::Value;

use super::HAVEN;
use super::lab::Lab;

impl Lab {
    /// The CLI against node `i` with the lab's admin token and CA fingerprint (so over
    /// HTTPS, once the cluster is founded), and never the config file of whoever runs the
    /// tests, to add arguments to.
    pub fn cli(&self, i: usize) -> std::process::Command {
        let mut cmd = std::process::Command::new(HAVEN);
        cmd.env("HAVEN_TOKEN", &self.token)
            .env("HAVEN_CA_FINGERPRINT", &self.ca_fingerprint)
            .env("XDG_CONFIG_HOME", self.dir())
            .arg("--server")
            .arg(&self.nodes[i].addr);
        cmd
    }

    /// Runs the CLI against node `i` with `-o json` and returns its parsed output; panics
    /// (with stderr) if it fails.
    pub async fn cli_json(&self, i: usize, args: &[&str]) -> Value {
        let mut cmd = tokio::process::Command::from(self.cli(i));
        let out = cmd.arg("-o").arg("json").args(args).output().await.expect("cannot run the haven CLI");
        self.json_of(i, args, out)
    }

    /// Runs the CLI on node `i`'s own host (in its network namespace; the lab must have
    /// them) against that node, with `-o json`, and returns its parsed output; panics (with
    /// stderr) if it fails. An agent that does not listen on loopback takes plain HTTP from
    /// its own host only: this is how it is founded or joined.
    pub fn cli_on_host(&self, i: usize, args: &[&str]) -> Value {
        let ns = self.nodes[i].netns.as_deref().expect("cli_on_host needs a lab in network namespaces");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns, HAVEN, "--server", &self.nodes[i].addr, "-o", "json"])
            .args(args)
            .env("HAVEN_TOKEN", &self.token)
            .env("XDG_CONFIG_HOME", self.dir())
            .output()
            .expect("cannot run ip netns exec haven");
        self.json_of(i, args, out)
    }

    fn json_of(&self, i: usize, args: &[&str], out: std::process::Output) -> Value {
        assert!(
            out.status.success(),
            "`haven -o json {}` against {} failed ({}): {}",
            args.join(" "),
            self.nodes[i].name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("`haven -o json {}` printed no JSON ({e}): {}", args.join(" "), String::from_utf8_lossy(&out.stdout))
        })
    }
}
