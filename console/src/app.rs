//! The console's state (`App`) and the one function that changes it (`update`).
//!
//! Nothing here does IO or reads the clock: time arrives with `Event::Tick` and with each
//! message, so every transition is a plain unit test. The parts:
//! - [`model`]: what is remembered about stores, devices, sessions and events;
//! - `ingest`: how MQTT messages change it;
//! - [`alerts`]: the alerts derived from it;
//! - `keys`: how keys change the view;
//! - [`actions`]: the operator's actions, their dialogs, requests and replies;
//! - [`query`]: which rows each view shows, filtered and sorted.
//!
//! What `update` cannot do itself (quit, publish a request) it returns as an [`Effect`] for
//! `run` to carry out.

pub mod actions;
pub mod alerts;
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
pub use self::ingest::kind_name;
pub use self::model::{
    CommandRecord, DeviceKey, DeviceRow, DeviceStatus, EventRecord, ScanOutcome, ScanRecord,
    SessionRecord, Store, TelemetrySample,
};
pub use self::query::{Filter, SortColumn};
use crate::event::{ConnectionChange, Event};

/// How many store events the tail keeps; older ones are dropped.
pub const EVENT_HISTORY: usize = 2000;
/// How many sessions the sessions view keeps.
pub const SESSION_HISTORY: usize = 1000;

/// What the caller should do after an `update`; `None` means keep running (and redraw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The operator asked to leave.
    Quit,
    /// Publish this request to management (on the operator's requests topic).
    Send(Request),
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
    /// Sessions seen in the events, oldest first.
    pub sessions: VecDeque<SessionRecord>,
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
    /// Lines scrolled back in list views and side panes.
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
        Event::Tick(now) => {
            app.now = now;
            alerts::refresh_timed(app, now);
        }
        // The terminal redraws at the new size on the next frame; nothing to remember.
        Event::Resize(..) => {}
        Event::Mqtt(message) => ingest::on_message(app, message),
        Event::Connection(change) => on_connection(app, change),
        Event::NotSent { request_id, error } => actions::on_not_sent(app, request_id, error),
    }
    None
}

impl App {
    /// The newest request, if any.
    pub fn last_request(&self) -> Option<&RequestRecord> {
        self.requests.back()
    }
}

fn on_connection(app: &mut App, change: ConnectionChange) {
    app.connection = match (change, &app.connection) {
        (ConnectionChange::Up, _) => Connection::Up { since: app.now },
        // Keep the time of the first failure: that is when the numbers started to age.
        (ConnectionChange::Down { error }, Connection::Down { since, .. }) => Connection::Down {
            since: *since,
            error,
        },
        (ConnectionChange::Down { error }, _) => Connection::Down {
            since: app.now,
            error,
        },
    };
}

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_actions;
#[cfg(test)]
mod tests_views;
