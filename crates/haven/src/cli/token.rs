//! `haven token`: the API's bearer tokens (admin only). `create` prints the secret, the
//! only time it is shown; `list` never shows one; `revoke` makes a token useless at once.

use clap::Subcommand;
use haven_api::{Client, TokenCreate};
use haven_model::Dur;

use super::{Failure, print_done, usage, wire_value};
use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create an API token and print its secret (shown only now; the cluster keeps a hash).
    Create {
        /// The token's name: the history shows it as the author of every change made with it.
        #[arg(long)]
        name: String,
        /// reader (every read), operator (also move, online/offline, pause/resume, clear,
        /// guest control) or admin (everything).
        #[arg(long)]
        role: String,
        /// How long it is accepted, e.g. 30d or 12h (1m to 3650d). Default: until revoked.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List the API tokens: name, role, creator, expiry (never a secret).
    List,
    /// Revoke an API token: it is refused from now on.
    Revoke { name: String },
}

pub(super) async fn run(c: &Client, fmt: Format, cmd: TokenCmd) -> Result<(), Failure> {
    match cmd {
        TokenCmd::Create { name, role, ttl } => {
            let role = wire_value("--role", &role, "use reader, operator or admin")?;
            let ttl = ttl.map(|t| Dur::parse(&t).map_err(|e| usage(format!("--ttl: {e}")))).transpose()?;
            let t = c.create_token(&TokenCreate { name, role, ttl }).await?;
            if fmt == Format::Json {
                output::json(&t);
            } else {
                let expiry = t.expires_at.map(|e| format!(", expires {}", output::time(e))).unwrap_or_default();
                println!(
                    "API token {:?} (role {}{expiry}) created; its secret is shown only this once:",
                    t.name, t.role
                );
                println!("{}", t.token);
                println!("use it with --token, HAVEN_TOKEN, or `token = \"...\"` in ~/.config/haven/cli.toml");
            }
        }
        TokenCmd::List => {
            let tokens = c.tokens().await?;
            output::list_of(fmt, &tokens, &["NAME", "ROLE", "CREATED", "BY", "EXPIRES"], |t| {
                let expires = match t.expires_at {
                    Some(e) if t.expired => format!("expired {}", output::time(e)),
                    Some(e) => output::time(e),
                    None => "never".into(),
                };
                vec![t.name.clone(), t.role.to_string(), output::time(t.created_at), t.created_by.clone(), expires]
            });
        }
        TokenCmd::Revoke { name } => {
            let r = c.revoke_token(&name).await?;
            print_done(fmt, &r, &format!("API token {:?} revoked", r.revoked));
        }
    }
    Ok(())
}
