//! Publishes every store's trust list (retained on `mujin/v1/stores/{store}/trust`): the keys
//! tickets are signed with (never a revoked one), the ids of the revoked ones, the tickets still
//! inside their window that must be refused anyway (cancelled, or already used), and whether the
//! store allows offline starts. Devices use it to check a ticket by themselves when management
//! does not answer. Each list names its store and is signed with management's root key, so
//! devices given that key (`--root-key`) trust no other list.
//!
//! The lists are rebuilt from PostgreSQL every [`REFRESH`] and published when they changed, and
//! all again after every (re)connection (the broker keeps nothing across restarts).

use crate::db::CachedStatements;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use mujin_protocol::message::{self, RejectReason};
use mujin_protocol::signed::sign_trust_list;
use mujin_protocol::ticket::{Keyring, SigningKey};
use mujin_protocol::topic::Topic;
use mujin_protocol::trust::{RefusedTicket, TrustList, TrustedKey, MAX_REFUSED_TICKETS};
use mujin_protocol::{StoreId, TicketId};
use rumqttc::AsyncClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::db::WorkError;
use crate::mqtt::{publish_all, Outbound};
use crate::ticket_keys::LiveKeys;

/// How often the lists are rebuilt: a cancelled or used ticket reaches the devices' lists
/// within this time.
pub const REFRESH: Duration = Duration::from_secs(2);

/// Tickets whose window is still open but which cannot start a session any more (store,
/// ticket, whether cancelled); the ones ending soonest first, since a truncated list keeps
/// those. Each part is read through its own index, not every booking ever made: the cancelled
/// bookings not over yet (`$1` is now), and the live bookings that may have been used — those
/// overlapping [now, `$2`], where `$2` is now plus the early grace, since no ticket is used
/// before its booking's start minus that grace (offline, not before its start) — each looked
/// up among the sessions by its ticket. (`OFFSET 0` keeps that lookup one per booking: without
/// it, PostgreSQL may turn the `EXISTS` into a join that reads every session ever recorded,
/// as the generic plan, which cannot tell how few bookings the window holds, did.)
pub const REFUSED_TICKETS: &str = "SELECT store_id, ticket_id, cancelled FROM (
         SELECT r.store_id, r.ticket_id, true AS cancelled, upper(r.period) AS ends
         FROM reservations r
         WHERE r.cancelled_at IS NOT NULL AND upper(r.period) > $1
         UNION ALL
         SELECT r.store_id, r.ticket_id, false, upper(r.period)
         FROM reservations r
         WHERE r.cancelled_at IS NULL AND r.period && tstzrange($1, $2, '[]')
           AND EXISTS (SELECT 1 FROM sessions s WHERE s.ticket_id = r.ticket_id OFFSET 0)
     ) refused
     ORDER BY ends, ticket_id";

/// Builds every store's trust list from the database, with the keys of `keyring`; tickets are
/// accepted from `early_grace` before their booking's start.
pub async fn build_lists(
    pool: &Pool,
    keyring: &Keyring,
    early_grace: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<(StoreId, TrustList)>, WorkError> {
    let client = pool.get().await?;
    let stores = client
        .cached_query(
            "SELECT store_id, offline_start FROM stores ORDER BY store_id",
            &[],
        )
        .await?;
    let usable_until = now + chrono::Duration::from_std(early_grace).unwrap_or_default();
    let refused = client
        .cached_query(REFUSED_TICKETS, &[&now, &usable_until])
        .await?;
    let mut by_store: HashMap<String, Vec<RefusedTicket>> = HashMap::new();
    for row in &refused {
        let reason = if row.get::<_, bool>(2) {
            RejectReason::Cancelled
        } else {
            RejectReason::AlreadyUsed
        };
        by_store.entry(row.get(0)).or_default().push(RefusedTicket {
            ticket_id: TicketId::from_uuid(row.get(1)),
            reason,
        });
    }
    let keys: Vec<TrustedKey> = keyring.keys().iter().map(TrustedKey::from).collect();
    let revoked_keys = keyring.revoked().to_vec();
    let mut lists = Vec::with_capacity(stores.len());
    for row in &stores {
        let Ok(store) = StoreId::parse(row.get(0)) else {
            continue;
        };
        let mut refused_tickets = by_store.remove(store.as_str()).unwrap_or_default();
        let truncated = refused_tickets.len() > MAX_REFUSED_TICKETS;
        refused_tickets.truncate(MAX_REFUSED_TICKETS);
        let listed = Some(store.clone());
        lists.push((
            store,
            TrustList {
                issued_at: now,
                store: listed,
                offline_start: row.get(1),
                keys: keys.clone(),
                revoked_keys: revoked_keys.clone(),
                refused_tickets,
                truncated,
                signature: None,
            },
        ));
    }
    Ok(lists)
}

/// The part of a list that matters for deciding whether to publish it again.
fn content(list: &TrustList) -> TrustList {
    TrustList {
        issued_at: DateTime::<Utc>::UNIX_EPOCH,
        signature: None,
        ..list.clone()
    }
}

/// Publishes the trust lists while connected, until `stop` is cancelled, with the ticket keys
/// of `keys` as they are at each refresh, signed with `root_key` (tickets are accepted from
/// `early_grace` before their booking's start).
pub async fn run(
    pool: Pool,
    client: AsyncClient,
    keys: LiveKeys,
    root_key: Arc<SigningKey>,
    early_grace: Duration,
    mut connected: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut published: HashMap<StoreId, TrustList> = HashMap::new();
    loop {
        if *connected.borrow_and_update() {
            match build_lists(&pool, &keys.current().keyring, early_grace, Utc::now()).await {
                Ok(lists) => {
                    let messages = changed(&mut published, lists, &root_key);
                    publish_all(&client, messages, &stop).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot build the stores' trust lists; retrying")
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            changed = connected.changed() => {
                if changed.is_err() {
                    break;
                }
                // After every (re)connection every list goes out again.
                published.clear();
            }
            () = tokio::time::sleep(REFRESH) => {}
        }
    }
}

/// The lists that differ from what was last published, signed, as messages; remembers them.
fn changed(
    published: &mut HashMap<StoreId, TrustList>,
    lists: Vec<(StoreId, TrustList)>,
    root_key: &SigningKey,
) -> Vec<Outbound> {
    let mut messages = Vec::new();
    for (store, mut list) in lists {
        sign_trust_list(root_key, &mut list);
        let content = content(&list);
        if published.get(&store) == Some(&content) {
            continue;
        }
        let payload = message::encode(&list);
        if payload.len() > message::MAX_PAYLOAD_BYTES {
            tracing::error!(%store, bytes = payload.len(), "trust list too large to publish");
            continue;
        }
        tracing::debug!(%store, refused = list.refused_tickets.len(), offline_start = list.offline_start, "publishing trust list");
        messages.push(Outbound::new(
            &Topic::Trust {
                store: store.clone(),
            },
            payload,
        ));
        published.insert(store, content);
    }
    messages
}

#[cfg(test)]
mod tests {
    use mujin_protocol::ticket::SigningKey;
    use mujin_protocol::KeyId;

    use super::*;

    fn list(offline_start: bool, refused: usize) -> TrustList {
        let key = SigningKey::from_seed(KeyId::parse("k1").unwrap(), &[3; 32]).unwrap();
        TrustList {
            issued_at: Utc::now(),
            store: Some(StoreId::parse("shibuya").unwrap()),
            offline_start,
            keys: vec![TrustedKey::from(&key.public_key())],
            revoked_keys: Vec::new(),
            refused_tickets: (0..refused)
                .map(|_| RefusedTicket {
                    ticket_id: TicketId::random(),
                    reason: RejectReason::AlreadyUsed,
                })
                .collect(),
            truncated: false,
            signature: None,
        }
    }

    fn root_key() -> SigningKey {
        SigningKey::from_seed(KeyId::parse("r1").unwrap(), &[5; 32]).unwrap()
    }

    #[test]
    fn only_changed_lists_are_published_again() {
        let store = StoreId::parse("shibuya").unwrap();
        let mut published = HashMap::new();
        let key = root_key();
        let first = list(false, 0);
        assert_eq!(
            changed(&mut published, vec![(store.clone(), first.clone())], &key).len(),
            1
        );
        let same_later = TrustList {
            issued_at: first.issued_at + chrono::Duration::seconds(2),
            ..first.clone()
        };
        assert!(changed(&mut published, vec![(store.clone(), same_later)], &key).is_empty());
        let switched_on = TrustList {
            offline_start: true,
            ..first
        };
        let messages = changed(&mut published, vec![(store.clone(), switched_on)], &key);
        assert_eq!(messages.len(), 1);
        assert!(messages[0].retain);
        let sent: TrustList = message::decode(&messages[0].payload).unwrap();
        let public = key.public_key();
        assert_eq!(
            mujin_protocol::signed::verify_trust_list(&public, &sent, &store),
            Ok(())
        );
        assert_eq!(messages[0].topic, "mujin/v1/stores/shibuya/trust");
    }

    #[test]
    fn a_full_list_fits_in_a_payload() {
        let mut full = list(true, MAX_REFUSED_TICKETS);
        // Some rotations and revocations later.
        for n in 2..6u8 {
            let key = SigningKey::from_seed(KeyId::parse(&format!("k{n}")).unwrap(), &[n; 32]);
            full.keys.push(TrustedKey::from(&key.unwrap().public_key()));
        }
        full.revoked_keys = (10..20)
            .map(|n| KeyId::parse(&format!("k{n}")).unwrap())
            .collect();
        sign_trust_list(&root_key(), &mut full);
        assert!(message::encode(&full).len() <= message::MAX_PAYLOAD_BYTES);
    }
}
