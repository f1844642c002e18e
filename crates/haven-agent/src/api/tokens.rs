//! `/api/v1/tokens`: the API's bearer tokens (admin only): list them (never a secret),
//! create one (its secret is in this answer only) and revoke one. [`mint`] makes a token
//! for `POST /cluster/init` too.

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxState;
use haven_api::{ErrorBody, TokenCreate, TokenCreated, TokenRevoked, TokenView};
use haven_model::{Dur, InvalidInput};
use haven_state::{ApiToken, Command, Role};

use super::auth::{hash_secret, new_secret};
use super::cluster::require_cluster;
use super::{ApiError, ApiResult, Body, Name};
use crate::{Agent, SubmitError, now_ms};

/// Shortest and longest `ttl` of a token.
const TTL_MIN: Dur = Dur::from_secs(60);
const TTL_MAX: Dur = Dur::from_secs(3650 * 24 * 3600);

/// A new token called `name`: its secret (to show once) and what the cluster keeps of it
/// (`created_at`/`created_by` are set when it is applied).
pub(super) fn mint(name: &str, role: Role, expires_at: Option<u64>) -> Result<(String, ApiToken), ApiError> {
    let secret = new_secret()?;
    let token = ApiToken {
        name: name.to_string(),
        role,
        hash: hash_secret(&secret),
        created_at: 0,
        created_by: String::new(),
        expires_at,
    };
    Ok((secret, token))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", responses((status = 200, body = [TokenView])))]
pub(super) async fn list_tokens(AxState(agent): AxState<Arc<Agent>>) -> ApiResult<Vec<TokenView>> {
    let state = agent.db.state();
    require_cluster(&state)?;
    let now = now_ms();
    Ok(Json(
        state
            .api_tokens
            .values()
            .map(|t| TokenView {
                name: t.name.clone(),
                role: t.role,
                created_at: t.created_at,
                created_by: t.created_by.clone(),
                expires_at: t.expires_at,
                expired: t.expired(now),
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = TokenCreate,
    responses((status = 200, body = TokenCreated), (status = 409, body = ErrorBody)))]
pub(super) async fn create_token(
    AxState(agent): AxState<Arc<Agent>>,
    Body(req): Body<TokenCreate>,
) -> ApiResult<TokenCreated> {
    require_cluster(&agent.db.state())?;
    haven_state::tokens::validate_token_name(&req.name).map_err(|e| SubmitError::Refused(e.into()))?;
    let expires_at = match req.ttl {
        None => None,
        Some(ttl) if ttl < TTL_MIN || ttl > TTL_MAX => {
            let e =
                InvalidInput::new("ttl", format!("{ttl} is out of range; give {TTL_MIN} to {TTL_MAX}, e.g. \"30d\""));
            return Err(SubmitError::Refused(e.into()).into());
        }
        Some(ttl) => Some(now_ms() + ttl.as_millis()),
    };
    let (secret, token) = mint(&req.name, req.role, expires_at)?;
    agent.submit("operator", Command::CreateToken { token }).await?;
    Ok(Json(TokenCreated { name: req.name, role: req.role, token: secret, expires_at }))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{name}", tag = "tokens",
    responses((status = 200, body = TokenRevoked), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn revoke_token(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<TokenRevoked> {
    agent.submit("operator", Command::RevokeToken { name: name.clone() }).await?;
    Ok(Json(TokenRevoked { revoked: name }))
}
