//! Running the `haven` CLI against a lab node, the way an operator would.

use serde_json::Value;

use super::HAVEN;
use super::lab::Lab;

impl Lab {
    /// The CLI against node `i` with the lab's admin token (and never the config file of
    /// whoever runs the tests), to add arguments to.
    pub fn cli(&self, i: usize) -> std::process::Command {
        let mut cmd = std::process::Command::new(HAVEN);
        cmd.env("HAVEN_TOKEN", &self.token).env("XDG_CONFIG_HOME", self.dir()).arg("--server").arg(&self.nodes[i].addr);
        cmd
    }

    /// Runs the CLI against node `i` with `-o json` and returns its parsed output; panics
    /// (with stderr) if it fails.
    pub async fn cli_json(&self, i: usize, args: &[&str]) -> Value {
        let out = tokio::process::Command::new(HAVEN)
            .env("HAVEN_TOKEN", &self.token)
            // Never the config file of whoever runs the tests.
            .env("XDG_CONFIG_HOME", self.dir())
            .arg("--server")
            .arg(&self.nodes[i].addr)
            .arg("-o")
            .arg("json")
            .args(args)
            .output()
            .await
            .expect("cannot run the haven CLI");
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
