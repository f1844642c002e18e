//! Waiting with deadlines: poll a condition until it holds ([`Lab::wait_for`],
//! [`Lab::wait_until`]) or check that it keeps holding ([`Lab::hold_for`]), each bounded
//! in time and naming what it waits for; a wait that times out panics with the last lines
//! of every agent's log ([`Lab::logs_tail`]).

use std::time::{Duration, Instant};

use super::lab::Lab;

/// How often [`Lab::wait_for`] looks again.
const POLL: Duration = Duration::from_millis(100);
/// Agent log lines quoted when a wait times out.
const LOG_TAIL_LINES: usize = 25;

impl Lab {
    /// Waits until node `i`'s API answers (a refusal is an answer: an agent in a network
    /// namespace refuses plain HTTP from the test process).
    pub async fn wait_answering(&self, i: usize) {
        let c = &self.nodes[i].client;
        self.wait_until(&format!("{} to answer on {}", self.nodes[i].name, self.nodes[i].addr), 20, async || {
            !matches!(c.cluster_status().await, Err(haven_api::ClientError::Unreachable { .. }))
        })
        .await;
    }

    /// Polls `check` every 100 ms until it yields a value, for at most `limit_s` seconds;
    /// on timeout panics naming `what`, with the agents' last log lines.
    pub async fn wait_for<T>(&self, what: &str, limit_s: u64, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        self.note(&format!("waiting for {what} (up to {limit_s}s)"));
        let begun = Instant::now();
        let deadline = begun + Duration::from_secs(limit_s);
        loop {
            if let Some(v) = check().await {
                self.note(&format!("ok after {:.2}s: {what}", begun.elapsed().as_secs_f64()));
                return v;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {limit_s}s waiting for {what}\n{}", self.logs_tail());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// [`Lab::wait_for`] with a yes/no condition.
    pub async fn wait_until(&self, what: &str, limit_s: u64, mut check: impl AsyncFnMut() -> bool) {
        self.wait_for(what, limit_s, async || check().await.then_some(())).await
    }

    /// Asserts that `check` holds at every poll for `secs` seconds (things that must *not*
    /// happen, such as a second start); panics at the first poll where it does not.
    pub async fn hold_for(&self, what: &str, secs: f64, mut check: impl AsyncFnMut() -> Result<(), String>) {
        self.note(&format!("checking for {secs}s that {what}"));
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut polls = 0;
        while Instant::now() < deadline {
            if let Err(why) = check().await {
                panic!("{what} stopped holding after {polls} polls: {why}\n{}", self.logs_tail());
            }
            polls += 1;
            tokio::time::sleep(POLL).await;
        }
        self.note(&format!("held for {secs}s ({polls} polls): {what}"));
    }

    /// The last lines of every agent's log, for failure messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(n.log_path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            out.push_str(&format!("---- {} ({}), last lines of {}:\n", n.name, n.addr, n.log_path().display()));
            for l in &lines[from..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}
