//! Raft RPCs on the node's QUIC transport.
//!
//! openraft's requests and responses are postcard-encoded and carried in
//! [`Request::Raft`]; the answer is [`Response::Raft`] holding the encoded
//! `Result<response, RaftError>`, so a remote Raft error arrives as a
//! [`RemoteError`] and a transport failure as [`Unreachable`] (openraft then backs off).
//! The links are the node's [`Peers`]: mutual TLS with the cluster CA, one connection per
//! peer.

use std::sync::Arc;

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_proto::wire::{RaftRpc, Request, Response};

use super::peers::Peers;
use crate::raft::{PeerNode, TypeConfig};

/// Makes a [`PeerNetwork`] per peer for openraft.
#[derive(Clone)]
pub struct NetworkFactory {
    peers: Arc<Peers>,
}

impl NetworkFactory {
    /// Raft RPCs over these links.
    pub fn new(peers: Arc<Peers>) -> Self {
        Self { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> PeerNetwork {
        PeerNetwork {
            peers: Arc::clone(&self.peers),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// Raft's view of one peer.
pub struct PeerNetwork {
    peers: Arc<Peers>,
    target: u64,
    addr: String,
}

/// Encodes an openraft message for [`Request::Raft`].
pub fn encode<T: Serialize>(message: &T) -> Result<Bytes, postcard::Error> {
    postcard::to_allocvec(message).map(Bytes::from)
}

/// Decodes an openraft message from [`Request::Raft`] or [`Response::Raft`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

impl PeerNetwork {
    async fn send<Req, Resp, E>(
        &self,
        rpc: RaftRpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, PeerNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = self
            .peers
            .call(
                &self.addr,
                0,
                Request::Raft { rpc, payload },
                &[],
                option.hard_ttl(),
            )
            .await;
        let bytes = match answer {
            Ok((Response::Raft(bytes), _)) => bytes,
            Ok((other, _)) => {
                let e = std::io::Error::other(format!(
                    "peer {} answered a Raft RPC with {}",
                    self.addr,
                    other.kind()
                ));
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
        };
        let result: Result<Resp, RaftError<u64, E>> =
            decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        self.send(RaftRpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, PeerNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.send(RaftRpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        self.send(RaftRpc::Vote, &rpc, &option).await
    }
}
