//! The console's state (`App`) and the one function that changes it (`update`).
//!
//! Nothing here does IO or reads the clock: time arrives with `Event::Tick` and with each
//! message, so every transition is a plain unit test.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use mujin_protocol::message::{
    self, Availability, EventKind, ProgramStatus, ReportedState, Telemetry,
};
use mujin_protocol::{DeviceId, SessionId, StoreId};

use crate::event::{ConnectionChange, Event, Incoming, MqttMessage};

/// How many store events the tail keeps; older ones are dropped.
pub const EVENT_HISTORY: usize = 500;

/// What the caller should do after an `update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep running (and redraw).
    Continue,
    /// The operator asked to leave.
    Quit,
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

/// A device's key within the console: (store, device).
pub type DeviceKey = (StoreId, DeviceId);

/// What the console knows about one device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceRow {
    /// `None` until the device's state (or an availability event) says it.
    pub availability: Option<Availability>,
    pub program: ProgramStatus,
    /// The operator's clock when the device itself was last heard from.
    pub last_seen: Option<DateTime<Utc>>,
}

/// The one-word status of a device row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Known only from events; its agent has not reported yet.
    Unknown,
    Idle,
    Running,
    Offline,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Unknown => "unknown",
            DeviceStatus::Idle => "idle",
            DeviceStatus::Running => "running",
            DeviceStatus::Offline => "offline",
        }
    }
}

impl DeviceRow {
    pub fn status(&self) -> DeviceStatus {
        match (self.availability, &self.program) {
            (Some(Availability::Offline), _) => DeviceStatus::Offline,
            (_, ProgramStatus::Running { .. }) => DeviceStatus::Running,
            (Some(Availability::Online), ProgramStatus::Idle) => DeviceStatus::Idle,
            (None, ProgramStatus::Idle) => DeviceStatus::Unknown,
        }
    }

    /// The running session and its lease end, if any.
    pub fn session(&self) -> Option<(SessionId, DateTime<Utc>)> {
        match &self.program {
            ProgramStatus::Running {
                session_id,
                lease_until,
                ..
            } => Some((*session_id, *lease_until)),
            ProgramStatus::Idle => None,
        }
    }
}

/// The whole console state.
#[derive(Debug, Clone)]
pub struct App {
    /// The current time, advanced by `Event::Tick`.
    pub now: DateTime<Utc>,
    /// The operator's time zone, for showing times.
    pub utc_offset: FixedOffset,
    /// `host:port` of the broker, shown in the header.
    pub broker: String,
    pub connection: Connection,
    pub devices: BTreeMap<DeviceKey, DeviceRow>,
    /// Store events in arrival order, oldest first.
    pub events: VecDeque<message::Event>,
    /// `None` shows every store.
    pub store_filter: Option<StoreId>,
    pub selected: Option<DeviceKey>,
    pub show_help: bool,
    /// Messages that could not be decoded and were ignored.
    pub malformed: u64,
}

impl App {
    pub fn new(broker: impl Into<String>, now: DateTime<Utc>, utc_offset: FixedOffset) -> Self {
        Self {
            now,
            utc_offset,
            broker: broker.into(),
            connection: Connection::Connecting,
            devices: BTreeMap::new(),
            events: VecDeque::new(),
            store_filter: None,
            selected: None,
            show_help: false,
            malformed: 0,
        }
    }

    /// Every store seen so far, sorted.
    pub fn stores(&self) -> Vec<&StoreId> {
        let from_devices = self.devices.keys().map(|(store, _)| store);
        let from_events = self.events.iter().map(|event| &event.store);
        let unique: BTreeSet<&StoreId> = from_devices.chain(from_events).collect();
        unique.into_iter().collect()
    }

    fn shows_store(&self, store: &StoreId) -> bool {
        self.store_filter.as_ref().is_none_or(|only| only == store)
    }

    /// The device rows the current store filter shows, sorted by store then device.
    pub fn visible_devices(&self) -> Vec<(&DeviceKey, &DeviceRow)> {
        self.devices
            .iter()
            .filter(|((store, _), _)| self.shows_store(store))
            .collect()
    }

    /// The store events the current store filter shows, oldest first.
    pub fn visible_events(&self) -> impl DoubleEndedIterator<Item = &message::Event> {
        self.events
            .iter()
            .filter(|event| self.shows_store(&event.store))
    }

    /// Position of the selected device among the visible rows.
    pub fn selected_index(&self) -> Option<usize> {
        let selected = self.selected.as_ref()?;
        self.visible_devices()
            .iter()
            .position(|(key, _)| *key == selected)
    }

    /// Time left of a lease at the current time (negative once overdue).
    pub fn time_left(&self, lease_until: DateTime<Utc>) -> TimeDelta {
        lease_until - self.now
    }

    fn device_mut(&mut self, store: &StoreId, device: &DeviceId) -> &mut DeviceRow {
        self.devices
            .entry((store.clone(), device.clone()))
            .or_default()
    }
}

/// Applies one event to the state and says whether to keep going.
pub fn update(app: &mut App, event: Event) -> Action {
    match event {
        Event::Key(key) => return on_key(app, key),
        Event::Tick(now) => app.now = now,
        // The terminal redraws at the new size on the next frame; nothing to remember.
        Event::Resize(..) => {}
        Event::Mqtt(message) => on_message(app, message),
        Event::Connection(change) => on_connection(app, change),
    }
    Action::Continue
}

fn on_key(app: &mut App, key: KeyEvent) -> Action {
    // Some terminals also report releases and repeats; act on presses only.
    if key.kind != KeyEventKind::Press {
        return Action::Continue;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
        KeyCode::Char('c') if ctrl => return Action::Quit,
        KeyCode::Down | KeyCode::Char('j') => move_selection(app, 1),
        KeyCode::Up | KeyCode::Char('k') => move_selection(app, -1),
        KeyCode::Tab => cycle_store(app, true),
        KeyCode::BackTab => cycle_store(app, false),
        KeyCode::Char('?') => app.show_help = !app.show_help,
        _ => {}
    }
    Action::Continue
}

fn move_selection(app: &mut App, step: isize) {
    let keys: Vec<DeviceKey> = app
        .visible_devices()
        .into_iter()
        .map(|(key, _)| key.clone())
        .collect();
    let Some(last) = keys.len().checked_sub(1) else {
        return;
    };
    let next = match app.selected_index() {
        None => 0,
        Some(index) => index.saturating_add_signed(step).min(last),
    };
    app.selected = keys.get(next).cloned();
}

/// Tab walks all stores → first store → … → last store → all stores again.
fn cycle_store(app: &mut App, forward: bool) {
    let stores: Vec<StoreId> = app.stores().into_iter().cloned().collect();
    let position = app
        .store_filter
        .as_ref()
        .and_then(|only| stores.iter().position(|store| store == only));
    let next = match (position, forward) {
        (None, true) => stores.first(),
        (None, false) => stores.last(),
        (Some(index), true) => stores.get(index + 1),
        (Some(index), false) => index.checked_sub(1).and_then(|prev| stores.get(prev)),
    };
    app.store_filter = next.cloned();
    if app.selected_index().is_none() {
        app.selected = None;
        move_selection(app, 0);
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

fn on_message(app: &mut App, message: MqttMessage) {
    let received_at = message.received_at;
    match message.incoming {
        Incoming::State {
            store,
            device,
            state,
            retained,
        } => on_state(app, &store, &device, state, retained, received_at),
        Incoming::Telemetry {
            store,
            device,
            telemetry,
        } => on_telemetry(app, &store, &device, telemetry, received_at),
        Incoming::StoreEvent(event) => on_store_event(app, event),
        Incoming::Malformed { .. } => app.malformed += 1,
    }
}

fn on_state(
    app: &mut App,
    store: &StoreId,
    device: &DeviceId,
    state: ReportedState,
    retained: bool,
    received_at: DateTime<Utc>,
) {
    let row = app.device_mut(store, device);
    row.availability = Some(state.availability);
    if state.availability == Availability::Offline {
        // The last will knows nothing about the program: keep the session we knew of (the
        // device's own lease still ends it) and do not count the broker's words as a sighting.
        return;
    }
    row.program = state.program;
    // A retained copy replayed on subscribe may be old: trust only the time it was written.
    row.last_seen = if retained {
        state.at.or(row.last_seen)
    } else {
        Some(received_at)
    };
}

fn on_telemetry(
    app: &mut App,
    store: &StoreId,
    device: &DeviceId,
    telemetry: Telemetry,
    received_at: DateTime<Utc>,
) {
    let row = app.device_mut(store, device);
    // Telemetry only flows from a connected agent.
    row.availability = Some(Availability::Online);
    row.program = telemetry.program;
    row.last_seen = Some(received_at);
}

fn on_store_event(app: &mut App, event: message::Event) {
    if let Some(device) = &event.device {
        let row = app.device_mut(&event.store, device);
        match &event.kind {
            EventKind::SessionStarted {
                session_id,
                lease_until,
                ..
            } => {
                row.program = ProgramStatus::Running {
                    session_id: *session_id,
                    started_at: event.at,
                    lease_until: *lease_until,
                };
            }
            EventKind::SessionEnded { session_id, .. } => {
                let ended_current = row
                    .session()
                    .is_some_and(|(current, _)| current == *session_id);
                if ended_current {
                    row.program = ProgramStatus::Idle;
                }
            }
            EventKind::DeviceAvailability { availability } => {
                row.availability = Some(*availability);
            }
            EventKind::ReservationCreated { .. }
            | EventKind::ScanAccepted { .. }
            | EventKind::ScanRejected { .. }
            | EventKind::CommandFailed { .. }
            | EventKind::CommandExpired { .. } => {}
        }
    }
    if app.events.len() >= EVENT_HISTORY {
        app.events.pop_front();
    }
    app.events.push_back(event);
}

#[cfg(test)]
pub(crate) mod tests;
