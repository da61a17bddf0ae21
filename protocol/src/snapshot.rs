//! Paged snapshot queries: how a console catches up with management's view (upcoming bookings,
//! recent sessions, recent events) after it (re)connects, one reply page at a time so that
//! every reply stays under [`MAX_PAYLOAD_BYTES`].
//!
//! The query is a [`RequestAction::Snapshot`](crate::message::RequestAction::Snapshot); its
//! reply carries a [`SnapshotPage`] in [`Reply::snapshot`]. A page's `next` cursor is opaque:
//! the sender passes it back as `after` to get the following page, until `next` is absent.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, RequestId, SessionId, StoreId, TicketId};
use crate::message::{encode, EndReason, Event, Reply, MAX_PAYLOAD_BYTES};

/// The longest cursor a page may carry; room for it is kept in every page.
pub const MAX_CURSOR_LEN: usize = 64;

/// Which part of management's view a snapshot query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotPart {
    /// Bookings not cancelled, not used and not over, by start.
    Bookings,
    /// Running sessions and those that ended in the last 24 hours, by start.
    Sessions,
    /// The most recent events of the audit log, oldest first.
    Events,
}

impl SnapshotPart {
    pub const ALL: [SnapshotPart; 3] = [
        SnapshotPart::Bookings,
        SnapshotPart::Sessions,
        SnapshotPart::Events,
    ];

    /// The wire name, e.g. `bookings`.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotPart::Bookings => "bookings",
            SnapshotPart::Sessions => "sessions",
            SnapshotPart::Events => "events",
        }
    }
}

impl std::fmt::Display for SnapshotPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An upcoming booking: its ticket id and window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BookingSummary {
    pub ticket_id: TicketId,
    pub store: StoreId,
    pub device: DeviceId,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// A running or recently ended session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionSummary {
    pub session_id: SessionId,
    pub ticket_id: TicketId,
    pub store: StoreId,
    pub device: DeviceId,
    pub started_at: DateTime<Utc>,
    /// When it ends (or ended) by its booking, extensions included.
    pub lease_until: DateTime<Utc>,
    /// Absent while it runs.
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub end_reason: Option<EndReason>,
}

/// The items of one page, tagged with their part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "part", content = "items", rename_all = "snake_case")]
pub enum SnapshotItems {
    Bookings(Vec<BookingSummary>),
    Sessions(Vec<SessionSummary>),
    Events(Vec<Event>),
}

impl SnapshotItems {
    pub fn part(&self) -> SnapshotPart {
        match self {
            SnapshotItems::Bookings(_) => SnapshotPart::Bookings,
            SnapshotItems::Sessions(_) => SnapshotPart::Sessions,
            SnapshotItems::Events(_) => SnapshotPart::Events,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            SnapshotItems::Bookings(items) => items.len(),
            SnapshotItems::Sessions(items) => items.len(),
            SnapshotItems::Events(items) => items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One page of a snapshot, carried in [`Reply::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotPage {
    #[serde(flatten)]
    pub items: SnapshotItems,
    /// Pass it as `after` for the next page; absent on the last page.
    #[serde(default)]
    pub next: Option<String>,
}

/// A type that a snapshot page lists.
pub trait SnapshotItem: Serialize + Sized {
    fn into_items(items: Vec<Self>) -> SnapshotItems;
}

impl SnapshotItem for BookingSummary {
    fn into_items(items: Vec<Self>) -> SnapshotItems {
        SnapshotItems::Bookings(items)
    }
}

impl SnapshotItem for SessionSummary {
    fn into_items(items: Vec<Self>) -> SnapshotItems {
        SnapshotItems::Sessions(items)
    }
}

impl SnapshotItem for Event {
    fn into_items(items: Vec<Self>) -> SnapshotItems {
        SnapshotItems::Events(items)
    }
}

/// The reply to a snapshot query: the first of `rows` (each an item and the cursor that
/// continues after it, at most [`MAX_CURSOR_LEN`] bytes) that fit in one payload, in order.
/// `more` says the source has rows beyond `rows`; `next` is set when rows are left for later.
///
/// An item too large for any page on its own is left out (with the cursor moving past it),
/// so that paging always moves on.
pub fn page_reply<T: SnapshotItem>(
    request_id: RequestId,
    rows: Vec<(T, String)>,
    more: bool,
) -> Reply {
    let part = T::into_items(Vec::new()).part();
    let reply = |items: Vec<T>, next: Option<String>| Reply {
        request_id,
        ok: true,
        detail: format!("{part} snapshot"),
        ticket: None,
        snapshot: Some(SnapshotPage {
            items: T::into_items(items),
            next,
        }),
    };
    // The page without items, with room for the longest cursor; each item adds its own
    // encoding and a comma.
    let base = encode(&reply(Vec::new(), Some("x".repeat(MAX_CURSOR_LEN)))).len();
    let mut used = base;
    let mut taken = 0;
    for (item, _) in &rows {
        let size = encode(item).len() + usize::from(taken > 0);
        if used + size > MAX_PAYLOAD_BYTES {
            break;
        }
        used += size;
        taken += 1;
    }
    // Nothing fits: skip the one item that is too large on its own.
    let skip_one = taken == 0 && !rows.is_empty();
    let moved_past = taken.max(usize::from(skip_one));
    let left = rows.len() > moved_past;
    let last_cursor = moved_past
        .checked_sub(1)
        .and_then(|last| rows.get(last))
        .map(|(_, cursor)| cursor.clone());
    let next = if left || more { last_cursor } else { None };
    let items: Vec<T> = rows.into_iter().take(taken).map(|(item, _)| item).collect();
    reply(items, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{decode, EventKind, RejectReason};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn booking(n: i64) -> BookingSummary {
        BookingSummary {
            ticket_id: TicketId::random(),
            store: StoreId::parse("shibuya").unwrap(),
            device: DeviceId::parse("pc-01").unwrap(),
            not_before: at(n * 3600),
            not_after: at(n * 3600 + 1800),
        }
    }

    fn cursor(n: usize) -> String {
        format!("{:0>width$}", n, width = MAX_CURSOR_LEN)
    }

    /// Pages through `total` bookings the way management and a console do.
    fn pages(total: usize) -> Vec<Reply> {
        let all: Vec<(BookingSummary, String)> =
            (0..total).map(|n| (booking(n as i64), cursor(n))).collect();
        let mut replies = Vec::new();
        let mut start = 0;
        loop {
            let reply = page_reply(RequestId::random(), all[start..].to_vec(), false);
            let page = reply.snapshot.clone().unwrap();
            replies.push(reply);
            match page.next {
                Some(next) => start = next.parse::<usize>().unwrap() + 1,
                None => return replies,
            }
        }
    }

    #[test]
    fn pages_never_exceed_the_payload_limit_and_lose_nothing() {
        let replies = pages(1000);
        assert!(replies.len() > 5, "1000 bookings take several pages");
        let mut seen = 0;
        for reply in &replies {
            let bytes = encode(reply);
            assert!(bytes.len() <= MAX_PAYLOAD_BYTES, "{} bytes", bytes.len());
            let decoded: Reply = decode(&bytes).unwrap();
            assert_eq!(&decoded, reply);
            seen += reply.snapshot.as_ref().unwrap().items.len();
        }
        assert_eq!(seen, 1000);
        // Full pages are nearly full: nothing is wasted on over-cautious sizing.
        let first = encode(&replies[0]).len();
        assert!(first > MAX_PAYLOAD_BYTES - 300, "{first}");
    }

    #[test]
    fn a_page_with_everything_has_no_cursor_unless_the_source_has_more() {
        let rows = vec![(booking(1), cursor(0)), (booking(2), cursor(1))];
        let last = page_reply(RequestId::random(), rows.clone(), false);
        let page = last.snapshot.unwrap();
        assert_eq!((page.items.len(), page.next), (2, None));
        let more = page_reply(RequestId::random(), rows, true);
        assert_eq!(more.snapshot.unwrap().next, Some(cursor(1)));
        let empty = page_reply::<BookingSummary>(RequestId::random(), Vec::new(), false);
        let page = empty.snapshot.unwrap();
        assert_eq!(page.items, SnapshotItems::Bookings(Vec::new()));
        assert_eq!(page.next, None);
    }

    #[test]
    fn an_item_too_large_for_any_page_is_skipped_not_repeated() {
        let huge = Event {
            at: at(0),
            store: StoreId::parse("shibuya").unwrap(),
            device: None,
            kind: EventKind::ScanRejected {
                scan_id: None,
                reason: RejectReason::MalformedTicket,
                detail: "x".repeat(MAX_PAYLOAD_BYTES),
            },
        };
        let small = Event {
            kind: EventKind::ScanRejected {
                scan_id: None,
                reason: RejectReason::Expired,
                detail: String::new(),
            },
            ..huge.clone()
        };
        let rows = vec![(huge, cursor(0)), (small, cursor(1))];
        let reply = page_reply(RequestId::random(), rows, false);
        assert!(encode(&reply).len() <= MAX_PAYLOAD_BYTES);
        let page = reply.snapshot.unwrap();
        assert!(page.items.is_empty());
        assert_eq!(page.next, Some(cursor(0)));
    }

    #[test]
    fn a_page_reads_as_its_part_items_and_cursor() {
        let page = SnapshotPage {
            items: SnapshotItems::Events(Vec::new()),
            next: Some("42".into()),
        };
        let json = serde_json::to_value(&page).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"part": "events", "items": [], "next": "42"})
        );
        let back: SnapshotPage = serde_json::from_value(json).unwrap();
        assert_eq!(back, page);
    }
}
