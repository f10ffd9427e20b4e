//! Transfer groups: how a group of a tenant runs its downloads (SetTransferGroupBehavior), and
//! MakeCurrentInGroup, which moves a download to the front of its group.

use std::sync::Arc;

use super::cluster::{Call, Control};
use super::commands::illegal;
use super::download::Op;
use super::{DownloadView, Engine, validate};
use crate::auth::Caller;
use crate::error::Error;
use crate::operation::Behavior;
use crate::store::shared::Notice;

impl Engine {
    /// Sets how a transfer group of the caller's tenant runs its downloads.
    pub async fn set_group_behavior(
        &self,
        caller: &Caller,
        group: &str,
        behavior: Behavior,
    ) -> Result<Behavior, Error> {
        if group.is_empty() {
            return Err(Error::InvalidArgument(
                "transfer_group is empty; name the group whose behavior to set".into(),
            ));
        }
        validate::group(group)?;
        let tenant = &caller.tenant;
        self.inner.store.save_group(tenant, group, behavior).await?;
        self.announce(|node| Notice::Groups { node }).await;
        self.lock().slots.set_behavior(tenant, group, behavior);
        tracing::info!(
            tenant = tenant.name(),
            group,
            ?behavior,
            "transfer group behavior set"
        );
        self.schedule();
        Ok(behavior)
    }

    /// Moves a download, and the downloads of its group queued after it, to the front of its
    /// group (in its tenant). Other groups keep their places: the group's own queue slots are
    /// reassigned.
    pub async fn make_current_in_group(
        &self,
        caller: &Caller,
        guid: &str,
    ) -> Result<DownloadView, Error> {
        // With replicas, one created on another a moment ago is read from the store.
        let op = self.op_or_fetch(caller, guid).await?;
        let group = op.spec.transfer_group.clone();
        if group.is_empty() {
            return Err(Error::NoGroup { guid: guid.into() });
        }
        let moves = {
            let core = self.lock();
            let status = op.lock().status();
            if status.is_terminal() {
                return Err(illegal(guid, "reorder", status));
            }
            let mut members = core.registry.live_members(&op.spec.tenant, &group);
            members.sort_by_key(|o| (o.lock().queue_order, o.spec.seq));
            let slots: Vec<i64> = members.iter().map(|o| o.lock().queue_order).collect();
            let at = members
                .iter()
                .position(|o| o.spec.guid == op.spec.guid)
                .expect("a live download is a member of its own group");
            members.rotate_left(at);
            members.into_iter().zip(slots).collect::<Vec<_>>()
        };
        if self.inner.cluster.is_some() {
            return self.make_current_with_replicas(caller, &op, moves).await;
        }
        {
            let mut core = self.lock();
            for (member, slot) in &moves {
                let mut st = member.lock();
                st.queue_order = *slot;
                core.queue.reposition(member.queue_key(&st));
            }
        }
        for (member, _) in &moves {
            self.persist(member).await?;
        }
        self.schedule();
        Ok(self.view(&op))
    }

    /// MakeCurrentInGroup with replicas: each member whose slot changes is moved where it is
    /// held, one fenced write each (see `cluster/call.rs`), the chosen download first. A
    /// member that finished meanwhile keeps its slot, as it no longer queues.
    async fn make_current_with_replicas(
        &self,
        caller: &Caller,
        op: &Arc<Op>,
        moves: Vec<(Arc<Op>, i64)>,
    ) -> Result<DownloadView, Error> {
        for (member, slot) in moves {
            if member.lock().queue_order == slot {
                continue;
            }
            let guid = &member.spec.guid;
            match self.set_queue_order(caller, guid, slot).await {
                Ok(_) => {}
                Err(Error::IllegalTransition { .. }) if guid != &op.spec.guid => {}
                Err(e) => return Err(e),
            }
        }
        self.claim_soon();
        Ok(self.view(op))
    }

    /// Gives one download its new slot in its group's queue, on the replica that holds it.
    pub(in crate::engine) async fn set_queue_order(
        &self,
        caller: &Caller,
        guid: &str,
        order: i64,
    ) -> Result<DownloadView, Error> {
        let _held = match self
            .control(caller, guid, Call::SetQueueOrder { order })
            .await?
        {
            Control::Here(held) => held,
            Control::Done(view) => return Ok(*view),
        };
        self.edit(caller, guid, "reorder", |_, st| {
            st.queue_order = order;
            Ok(())
        })
        .await
    }
}
