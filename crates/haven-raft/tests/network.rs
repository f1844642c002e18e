//! How transport failures reach openraft: a down peer is `Unreachable` (openraft backs off),
//! a peer that does not serve the raft routes is `Unreachable` too, a silent peer is `Timeout`.

use std::time::Duration;

use haven_raft::BasicNode;
use haven_raft::network::HttpNetworkFactory;
use openraft::error::RPCError;
use openraft::network::RPCOption;
use openraft::raft::VoteRequest;
use openraft::{RaftNetwork, RaftNetworkFactory, Vote};
use tokio::net::TcpListener;

async fn vote_to(addr: String) -> RPCError<u64, BasicNode, openraft::error::RaftError<u64>> {
    let mut factory = HttpNetworkFactory::new(1).expect("HTTP client");
    let mut peer = factory.new_client(2, &BasicNode { addr }).await;
    let rpc = VoteRequest::new(Vote::new(1, 1), None);
    peer.vote(rpc, RPCOption::new(Duration::from_millis(300))).await.expect_err("the vote cannot succeed")
}

#[tokio::test]
async fn a_down_peer_is_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    drop(listener);
    let err = vote_to(addr).await;
    assert!(matches!(err, RPCError::Unreachable(_)), "got {err:?}");
}

#[tokio::test]
async fn a_peer_without_the_raft_routes_is_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    let server = tokio::spawn(async move { axum::serve(listener, axum::Router::new()).await });
    let err = vote_to(addr).await;
    assert!(matches!(err, RPCError::Unreachable(_)), "got {err:?}");
    assert!(err.to_string().contains("404"), "the error names the HTTP status: {err}");
    server.abort();
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    // Accepted by the kernel's backlog but never answered.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    let err = vote_to(addr).await;
    assert!(matches!(err, RPCError::Timeout(_)), "got {err:?}");
    drop(listener);
}
