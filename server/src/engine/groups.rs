//! Transfer groups: how a group of a tenant runs its downloads (SetTransferGroupBehavior), and
//! MakeCurrentInGroup, which moves a download to the front of its group.

use super::commands::illegal;
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
        let op = self.op(caller, guid)?;
        let group = op.spec.transfer_group.clone();
        if group.is_empty() {
            return Err(Error::NoGroup { guid: guid.into() });
        }
        if self.inner.cluster.is_some() {
            // It rewrites the queue places of every member of the group, some of which other
            // replicas may hold; until that is one fenced write per member, it is refused.
            return Err(Error::NotWithReplicas {
                call: "MakeCurrentInGroup",
                instead: "raise the download with SetPriority instead",
            });
        }
        let moved = {
            let mut core = self.lock();
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
            for (member, slot) in members.iter().zip(slots) {
                let mut st = member.lock();
                st.queue_order = slot;
                core.queue.reposition(member.queue_key(&st));
            }
            members
        };
        for member in &moved {
            self.persist(member).await?;
        }
        self.schedule();
        Ok(self.view(&op))
    }
}
