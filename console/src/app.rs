//! The console's state (`App`) and the one function that changes it (`update`).
//!
//! Nothing here does IO or reads the clock: time arrives with `Event::Tick` and with each
//! message, so every transition is a plain unit test. The parts:
//! - [`model`]: what is remembered about stores, devices, sessions and events;
//! - `ingest`: how MQTT messages change it;
//! - [`alerts`]: the alerts derived from it;
//! - `keys`: how keys change the view;
//! - [`actions`]: the operator's actions, their dialogs, requests and replies;
//! - [`delivery`]: requests published again until answered, or given up;
//! - [`catch_up`]: the snapshot asked for on every (re)connection, and how it is merged;
//! - [`bookings`]: the upcoming bookings;
//! - [`query`]: which rows each view shows, filtered and sorted.
//!
//! What `update` cannot do itself (quit, publish requests) it returns as an [`Effect`] for
//! `run` to carry out.

pub mod actions;
pub mod alerts;
pub mod bookings;
pub mod catch_up;
pub mod delivery;
mod ingest;
mod keys;
pub mod model;
pub mod query;

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use mujin_protocol::message::Request;
use mujin_protocol::{DeviceId, StoreId};

pub use self::actions::{Action, Dialog, MinutesFor, Outcome, RequestRecord};
pub use self::alerts::{Alert, AlertKey, AlertKind};
pub use self::catch_up::{CatchUp, PartLoad, PartState};
pub use self::ingest::kind_name;
pub use self::model::{
    CommandRecord, DeviceKey, DeviceRow, DeviceStatus, EventRecord, ScanOutcome, ScanRecord,
    SessionRecord, Store, TelemetrySample,
};
pub use self::query::{Filter, SessionsRow, SortColumn};
use crate::event::{ConnectionChange, Event, Incoming, MqttMessage};

/// How many store events the tail keeps; older ones are dropped.
pub const EVENT_HISTORY: usize = 2000;
/// How many sessions the sessions view keeps.
pub const SESSION_HISTORY: usize = 1000;

/// What the caller should do after an `update`; `None` means keep running (and redraw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The operator asked to leave.
    Quit,
    /// Publish these requests to management (on the operator's requests topic), in order.
    Send(Vec<Request>),
}

/// The state of the broker connection, as the operator must see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// No connection has been made yet.
    Connecting,
    Up {
        since: DateTime<Utc>,
    },
    /// Lost (or never made); the numbers on screen may be stale since `since`.
    Down {
        since: DateTime<Utc>,
        error: String,
    },
}

/// The screens, switched with the number keys (the device detail with Enter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Overview,
    Store,
    Device,
    Sessions,
    Events,
    Alerts,
}

impl View {
    pub const ALL: [View; 6] = [
        View::Overview,
        View::Store,
        View::Device,
        View::Sessions,
        View::Events,
        View::Alerts,
    ];

    pub fn index(self) -> usize {
        match self {
            View::Overview => 0,
            View::Store => 1,
            View::Device => 2,
            View::Sessions => 3,
            View::Events => 4,
            View::Alerts => 5,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "stores",
            View::Store => "devices",
            View::Device => "device",
            View::Sessions => "sessions",
            View::Events => "events",
            View::Alerts => "alerts",
        }
    }

    /// Whether `/` filters this view.
    pub fn has_filter(self) -> bool {
        matches!(self, View::Store | View::Sessions | View::Events)
    }
}

/// Which pane of a two-pane view has the keys (Tab switches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Main,
    Side,
}

/// The whole console state.
#[derive(Debug, Clone)]
pub struct App {
    /// The current time, advanced by `Event::Tick`.
    pub now: DateTime<Utc>,
    /// When the console started: the counters of the overview count from here.
    pub started_at: DateTime<Utc>,
    /// The operator's time zone, for showing times.
    pub utc_offset: FixedOffset,
    /// `host:port` of the broker, shown in the header.
    pub broker: String,
    pub connection: Connection,
    pub stores: BTreeMap<StoreId, Store>,
    /// Store events in arrival order, oldest first.
    pub events: VecDeque<EventRecord>,
    pub next_event_seq: u64,
    /// Sessions seen in the events and the snapshots, by start, oldest first.
    pub sessions: VecDeque<SessionRecord>,
    /// Upcoming bookings, by start.
    pub bookings: bookings::Bookings,
    /// The catch-up of the current connection (`None` before the first one).
    pub catch_up: Option<CatchUp>,
    pub alerts: BTreeMap<AlertKey, Alert>,
    pub view: View,
    pub pane: Pane,
    /// The store the store view shows (`None`: the first one).
    pub store: Option<StoreId>,
    /// The overview's selected row.
    pub selected_store: Option<StoreId>,
    /// The store view's selected device (within `store`).
    pub selected: Option<DeviceId>,
    pub sort: SortColumn,
    /// The filter text of each view, by `View::index`.
    pub filters: [String; 6],
    /// The filter line is open and takes the keys.
    pub editing_filter: bool,
    /// The event tail is paused: it shows only events numbered below this.
    pub paused_at: Option<u64>,
    /// Lines scrolled back in list views and side panes; in the sessions view, the selected row.
    pub scroll: usize,
    pub show_help: bool,
    /// Messages that could not be decoded and were ignored.
    pub malformed: u64,
    /// The open dialog; it takes every key.
    pub dialog: Option<Dialog>,
    /// This console's requests, oldest first; the status line shows the newest.
    pub requests: VecDeque<RequestRecord>,
    /// A one-off hint for the status line (e.g. why a key did nothing), cleared by the next action.
    pub note: Option<String>,
    /// No operator key to sign requests with: everything is shown, nothing is asked of
    /// management (actions say [`actions::READ_ONLY`], no catch-up).
    pub read_only: bool,
}

impl App {
    pub fn new(broker: impl Into<String>, now: DateTime<Utc>, utc_offset: FixedOffset) -> Self {
        Self {
            now,
            started_at: now,
            utc_offset,
            broker: broker.into(),
            connection: Connection::Connecting,
            stores: BTreeMap::new(),
            events: VecDeque::new(),
            next_event_seq: 0,
            sessions: VecDeque::new(),
            bookings: bookings::Bookings::new(),
            catch_up: None,
            alerts: BTreeMap::new(),
            view: View::Overview,
            pane: Pane::Main,
            store: None,
            selected_store: None,
            selected: None,
            sort: SortColumn::Device,
            filters: Default::default(),
            editing_filter: false,
            paused_at: None,
            scroll: 0,
            show_help: false,
            malformed: 0,
            dialog: None,
            requests: VecDeque::new(),
            note: None,
            read_only: false,
        }
    }

    /// Time left of a lease at the current time (negative once overdue).
    pub fn time_left(&self, lease_until: DateTime<Utc>) -> TimeDelta {
        lease_until - self.now
    }

    /// Whether what is on screen may be stale.
    pub fn is_stale(&self) -> bool {
        !matches!(self.connection, Connection::Up { .. })
    }

    /// One device's row, if known.
    pub fn device(&self, store: &StoreId, device: &DeviceId) -> Option<&DeviceRow> {
        self.stores.get(store)?.devices.get(device)
    }

    fn device_mut(&mut self, store: &StoreId, device: &DeviceId) -> &mut DeviceRow {
        self.stores
            .entry(store.clone())
            .or_default()
            .devices
            .entry(device.clone())
            .or_default()
    }
}

/// Applies one event to the state and says what else to do, if anything.
pub fn update(app: &mut App, event: Event) -> Option<Effect> {
    match event {
        Event::Key(key) => return keys::on_key(app, key),
        Event::Tick(now) => return on_tick(app, now),
        // The terminal redraws at the new size on the next frame; nothing to remember.
        Event::Resize(..) => {}
        Event::Mqtt(MqttMessage {
            incoming: Incoming::Reply(reply),
            ..
        }) => return on_reply(app, reply),
        Event::Mqtt(message) => ingest::on_message(app, message),
        Event::Connection(change) => return on_connection(app, change),
        // A snapshot query that could not be queued is simply sent again when due.
        Event::NotSent { request_id, error } => actions::on_not_sent(app, request_id, error),
    }
    None
}

/// Publishes `requests`, if there are any.
fn send(requests: Vec<Request>) -> Option<Effect> {
    (!requests.is_empty()).then_some(Effect::Send(requests))
}

/// The clock moved: timed alerts, ended bookings, and requests to send again or give up.
fn on_tick(app: &mut App, now: DateTime<Utc>) -> Option<Effect> {
    app.now = now;
    alerts::refresh_timed(app, now);
    bookings::prune(app, now);
    let mut due = actions::due_requests(app, now);
    due.extend(catch_up::due_requests(app, now));
    send(due)
}

/// A reply: a snapshot page of the catch-up (which may ask for the next page), or the answer to
/// an operator's request.
fn on_reply(app: &mut App, reply: mujin_protocol::message::Reply) -> Option<Effect> {
    match catch_up::on_reply(app, &reply) {
        Some(next) => send(next.into_iter().collect()),
        None => {
            actions::on_reply(app, reply);
            None
        }
    }
}

impl App {
    /// The newest request, if any.
    pub fn last_request(&self) -> Option<&RequestRecord> {
        self.requests.back()
    }
}

/// A new connection starts a catch-up with management.
fn on_connection(app: &mut App, change: ConnectionChange) -> Option<Effect> {
    let error = match change {
        ConnectionChange::Up => {
            app.connection = Connection::Up { since: app.now };
            return send(catch_up::start(app));
        }
        ConnectionChange::Down { error } => error,
    };
    // Keep the time of the first failure: that is when the numbers started to age.
    let since = match &app.connection {
        Connection::Down { since, .. } => *since,
        _ => app.now,
    };
    app.connection = Connection::Down { since, error };
    None
}

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_actions;
#[cfg(test)]
mod tests_catch_up;
#[cfg(test)]
mod tests_views;
