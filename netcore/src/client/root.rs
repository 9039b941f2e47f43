//! Root record reads and writes across the committee (see [`crate::root`] for the quorum rule).

use tracing::{debug, warn};

use super::{Client, ClientError, Failures, NodeError, NodeFailure, Wait};
use crate::codec::SliverIndex;
use crate::identity::PublicKey;
use crate::root::{RootAnswers, RootRecord};
use crate::wire::{Request, Response, WireError};

/// Outcome of a root write that reached its quorum.
#[derive(Debug, Default)]
pub struct RootWrite {
    /// Nodes that durably stored the record.
    pub acks: Vec<SliverIndex>,
    /// Nodes that refused because they hold this version or a newer one, with that version.
    pub stale: Vec<(SliverIndex, u64)>,
}

impl Client {
    /// Reads an archive's root record from every node. Returns once every node answered, or at
    /// least `n - f` did and the rest had a hedge delay more (none if each of them has failed
    /// to connect or been connecting for a hedge delay); fails if fewer than `n - f` nodes
    /// answered. A node returning a record that does not verify for `archive` (forged, or
    /// another archive's) counts as a failure, not an answer.
    pub async fn get_root(&self, archive: &PublicKey) -> Result<RootAnswers, ClientError> {
        let quorum = usize::from(self.inner.committee.write_quorum());
        self.get_root_from(archive, quorum).await
    }

    /// [`Client::get_root`] content with `enough` answers instead of `n - f`: it waits as
    /// that does, but stops as soon as `enough` nodes answered and every node yet to answer
    /// looks gone (a connect failed, or has been in progress for a hedge delay), and fails
    /// only with fewer than `enough`. With fewer than `n - f` answers, the highest version
    /// among them may not be the latest: the nodes that did not answer may hold a newer one,
    /// and those that did may withhold it. Only for a reader that says so (a read-only mount
    /// while more than `f` nodes are away).
    pub async fn get_root_from(
        &self,
        archive: &PublicKey,
        enough: usize,
    ) -> Result<RootAnswers, ClientError> {
        let quorum = usize::from(self.inner.committee.write_quorum());
        let enough = enough.clamp(1, quorum);
        let cfg = &self.inner.config;
        let deadline = cfg.request_deadline(0);
        let mut answers = RootAnswers::default();
        let mut failures = Vec::new();
        let gathered = self
            .gather(
                |node| async move {
                    let req = Request::GetRoot { archive: *archive };
                    let (resp, _) = node.request(cfg, req, None, deadline).await?;
                    match resp {
                        Response::Root(None) => Ok(None),
                        Response::Root(Some(record)) => match record.verify_for(archive) {
                            // INV (DESIGN 2, 5): only verified records are counted.
                            Ok(()) => Ok(Some(record)),
                            Err(e) => {
                                warn!(
                                    node = node.info.index,
                                    "node returned an invalid root record: {e}"
                                );
                                Err(NodeError::Unexpected(format!("invalid root record: {e}")))
                            }
                        },
                        other => Err(super::conn::unexpected(other)),
                    }
                },
                Wait::Quorum { enough, quorum },
            )
            .await;
        for (node, r) in gathered {
            match r {
                Ok(r) => answers.answers.push((node, r)),
                Err(error) => {
                    debug!(node, "root read failed: {error}");
                    failures.push(NodeFailure { node, error });
                }
            }
        }
        if answers.answered() < enough {
            return Err(ClientError::RootUnavailable {
                answered: answers.answered() as u16,
                needed: enough as u16,
                failures: Failures(failures),
            });
        }
        Ok(answers)
    }

    /// Writes a root record to the nodes `only` lists, each on its own (repair uses it to bring
    /// nodes that lost or missed the latest record up to date). Per node: stored, or why not.
    pub async fn put_root_on(
        &self,
        record: &RootRecord,
        only: &[SliverIndex],
    ) -> Vec<(SliverIndex, Result<(), NodeError>)> {
        let cfg = &self.inner.config;
        let futs = self
            .inner
            .nodes
            .iter()
            .filter(|n| only.contains(&n.info.index))
            .map(|node| async move { (node.info.index, put_root_one(node, cfg, record).await) });
        futures::future::join_all(futs).await
    }

    /// Writes a root record to every node; succeeds once `n - f` nodes stored it durably.
    /// Returns early, leaving the remaining writes to finish in the background, as soon as the
    /// quorum is reached or has become impossible.
    pub async fn put_root(&self, record: &RootRecord) -> Result<RootWrite, ClientError> {
        let quorum = usize::from(self.inner.committee.write_quorum());
        let n = self.inner.nodes.len();
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..n {
            let inner = self.inner.clone();
            let record = record.clone();
            tasks.spawn(async move {
                let node = &inner.nodes[index];
                (
                    node.info.index,
                    put_root_one(node, &inner.config, &record).await,
                )
            });
        }
        let mut out = RootWrite::default();
        let mut failures = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((node, result)) = joined else { continue };
            match result {
                Ok(()) => out.acks.push(node),
                Err(NodeError::Remote(WireError::StaleRoot { held })) => {
                    out.stale.push((node, held));
                    failures.push(NodeFailure {
                        node,
                        error: NodeError::Remote(WireError::StaleRoot { held }),
                    });
                }
                Err(error) => failures.push(NodeFailure { node, error }),
            }
            if out.acks.len() >= quorum || failures.len() > n - quorum {
                break;
            }
        }
        if !tasks.is_empty() {
            let mut bg = self.inner.background.lock().await;
            bg.spawn(async move { while tasks.join_next().await.is_some() {} });
        }
        if out.acks.len() >= quorum {
            Ok(out)
        } else {
            Err(ClientError::RootNotStored {
                version: record.version,
                stored: out.acks.len() as u16,
                needed: quorum as u16,
                stale: out.stale,
                failures: Failures(failures),
            })
        }
    }
}

/// Writes `record` to one node; `Ok` once it stored it durably.
async fn put_root_one(
    node: &super::conn::NodeConn,
    cfg: &super::ClientConfig,
    record: &RootRecord,
) -> Result<(), NodeError> {
    let req = Request::PutRoot {
        record: record.clone(),
    };
    let (resp, _) = node
        .request(cfg, req, None, cfg.request_deadline(0))
        .await?;
    match resp {
        Response::RootStored { .. } => Ok(()),
        other => Err(super::conn::unexpected(other)),
    }
}
