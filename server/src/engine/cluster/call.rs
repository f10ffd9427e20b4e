//! Control calls with a shared store. A call (pause, resume, cancel, the live edits) runs on
//! the replica that holds the download's lease: if this replica holds it, here; if nobody does,
//! this replica claims it for the call; if another replica holds it, the call is forwarded over
//! the feed and this one waits for the reply, which comes once the holder has let go, as on one
//! node. A holder that does not answer is presumed dead: its lease expires and the call is
//! tried again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{Engine, cluster};
use crate::auth::{Caller, Role, Tenant};
use crate::engine::DownloadView;
use crate::engine::download::Op;
use crate::error::Error;
use crate::operation::{CostPolicy, Priority, Status, StatusReason};
use crate::store::shared::{Claim, Notice};

/// How long a forwarded call waits for its reply before the holder is presumed gone. A pause
/// waits for the holder's transfer to let go, which takes well under this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

tokio::task_local! {
    /// Set while this replica carries out a call another replica forwarded: it is never
    /// forwarded again (the sender retries instead), so calls cannot bounce between replicas.
    static FORWARDED: bool;
}

/// A control call, as it is forwarded to the replica holding the download.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub(crate) enum Call {
    /// PauseDownload.
    Pause,
    /// ResumeDownload.
    Resume,
    /// CancelDownload.
    Cancel,
    /// SetCostPolicy.
    SetCostPolicy {
        /// The policy's number.
        policy: i32,
    },
    /// SetPriority.
    SetPriority {
        /// The priority's number.
        priority: i32,
    },
    /// SetRequestHeader.
    SetRequestHeader {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
        /// Whether to mark it sensitive.
        sensitive: bool,
    },
    /// RemoveRequestHeader.
    RemoveRequestHeader {
        /// Header name.
        name: String,
    },
    /// SetRequestedUri.
    SetRequestedUri {
        /// The new URI.
        uri: String,
        /// Headers set with it.
        headers: std::collections::BTreeMap<String, String>,
        /// Names marked sensitive with it.
        sensitive: Vec<String>,
    },
    /// SetRateLimit.
    SetRateLimit {
        /// Bytes per second; 0 for none.
        bytes_per_second: u64,
    },
    /// One member's new place in its group, from MakeCurrentInGroup.
    SetQueueOrder {
        /// Its queue slot.
        order: i64,
    },
}

/// A forwarded call on the feed: the call, the download and who asked.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    guid: String,
    tenant: String,
    role: String,
    name: String,
    call: Call,
}

/// A forwarded call's error on the feed.
#[derive(Debug, Serialize, Deserialize)]
struct RemoteError {
    /// The holder no longer held the download; the sender tries again.
    #[serde(default)]
    moved: bool,
    /// The gRPC code the holder would have answered with.
    code: i32,
    message: String,
}

/// Where a control call runs.
pub(in crate::engine) enum Control {
    /// Here: this replica holds the lease until the guard drops.
    Here(Held),
    /// Another replica carried it out; this is the download as it left it.
    Done(Box<DownloadView>),
}

/// A hold on a download's lease for one call; dropping it lets go (see `Engine::unhold`).
pub(in crate::engine) struct Held {
    engine: Option<(Engine, Arc<Op>)>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((engine, op)) = self.engine.take() {
            tokio::spawn(async move { engine.unhold(&op).await });
        }
    }
}

impl Engine {
    /// Decides where `call` on `guid` runs (see the module docs). With one transferd it always
    /// runs here.
    pub(in crate::engine) async fn control(
        &self,
        caller: &Caller,
        guid: &str,
        call: Call,
    ) -> Result<Control, Error> {
        let Some(cluster) = &self.inner.cluster else {
            return Ok(Control::Here(Held { engine: None }));
        };
        let forwarded = FORWARDED.try_with(|f| *f).unwrap_or(false);
        loop {
            let op = self.op_or_fetch(caller, guid).await?;
            if self.hold(&op) {
                return Ok(Control::Here(Held {
                    engine: Some((self.clone(), op)),
                }));
            }
            match cluster
                .shared
                .claim(cluster.node(), guid, cluster.ttl())
                .await?
            {
                Claim::Claimed(claimed) => {
                    self.take_control(&op, *claimed).await;
                    return Ok(Control::Here(Held {
                        engine: Some((self.clone(), op)),
                    }));
                }
                Claim::Missing => {
                    return Err(Error::NotFound { guid: guid.into() });
                }
                Claim::HeldBy(_) if forwarded => return Err(moved(guid)),
                Claim::HeldBy(holder) => match self.forward(&holder, caller, guid, &call).await {
                    Some(Ok(())) => return Ok(Control::Done(Box::new(self.view(&op)))),
                    Some(Err(e)) => return Err(e),
                    // Moved or no answer: look again (an unanswered lease expires meanwhile).
                    None => tokio::time::sleep(cluster.ttl() / 4).await,
                },
            }
        }
    }

    /// Takes the stored state of a download claimed for a control call.
    async fn take_control(&self, op: &Arc<Op>, claimed: crate::store::shared::Claimed) {
        let lease = claimed.lease;
        {
            let mut core = self.lock();
            let mut st = op.lock();
            let status = claimed.record.status;
            st.adopt(claimed.record);
            st.bytes = st.checkpoint;
            // A stored RUNNING whose lease we could claim lost its holder: it waits for a slot.
            let (status, reason) = if status == Status::Running {
                (Status::Idle, StatusReason::WaitingForSlot)
            } else {
                (status, st.reason)
            };
            core.mirror(op, &mut st, status, reason);
            st.lease = Some(lease);
            st.holds = 1;
        }
        self.adopt_partial(op, lease, claimed.took_over).await;
    }

    /// Sends `call` to `holder` and waits for its reply: `None` when it did not answer in
    /// time or no longer holds the download.
    async fn forward(
        &self,
        holder: &str,
        caller: &Caller,
        guid: &str,
        call: &Call,
    ) -> Option<Result<(), Error>> {
        let cluster = cluster(&self.inner);
        let id = cluster.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        cluster
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let envelope = Envelope {
            guid: guid.into(),
            tenant: caller.tenant.name().into(),
            role: caller.role.name().into(),
            name: caller.name.to_string(),
            call: call.clone(),
        };
        let notice = Notice::Call {
            id,
            from: cluster.node().into(),
            to: holder.into(),
            call: serde_json::to_value(&envelope).expect("a call encodes"),
        };
        let reply = match cluster.shared.notify(std::slice::from_ref(&notice)).await {
            Ok(()) => tokio::time::timeout(REPLY_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(e) => {
                tracing::warn!(%guid, error = %e, "could not forward a call");
                None
            }
        };
        cluster
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        match reply? {
            None => Some(Ok(())),
            Some(error) => {
                let error: RemoteError = serde_json::from_value(error).ok()?;
                (!error.moved).then_some(Err(Error::Remote {
                    code: error.code,
                    message: error.message,
                }))
            }
        }
    }

    /// Hands a reply to the call waiting for it.
    pub(super) fn replied(&self, id: u64, error: Option<serde_json::Value>) {
        let waiting = cluster(&self.inner)
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(tx) = waiting {
            let _ = tx.send(error);
        }
    }

    /// Carries out a call another replica forwarded, and replies.
    pub(super) async fn serve_call(&self, id: u64, from: String, call: serde_json::Value) {
        let cluster = cluster(&self.inner);
        let error = match serde_json::from_value::<Envelope>(call) {
            Ok(envelope) => FORWARDED
                .scope(true, self.run_call(envelope))
                .await
                .err()
                .map(|e| encode_error(&e)),
            Err(e) => Some(encode_error(&Error::InvalidArgument(format!(
                "a forwarded call could not be read: {e}"
            )))),
        };
        let reply = Notice::Reply {
            id,
            to: from,
            error,
        };
        if let Err(e) = cluster.shared.notify(std::slice::from_ref(&reply)).await {
            tracing::warn!(error = %e, "could not reply to a forwarded call");
        }
    }

    async fn run_call(&self, envelope: Envelope) -> Result<(), Error> {
        let role = match envelope.role.as_str() {
            "reader" => Role::Reader,
            "user" => Role::User,
            _ => Role::Admin,
        };
        let caller = Caller {
            name: Arc::from(envelope.name.as_str()),
            tenant: Tenant::new(&envelope.tenant),
            role,
            max_live_downloads: None,
        };
        let guid = envelope.guid.as_str();
        let bad =
            |what: &str| Error::InvalidArgument(format!("a forwarded call has an unknown {what}"));
        match envelope.call {
            Call::Pause => self.pause(&caller, guid).await?,
            Call::Resume => self.resume(&caller, guid).await?,
            Call::Cancel => self.cancel(&caller, guid).await?,
            Call::SetCostPolicy { policy } => {
                let policy = CostPolicy::from_code(policy).ok_or_else(|| bad("cost policy"))?;
                self.set_cost_policy(&caller, guid, policy).await?
            }
            Call::SetPriority { priority } => {
                let priority = Priority::from_code(priority).ok_or_else(|| bad("priority"))?;
                self.set_priority(&caller, guid, priority).await?
            }
            Call::SetRequestHeader {
                name,
                value,
                sensitive,
            } => {
                self.set_request_header(&caller, guid, &name, &value, sensitive)
                    .await?
            }
            Call::RemoveRequestHeader { name } => {
                self.remove_request_header(&caller, guid, &name).await?
            }
            Call::SetRequestedUri {
                uri,
                headers,
                sensitive,
            } => {
                self.set_requested_uri(&caller, guid, &uri, &headers, &sensitive)
                    .await?
            }
            Call::SetRateLimit { bytes_per_second } => {
                self.set_rate_limit(&caller, guid, bytes_per_second).await?
            }
            Call::SetQueueOrder { order } => self.set_queue_order(&caller, guid, order).await?,
        };
        Ok(())
    }
}

/// The error a replica answers when it no longer holds the download it was asked about.
fn moved(guid: &str) -> Error {
    Error::Remote {
        code: MOVED,
        message: format!("download {guid} moved to another replica"),
    }
}

/// The code [`moved`] carries; never a gRPC code.
const MOVED: i32 = -1;

fn encode_error(error: &Error) -> serde_json::Value {
    let (moved, code) = match error {
        Error::Remote { code, .. } if *code == MOVED => (true, MOVED),
        _ => (false, crate::grpc::code_of(error) as i32),
    };
    serde_json::to_value(RemoteError {
        moved,
        code,
        message: error.to_string(),
    })
    .expect("an error encodes")
}
