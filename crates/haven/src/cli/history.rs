//! `haven history`: the cluster's event history, filtered by group, resource or node.

use clap::Args;
use haven_api::{Client, HistoryQuery};

use super::Failure;
use crate::output::{self, Format};

#[derive(Args, Debug)]
pub struct HistoryArgs {
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long)]
    pub resource: Option<String>,
    #[arg(long)]
    pub node: Option<String>,
    /// Most recent events to show.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

pub(super) async fn run(c: &Client, fmt: Format, h: HistoryArgs) -> Result<(), Failure> {
    let query = HistoryQuery { group: h.group, resource: h.resource, node: h.node, limit: Some(h.limit) };
    let events = c.history(&query).await?;
    if fmt == Format::Json {
        output::json(&events);
    } else {
        let rows =
            events.iter().map(|e| vec![output::time(e.at), e.kind.clone(), e.by.clone(), e.message.clone()]).collect();
        output::table(&["TIME", "EVENT", "BY", "MESSAGE"], rows);
    }
    Ok(())
}
