//! The PostgreSQL side of [`SharedStore`]: leases in three columns of `downloads`
//! (`lease_owner`, `lease_until`, `lease_epoch`), claims serialised by one transaction-scoped
//! advisory lock, and the feed as LISTEN/NOTIFY on one channel. Notices that go with a write
//! are sent in its transaction, so PostgreSQL delivers them in commit order, and only if it
//! committed.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::{COLUMNS_OF_D, PostgresStore, classify, record, save_in};
use crate::operation::Guid;
use crate::operation::{Behavior, Status, StatusReason};
use crate::store::shared::{
    Claim, ClaimFilter, Claimed, FencedWrite, Inserted, Lease, Notice, SharedStore, StatusChange,
};
use crate::store::{Record, StoreError, StoreFuture};

/// The NOTIFY channel every replica listens on.
pub(super) const CHANNEL: &str = "transferd";

/// The advisory lock that serialises claims from the queue, so two replicas never both see a
/// serialized group idle and each start one of its downloads. Claims are one per started
/// download, so one lock costs little. (The number is "transferd" in ASCII, truncated.)
const CLAIM_LOCK: i64 = 0x7472_616e_7366_6572;

/// Candidates read per free slot: serialized groups may skip some.
const CANDIDATES_PER_SLOT: usize = 4;

/// Statuses a replica may claim a download in to run it: queued, running under a lease that
/// expired, or paused by another replica's host conditions (each replica applies its own).
const RUNNABLE: [Status; 5] = [
    Status::Idle,
    Status::Running,
    Status::PausedCostedNetwork,
    Status::PausedNoNetwork,
    Status::PausedSystemPolicy,
];

/// Queue order in SQL: HIGH, then DEFAULT, then LOW (see `Priority::rank`), then position,
/// then creation.
const QUEUE_ORDER: &str =
    "CASE d.priority WHEN 1 THEN 0 WHEN 0 THEN 1 ELSE 2 END, d.queue_order, d.seq";

fn secs(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

fn encode(notice: &Notice) -> String {
    serde_json::to_string(notice).expect("a notice encodes")
}

impl SharedStore for PostgresStore {
    fn insert_new<'a>(
        &'a self,
        record: &'a Record,
        quota: Option<u64>,
    ) -> StoreFuture<'a, Inserted> {
        Box::pin(super::create::insert_new(self, record, quota))
    }

    fn claim_next<'a>(
        &'a self,
        node: &'a str,
        limit: usize,
        filter: &'a ClaimFilter,
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Claimed>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(classify)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK])
                .await
                .map_err(classify)?;
            let chosen = choose(&tx, limit, filter).await?;
            let mut claimed = Vec::with_capacity(chosen.len());
            let mut notices = Vec::with_capacity(chosen.len());
            for (record, took_over) in chosen {
                let epoch: i64 = tx
                    .query_one(
                        "UPDATE downloads
                            SET lease_owner = $2, lease_until = now() + make_interval(secs => $3),
                                lease_epoch = lease_epoch + 1, status = $4
                          WHERE guid = $1
                      RETURNING lease_epoch",
                        &[
                            &record.spec.guid,
                            &node,
                            &secs(ttl),
                            &i64::from(Status::Running.code()),
                        ],
                    )
                    .await
                    .map_err(classify)?
                    .get(0);
                notices.push(encode(&Notice::Saved {
                    guid: record.spec.guid.clone(),
                    node: node.into(),
                    changes: vec![StatusChange::new(
                        Status::Running,
                        StatusReason::Unspecified,
                    )],
                    bytes: record.checkpoint_bytes,
                    restarts: 0,
                    epoch,
                }));
                claimed.push(Claimed {
                    record,
                    lease: Lease { epoch },
                    took_over,
                });
            }
            send(&tx, &notices).await?;
            tx.commit().await.map_err(classify)?;
            Ok(claimed)
        })
    }

    fn claim<'a>(&'a self, node: &'a str, guid: &'a str, ttl: Duration) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(classify)?;
            let sql = format!(
                "SELECT {columns}, d.lease_owner, d.lease_until < now() AS expired
                   FROM downloads d WHERE d.guid = $1 FOR UPDATE",
                columns = *COLUMNS_OF_D,
            );
            let Some(r) = tx.query_opt(&sql, &[&guid]).await.map_err(classify)? else {
                return Ok(Claim::Missing);
            };
            let owner: Option<String> = r.get("lease_owner");
            let expired: Option<bool> = r.get("expired");
            if let Some(owner) = &owner {
                // Its own lease from an earlier life of this replica counts as expired.
                if owner != node && expired != Some(true) {
                    return Ok(Claim::HeldBy(owner.clone()));
                }
            }
            let record = record(&r)?;
            let epoch: i64 = tx
                .query_one(
                    "UPDATE downloads
                        SET lease_owner = $2, lease_until = now() + make_interval(secs => $3),
                            lease_epoch = lease_epoch + 1
                      WHERE guid = $1
                  RETURNING lease_epoch",
                    &[&guid, &node, &secs(ttl)],
                )
                .await
                .map_err(classify)?
                .get(0);
            tx.commit().await.map_err(classify)?;
            Ok(Claim::Claimed(Box::new(Claimed {
                record,
                lease: Lease { epoch },
                // Our own live lease is being given back by an earlier call of this process,
                // which writes nothing more: the file is handed over, not taken.
                took_over: owner.is_some_and(|o| o != node || expired == Some(true)),
            })))
        })
    }

    fn renew<'a>(
        &'a self,
        node: &'a str,
        leases: &'a [(Guid, Lease)],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Guid>> {
        Box::pin(async move {
            let client = self.client().await?;
            let guids: Vec<&str> = leases.iter().map(|(g, _)| g.as_str()).collect();
            let epochs: Vec<i64> = leases.iter().map(|(_, l)| l.epoch).collect();
            let rows = client
                .query(
                    "UPDATE downloads d
                        SET lease_until = now() + make_interval(secs => $4)
                       FROM unnest($1::text[], $2::int8[]) AS l(guid, epoch)
                      WHERE d.guid = l.guid AND d.lease_epoch = l.epoch AND d.lease_owner = $3
                  RETURNING d.guid",
                    &[&guids, &epochs, &node, &secs(ttl)],
                )
                .await
                .map_err(classify)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn save_fenced<'a>(&'a self, node: &'a str, write: &'a FencedWrite<'a>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(classify)?;
            let guid = &write.record.spec.guid;
            let held = tx
                .query_opt(
                    "SELECT 1 FROM downloads WHERE guid = $1 AND lease_owner = $2 AND lease_epoch = $3
                        FOR UPDATE",
                    &[guid, &node, &write.lease.epoch],
                )
                .await
                .map_err(classify)?;
            if held.is_none() {
                return Err(StoreError::Fenced(guid.clone()));
            }
            if !save_in(&tx, write.record).await? {
                return Err(StoreError::Fenced(guid.clone()));
            }
            let notice = Notice::Saved {
                guid: guid.clone(),
                node: node.into(),
                changes: write.changes.to_vec(),
                bytes: write.bytes,
                restarts: write.restarts,
                epoch: write.lease.epoch,
            };
            send(&tx, &[encode(&notice)]).await?;
            tx.commit().await.map_err(classify)
        })
    }

    fn release<'a>(&'a self, node: &'a str, guid: &'a str, lease: Lease) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(classify)?;
            let released = tx
                .execute(
                    "UPDATE downloads SET lease_owner = NULL, lease_until = NULL
                      WHERE guid = $1 AND lease_owner = $2 AND lease_epoch = $3",
                    &[&guid, &node, &lease.epoch],
                )
                .await
                .map_err(classify)?;
            if released == 0 {
                return Err(StoreError::Fenced(guid.to_string()));
            }
            let notice = Notice::Released {
                guid: guid.into(),
                node: node.into(),
            };
            send(&tx, &[encode(&notice)]).await?;
            tx.commit().await.map_err(classify)
        })
    }

    fn expire_leases_of<'a>(&'a self, node: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let client = self.client().await?;
            let expired = client
                .execute(
                    "UPDATE downloads SET lease_until = now() - interval '1 second'
                      WHERE lease_owner = $1",
                    &[&node],
                )
                .await
                .map_err(classify)?;
            Ok(expired)
        })
    }

    fn page<'a>(
        &'a self,
        tenant: Option<&'a str>,
        group: Option<&'a str>,
        after: u64,
        limit: usize,
    ) -> StoreFuture<'a, (Vec<Record>, u64)> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!(
                "SELECT {columns} FROM downloads d
                  WHERE d.seq > $1
                    AND ($2::text IS NULL OR d.tenant = $2)
                    AND ($3::text IS NULL OR d.transfer_group = $3)
                  ORDER BY d.seq LIMIT $4",
                columns = *COLUMNS_OF_D,
            );
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = client
                .query(&sql, &[&after, &tenant, &group, &limit])
                .await
                .map_err(classify)?;
            let records = rows.iter().map(record).collect::<Result<Vec<_>, _>>()?;
            let issued: i64 = client
                .query_one(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM download_seq",
                    &[],
                )
                .await
                .map_err(classify)?
                .get(0);
            Ok((records, u64::try_from(issued).unwrap_or(0)))
        })
    }

    fn next_seq(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let client = self.client().await?;
            let seq: i64 = client
                .query_one("SELECT nextval('download_seq')", &[])
                .await
                .map_err(classify)?
                .get(0);
            Ok(u64::try_from(seq).unwrap_or(0))
        })
    }

    fn get<'a>(&'a self, guids: &'a [Guid]) -> StoreFuture<'a, Vec<Record>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!(
                "SELECT {columns} FROM downloads d WHERE d.guid = ANY($1)",
                columns = *COLUMNS_OF_D,
            );
            let rows = client.query(&sql, &[&guids]).await.map_err(classify)?;
            rows.iter().map(record).collect()
        })
    }

    fn notify<'a>(&'a self, notices: &'a [Notice]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            let payloads: Vec<String> = notices.iter().map(encode).collect();
            send(&client, &payloads).await
        })
    }

    fn listen(&self) -> StoreFuture<'_, mpsc::UnboundedReceiver<Result<Notice, StoreError>>> {
        Box::pin(async move {
            let (client, mut connection) = self
                .config()
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(classify)?;
            let (tx, rx) = mpsc::unbounded_channel();
            let forward = tx.clone();
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            // Drives the connection (LISTEN below needs it driven) and forwards notices.
            tokio::spawn(async move {
                while let Some(message) = messages.next().await {
                    let sent = match message {
                        Ok(AsyncMessage::Notification(n)) => {
                            match serde_json::from_str(n.payload()) {
                                Ok(notice) => forward.send(Ok(notice)),
                                Err(e) => {
                                    tracing::warn!(error = %e, "ignored a notice this version cannot read");
                                    continue;
                                }
                            }
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            let _ = forward.send(Err(classify(e)));
                            return;
                        }
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                let _ = forward.send(Err(StoreError::Unavailable(
                    "the listening connection closed".into(),
                )));
            });
            client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(classify)?;
            // LISTEN belongs to this session: keep it open while anyone reads the feed.
            tokio::spawn(async move {
                tx.closed().await;
                drop(client);
            });
            Ok(rx)
        })
    }
}

/// The downloads to claim next, in queue order, locked for this transaction, at most `limit`,
/// and at most one of each serialized group, none of a group already running under a live
/// lease anywhere; with whether each one's previous lease had expired (`took_over`).
async fn choose(
    tx: &deadpool_postgres::Transaction<'_>,
    limit: usize,
    filter: &ClaimFilter,
) -> Result<Vec<(Record, bool)>, StoreError> {
    let runnable: Vec<i64> = RUNNABLE.iter().map(|s| i64::from(s.code())).collect();
    let policies: Vec<i64> = filter
        .cost_policies
        .iter()
        .map(|p| i64::from(p.code()))
        .collect();
    let candidates = i64::try_from(limit * CANDIDATES_PER_SLOT).unwrap_or(i64::MAX);
    let sql = format!(
        "SELECT {columns}, d.lease_owner IS NOT NULL AS took_over,
                COALESCE(g.behavior, 0) = {serialized} AS serialized
           FROM downloads d
           LEFT JOIN transfer_groups g
             ON g.tenant = d.tenant AND g.name = d.transfer_group
          WHERE d.finished_at IS NULL
            AND d.status = ANY($1)
            AND (d.lease_owner IS NULL OR d.lease_until < now())
            AND d.cost_policy = ANY($2)
          ORDER BY {QUEUE_ORDER}
          LIMIT $3
            FOR UPDATE OF d SKIP LOCKED",
        columns = *COLUMNS_OF_D,
        serialized = Behavior::Serialized.code(),
    );
    let rows = tx
        .query(&sql, &[&runnable, &policies, &candidates])
        .await
        .map_err(classify)?;
    // Serialized groups with a download running under a live lease anywhere.
    let busy: HashSet<(String, String)> = tx
        .query(
            "SELECT DISTINCT tenant, transfer_group FROM downloads
              WHERE lease_owner IS NOT NULL AND lease_until >= now()
                AND status = $1 AND transfer_group <> ''",
            &[&i64::from(Status::Running.code())],
        )
        .await
        .map_err(classify)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut taken_groups = HashSet::new();
    let mut chosen = Vec::new();
    for r in &rows {
        if chosen.len() == limit {
            break;
        }
        let record = record(r)?;
        let serialized: bool = r.get("serialized");
        let group = (
            record.spec.tenant.name().to_string(),
            record.spec.transfer_group.clone(),
        );
        if serialized && (busy.contains(&group) || !taken_groups.insert(group)) {
            continue;
        }
        chosen.push((record, r.get::<_, bool>("took_over")));
    }
    Ok(chosen)
}

/// Sends notices on [`CHANNEL`], in order, within whatever transaction `client` is in.
async fn send(
    client: &impl deadpool_postgres::GenericClient,
    payloads: &[String],
) -> Result<(), StoreError> {
    if payloads.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS n(p, i) ORDER BY i",
            &[&CHANNEL, &payloads],
        )
        .await
        .map_err(classify)?;
    Ok(())
}
