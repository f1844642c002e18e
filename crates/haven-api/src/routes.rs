//! The operations of `/api/v1`, one [`Client`] method each, taking and returning the wire
//! types of this crate (and of `haven-model`): the only place that knows the routes' paths.
//! Names in a path are percent-encoded ([`segment`]); the agent validates them.
//!
//! Writes go through the client's failover and `Idempotency-Key` rules (see
//! [`crate::client`]). Nothing here retries, waits or interprets an answer: an error is
//! returned as the agent gave it.

use haven_model::{FenceConfig, GroupSpec, GroupUpdate, HaReport, ResourceSpec, ResourceUpdate};
use haven_state::Event;

use crate::{
    Client, ClientError, ClusterStatus, DefinitionEdit, DefinitionEdited, Deleted, GroupView, GuestControl,
    GuestControlSent, HistoryQuery, InitRequest, InitResponse, JoinRequest, JoinTokenCreated, JoinTokenRequest,
    MakeHaRequest, MoveRequest, NodeView, Removed, RequestView, ResourceView, TokenCreate, TokenCreated, TokenRevoked,
    TokenView, VmCreate, VmView,
};

/// The prefix of every route (see [`crate::API_PREFIX`]).
const V1: &str = crate::API_PREFIX;

/// `s` fit for one path segment or query value: every byte but the unreserved characters
/// of RFC 3986 (letters, digits, `-`, `.`, `_`, `~`) percent-encoded.
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of the routes that take none (`{}`, which every such route accepts).
#[derive(serde::Serialize)]
struct NoBody {}

impl Client {
    // ---- cluster ----

    /// `GET /cluster`: who this agent is, the leader, the members, its lease.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        self.get(&format!("{V1}/cluster")).await
    }

    /// `POST /cluster/init`: found a cluster called `name` on this agent.
    pub async fn init_cluster(&self, name: &str) -> Result<InitResponse, ClientError> {
        self.post(&format!("{V1}/cluster/init"), &InitRequest { name: Some(name.to_string()) }).await
    }

    /// `POST /cluster/join`: make this agent join the cluster that `address` (any member,
    /// `host:port`) belongs to, with a join token and the CA fingerprint it expects.
    pub async fn join_cluster(
        &self,
        address: &str,
        token: &str,
        ca_fingerprint: &str,
    ) -> Result<NodeView, ClientError> {
        let body = JoinRequest {
            address: address.to_string(),
            token: token.to_string(),
            ca_fingerprint: ca_fingerprint.to_string(),
        };
        self.post(&format!("{V1}/cluster/join"), &body).await
    }

    /// `POST /cluster/join-tokens`: a join token for new nodes (shown once) and the CA
    /// fingerprint they check.
    pub async fn create_join_token(&self, request: &JoinTokenRequest) -> Result<JoinTokenCreated, ClientError> {
        self.post(&format!("{V1}/cluster/join-tokens"), request).await
    }

    pub async fn join_tokens(&self) -> Result<Vec<crate::JoinTokenView>, ClientError> {
        self.get(&format!("{V1}/cluster/join-tokens")).await
    }

    pub async fn revoke_join_token(&self, id: &str) -> Result<crate::JoinTokenRevoked, ClientError> {
        self.delete(&format!("{V1}/cluster/join-tokens/{}", segment(id))).await
    }

    // ---- CA and node certificates ----

    pub async fn ca_status(&self) -> Result<crate::CaStatus, ClientError> {
        self.get(&format!("{V1}/cluster/ca")).await
    }

    pub async fn rotate_ca(&self) -> Result<crate::CaRotated, ClientError> {
        self.post(&format!("{V1}/cluster/ca/rotate"), &NoBody {}).await
    }

    pub async fn retire_ca(&self, fingerprint: &str) -> Result<crate::CaStatus, ClientError> {
        let body = crate::RetireCaRequest { fingerprint: fingerprint.to_string() };
        self.post(&format!("{V1}/cluster/ca/retire"), &body).await
    }

    pub async fn renew_node_certificate(&self, node: &str) -> Result<crate::NodeCertView, ClientError> {
        self.post(&format!("{}/renew-certificate", node_path(node)), &NoBody {}).await
    }

    // ---- API tokens ----

    /// `GET /tokens`: every API token, without secrets.
    pub async fn tokens(&self) -> Result<Vec<TokenView>, ClientError> {
        self.get(&format!("{V1}/tokens")).await
    }

    /// `POST /tokens`: a new API token; the answer holds its secret, shown only this once.
    pub async fn create_token(&self, body: &TokenCreate) -> Result<TokenCreated, ClientError> {
        self.post(&format!("{V1}/tokens"), body).await
    }

    /// `DELETE /tokens/{name}`: revoke a token (it is refused from then on).
    pub async fn revoke_token(&self, name: &str) -> Result<TokenRevoked, ClientError> {
        self.delete(&format!("{V1}/tokens/{}", segment(name))).await
    }

    // ---- nodes ----

    /// `GET /nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.get(&format!("{V1}/nodes")).await
    }

    /// `GET /nodes/{name}`.
    pub async fn node(&self, name: &str) -> Result<NodeView, ClientError> {
        self.get(&node_path(name)).await
    }

    /// `POST /nodes/{name}/pause` (`paused`) or `/resume`: a paused node takes no groups and
    /// its groups move away.
    pub async fn set_node_paused(&self, name: &str, paused: bool) -> Result<NodeView, ClientError> {
        let action = if paused { "pause" } else { "resume" };
        self.post(&format!("{}/{action}", node_path(name)), &NoBody {}).await
    }

    /// `DELETE /nodes/{name}`: remove a node that is down from the cluster.
    pub async fn remove_node(&self, name: &str) -> Result<Removed, ClientError> {
        self.delete(&node_path(name)).await
    }

    /// `PUT /nodes/{name}/fence`: how the cluster fences `name`.
    pub async fn set_fence(&self, name: &str, config: &FenceConfig) -> Result<NodeView, ClientError> {
        self.put(&format!("{}/fence", node_path(name)), config).await
    }

    /// `DELETE /nodes/{name}/fence`: `name` is no longer fenced.
    pub async fn remove_fence(&self, name: &str) -> Result<NodeView, ClientError> {
        self.delete(&format!("{}/fence", node_path(name))).await
    }

    // ---- groups ----

    /// `GET /groups`.
    pub async fn groups(&self) -> Result<Vec<GroupView>, ClientError> {
        self.get(&format!("{V1}/groups")).await
    }

    /// `GET /groups/{name}`.
    pub async fn group(&self, name: &str) -> Result<GroupView, ClientError> {
        self.get(&group_path(name)).await
    }

    /// `POST /groups`.
    pub async fn create_group(&self, spec: &GroupSpec) -> Result<GroupView, ClientError> {
        self.post(&format!("{V1}/groups"), spec).await
    }

    /// `PATCH /groups/{name}`: change the properties `update` names.
    pub async fn update_group(&self, name: &str, update: &GroupUpdate) -> Result<GroupView, ClientError> {
        self.patch(&group_path(name), update).await
    }

    /// `DELETE /groups/{name}` (a group without resources).
    pub async fn delete_group(&self, name: &str) -> Result<Deleted, ClientError> {
        self.delete(&group_path(name)).await
    }

    /// `POST /groups/{name}/move`: a planned move to node `to`.
    pub async fn move_group(&self, name: &str, to: &str) -> Result<GroupView, ClientError> {
        self.post(&format!("{}/move", group_path(name)), &MoveRequest { node: to.to_string() }).await
    }

    /// `POST /groups/{name}/online` (`online`) or `/offline`.
    pub async fn set_group_online(&self, name: &str, online: bool) -> Result<GroupView, ClientError> {
        let action = if online { "online" } else { "offline" };
        self.post(&format!("{}/{action}", group_path(name)), &NoBody {}).await
    }

    // ---- resources ----

    /// `GET /resources`: every resource.
    pub async fn resources(&self) -> Result<Vec<ResourceView>, ClientError> {
        self.get(&format!("{V1}/resources")).await
    }

    /// `GET /resources?group=`: the resources of `group`.
    pub async fn resources_of(&self, group: &str) -> Result<Vec<ResourceView>, ClientError> {
        self.get(&format!("{V1}/resources?group={}", segment(group))).await
    }

    /// `GET /resources/{name}`.
    pub async fn resource(&self, name: &str) -> Result<ResourceView, ClientError> {
        self.get(&resource_path(name)).await
    }

    /// `POST /resources`.
    pub async fn create_resource(&self, spec: &ResourceSpec) -> Result<ResourceView, ClientError> {
        self.post(&format!("{V1}/resources"), spec).await
    }

    /// `PATCH /resources/{name}`: change what `update` names.
    pub async fn update_resource(&self, name: &str, update: &ResourceUpdate) -> Result<ResourceView, ClientError> {
        self.patch(&resource_path(name), update).await
    }

    /// `DELETE /resources/{name}` (one no node may be running: offline or failed).
    pub async fn delete_resource(&self, name: &str) -> Result<Deleted, ClientError> {
        self.delete(&resource_path(name)).await
    }

    /// `POST /resources/{name}/clear`: forget its failures.
    pub async fn clear_resource(&self, name: &str) -> Result<ResourceView, ClientError> {
        self.post(&format!("{}/clear", resource_path(name)), &NoBody {}).await
    }

    // ---- history and requests ----

    /// `GET /history`: the events `query` selects, oldest first.
    pub async fn history(&self, query: &HistoryQuery) -> Result<Vec<Event>, ClientError> {
        let mut q = Vec::new();
        if let Some(l) = query.limit {
            q.push(format!("limit={l}"));
        }
        for (k, v) in [("group", &query.group), ("resource", &query.resource), ("node", &query.node)] {
            if let Some(v) = v {
                q.push(format!("{k}={}", segment(v)));
            }
        }
        let query = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
        self.get(&format!("{V1}/history{query}")).await
    }

    /// `GET /requests/{id}`: the committed outcome of the write sent with `Idempotency-Key`
    /// `id` (404 while none is committed).
    pub async fn request_outcome(&self, id: &str) -> Result<RequestView, ClientError> {
        self.get(&format!("{V1}/requests/{}", segment(id))).await
    }

    // ---- VMs ----

    /// `GET /vms`: every VM, with what its owner node knows of it.
    pub async fn vms(&self) -> Result<Vec<VmView>, ClientError> {
        self.get(&format!("{V1}/vms")).await
    }

    /// `GET /vms/{name}` (any agent answers; the runtime comes from the owner).
    pub async fn vm(&self, name: &str) -> Result<VmView, ClientError> {
        self.get(&vm_path(name)).await
    }

    /// `POST /vms`: write a definition on a group's volume and create its `vm-config` and
    /// `vm` resources.
    pub async fn create_vm(&self, request: &VmCreate) -> Result<VmView, ClientError> {
        self.post(&format!("{V1}/vms"), request).await
    }

    /// `GET /vms/{name}/console`: the end of the guest's serial console log.
    pub async fn vm_console(&self, name: &str) -> Result<String, ClientError> {
        self.get(&format!("{}/console", vm_path(name))).await
    }

    /// `PUT /vms/{name}/definition`: replace the VM's definition file with `text` (in the
    /// file's own syntax), while the VM is offline.
    pub async fn edit_vm_definition(&self, name: &str, text: &str) -> Result<DefinitionEdited, ClientError> {
        self.put(&format!("{}/definition", vm_path(name)), &DefinitionEdit { text: text.to_string() }).await
    }

    /// `POST /vms/{name}/guest-control`: write `line` to the guest's control channel.
    pub async fn guest_control(&self, name: &str, line: &str) -> Result<GuestControlSent, ClientError> {
        self.post(&format!("{}/guest-control", vm_path(name)), &GuestControl { line: line.to_string() }).await
    }

    /// `POST /vms/make-ha`: the HA wizard (the answer is its report, also when a check failed).
    pub async fn make_ha(&self, request: &MakeHaRequest) -> Result<HaReport, ClientError> {
        self.post(&format!("{V1}/vms/make-ha"), request).await
    }
}

fn node_path(name: &str) -> String {
    format!("{V1}/nodes/{}", segment(name))
}

fn group_path(name: &str) -> String {
    format!("{V1}/groups/{}", segment(name))
}

fn resource_path(name: &str) -> String {
    format!("{V1}/resources/{}", segment(name))
}

fn vm_path(name: &str) -> String {
    format!("{V1}/vms/{}", segment(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_keep_names_and_encode_the_rest() {
        assert_eq!(segment("web-1_a.b~c"), "web-1_a.b~c");
        assert_eq!(segment("a/b c?d#é"), "a%2Fb%20c%3Fd%23%C3%A9");
        assert_eq!(group_path("../x"), "/api/v1/groups/..%2Fx");
    }
}
