//! Catching up with management on every (re)connection: the console asks for the three parts
//! of a snapshot (upcoming bookings, recent sessions, recent events), follows each part's `next`
//! cursor page by page, and merges what comes back with what it saw live. Each page query is
//! published again until answered, like any request (see [`super::delivery`]).

use chrono::{DateTime, Utc};
use mujin_protocol::message::{Event, Reply, Request, RequestAction};
use mujin_protocol::snapshot::{SessionSummary, SnapshotItems, SnapshotPage, SnapshotPart};
use mujin_protocol::RequestId;

use super::bookings::{self, Bookings};
use super::delivery::{Delivery, Step};
use super::model::{push_bounded, EventRecord, SessionEnd, SessionRecord};
use super::{App, Connection, EVENT_HISTORY, SESSION_HISTORY};

/// One (re)connection's catch-up.
#[derive(Debug, Clone, PartialEq)]
pub struct CatchUp {
    /// One per part, in [`SnapshotPart::ALL`] order.
    pub parts: Vec<PartLoad>,
    /// The bookings of the pages so far (and live changes since); they replace the shown list
    /// when the last page arrives, so that bookings gone meanwhile disappear.
    pub(super) staged_bookings: Option<Bookings>,
}

/// Where one part stands.
#[derive(Debug, Clone, PartialEq)]
pub struct PartLoad {
    pub part: SnapshotPart,
    /// Pages merged so far.
    pub pages: u32,
    pub state: PartState,
}

/// A part is loading a page, complete, or given up.
#[derive(Debug, Clone, PartialEq)]
pub enum PartState {
    Loading {
        request: Request,
        delivery: Delivery,
    },
    Done,
    /// The query of a page was never answered.
    NoAnswer,
    /// Management refused a page (its words).
    Refused(String),
}

impl CatchUp {
    /// Whether some part is still loading.
    pub fn is_loading(&self) -> bool {
        self.parts
            .iter()
            .any(|load| matches!(load.state, PartState::Loading { .. }))
    }

    /// Whether some part was given up or refused: the lists may be incomplete.
    pub fn is_incomplete(&self) -> bool {
        self.parts
            .iter()
            .any(|load| matches!(load.state, PartState::NoAnswer | PartState::Refused(_)))
    }
}

fn query(part: SnapshotPart, after: Option<String>) -> Request {
    Request::new(
        RequestId::random(),
        RequestAction::Snapshot {
            part,
            store: None,
            after,
        },
    )
}

/// Starts a catch-up at a new connection (replacing any unfinished one) and returns the first
/// page queries to send. A read-only console has no key to sign them with (management refuses
/// unsigned requests), so it shows what arrives live only.
pub fn start(app: &mut App) -> Vec<Request> {
    if app.read_only {
        app.catch_up = None;
        return Vec::new();
    }
    let now = app.now;
    let parts: Vec<PartLoad> = SnapshotPart::ALL
        .into_iter()
        .map(|part| PartLoad {
            part,
            pages: 0,
            state: PartState::Loading {
                request: query(part, None),
                delivery: Delivery::first(now),
            },
        })
        .collect();
    let requests = parts
        .iter()
        .filter_map(|load| match &load.state {
            PartState::Loading { request, .. } => Some(request.clone()),
            _ => None,
        })
        .collect();
    app.catch_up = Some(CatchUp {
        parts,
        staged_bookings: Some(Bookings::new()),
    });
    requests
}

/// Merges a reply if it answers a page query of the current catch-up; returns `None` when it
/// does not (it is then some other request's), else the query of the next page, if any.
pub fn on_reply(app: &mut App, reply: &Reply) -> Option<Option<Request>> {
    let catch_up = app.catch_up.as_mut()?;
    let load = catch_up.parts.iter_mut().find(|load| {
        matches!(&load.state, PartState::Loading { request, .. } if request.request_id == reply.request_id)
    })?;
    let part = load.part;
    let page = match (&reply.snapshot, reply.ok) {
        (Some(page), true) if page.items.part() == part => page.clone(),
        (_, true) => {
            load.state = PartState::Refused(format!("not a page of {part}"));
            return Some(None);
        }
        (_, false) => {
            load.state = PartState::Refused(reply.detail.clone());
            return Some(None);
        }
    };
    load.pages += 1;
    let next = page.next.clone();
    load.state = match &next {
        Some(after) => PartState::Loading {
            request: query(part, Some(after.clone())),
            delivery: Delivery::first(app.now),
        },
        None => PartState::Done,
    };
    let next_request = match &load.state {
        PartState::Loading { request, .. } => Some(request.clone()),
        _ => None,
    };
    merge(app, page);
    if next.is_none() && part == SnapshotPart::Bookings {
        if let Some(staged) = app
            .catch_up
            .as_mut()
            .and_then(|catch_up| catch_up.staged_bookings.take())
        {
            app.bookings = staged;
        }
    }
    Some(next_request)
}

fn merge(app: &mut App, page: SnapshotPage) {
    match page.items {
        SnapshotItems::Bookings(items) => {
            let now = app.now;
            if let Some(staged) = app
                .catch_up
                .as_mut()
                .and_then(|catch_up| catch_up.staged_bookings.as_mut())
            {
                for booking in items.into_iter().filter(|b| b.not_after > now) {
                    bookings::insert(staged, booking);
                }
            }
        }
        SnapshotItems::Sessions(items) => merge_sessions(app, items),
        SnapshotItems::Events(items) => backfill_events(app, items),
    }
}

/// Page queries due to be sent again; those unanswered for too long are given up.
pub fn due_requests(app: &mut App, now: DateTime<Utc>) -> Vec<Request> {
    let connected = matches!(app.connection, Connection::Up { .. });
    let Some(catch_up) = app.catch_up.as_mut() else {
        return Vec::new();
    };
    let mut due = Vec::new();
    for load in &mut catch_up.parts {
        let PartState::Loading { request, delivery } = &mut load.state else {
            continue;
        };
        match delivery.step(now, connected) {
            Step::Wait => {}
            Step::Resend => {
                delivery.resent(now);
                due.push(request.clone());
            }
            Step::GiveUp => load.state = PartState::NoAnswer,
        }
    }
    due
}

/// Sessions from the snapshot: new ones join the list (in start order), known ones take
/// management's end and lease.
fn merge_sessions(app: &mut App, items: Vec<SessionSummary>) {
    for summary in items {
        let ended = summary
            .ended_at
            .zip(summary.end_reason)
            .map(|(ended_at, reason)| SessionEnd {
                ended_at,
                reason,
                used_ms: u64::try_from((ended_at - summary.started_at).num_milliseconds())
                    .unwrap_or(0),
            });
        let known = app
            .sessions
            .iter_mut()
            .find(|session| session.session_id == summary.session_id);
        match known {
            Some(session) => {
                session.lease_until = Some(summary.lease_until);
                session.device = Some(summary.device);
                if session.ended.is_none() {
                    session.ended = ended;
                }
            }
            None => push_bounded(
                &mut app.sessions,
                SessionRecord {
                    session_id: summary.session_id,
                    store: summary.store,
                    device: Some(summary.device),
                    started_at: summary.started_at,
                    lease_until: Some(summary.lease_until),
                    ended,
                },
                SESSION_HISTORY,
            ),
        }
    }
    // The list is shown newest first; the snapshot's older sessions belong before the live ones.
    app.sessions
        .make_contiguous()
        .sort_by_key(|session| session.started_at);
}

/// Events from the snapshot that the tail does not have yet, each put in its place by time.
/// They only fill the tail: device rows and sessions come from newer sources.
fn backfill_events(app: &mut App, items: Vec<Event>) {
    for event in items {
        // An event may also have arrived live (or in an earlier catch-up): one copy only.
        if app.events.iter().any(|record| record.event == event) {
            continue;
        }
        let at = app
            .events
            .iter()
            .position(|record| record.event.at > event.at)
            .unwrap_or(app.events.len());
        let record = EventRecord {
            seq: app.next_event_seq,
            search_text: super::ingest::search_text(&event),
            event,
        };
        app.next_event_seq += 1;
        app.events.insert(at, record);
    }
    while app.events.len() > EVENT_HISTORY {
        app.events.pop_front();
    }
}
