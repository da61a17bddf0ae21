//! Read-only questions the views and the key handler ask: which rows a view shows, in which
//! order, through which filter. Only the rows of one store are ever sorted.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use mujin_protocol::snapshot::BookingSummary;
use mujin_protocol::{DeviceId, StoreId};

use super::model::{DeviceRow, EventRecord, SessionRecord};
use super::{App, View};

/// A row of the sessions view: an upcoming booking or a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionsRow<'a> {
    Booking(&'a BookingSummary),
    Session(&'a SessionRecord),
}

/// The store view's sort column, cycled with `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortColumn {
    Device,
    /// Offline first, then running, idle, unknown.
    Status,
    /// Least time left first; devices without a session last.
    TimeLeft,
    /// Longest silent first.
    Seen,
    /// Largest clock skew first.
    Skew,
}

impl SortColumn {
    pub fn next(self) -> Self {
        match self {
            SortColumn::Device => SortColumn::Status,
            SortColumn::Status => SortColumn::TimeLeft,
            SortColumn::TimeLeft => SortColumn::Seen,
            SortColumn::Seen => SortColumn::Skew,
            SortColumn::Skew => SortColumn::Device,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SortColumn::Device => "device",
            SortColumn::Status => "status",
            SortColumn::TimeLeft => "time left",
            SortColumn::Seen => "seen",
            SortColumn::Skew => "skew",
        }
    }
}

/// A parsed filter line: `store:`, `device:` and `kind:` terms plus free words; every term
/// must match (case-insensitive substring).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub store: Option<String>,
    pub device: Option<String>,
    pub kind: Option<String>,
    pub words: Vec<String>,
}

impl Filter {
    pub fn parse(text: &str) -> Self {
        let mut filter = Filter::default();
        for term in text.to_lowercase().split_whitespace() {
            if let Some(store) = term.strip_prefix("store:") {
                filter.store = Some(store.to_owned());
            } else if let Some(device) = term.strip_prefix("device:") {
                filter.device = Some(device.to_owned());
            } else if let Some(kind) = term.strip_prefix("kind:") {
                filter.kind = Some(kind.to_owned());
            } else {
                filter.words.push(term.to_owned());
            }
        }
        filter
    }

    fn ids_match(&self, store: &StoreId, device: Option<&DeviceId>) -> bool {
        let store_ok = self
            .store
            .as_ref()
            .is_none_or(|wanted| store.as_str().contains(wanted.as_str()));
        let device_ok = self.device.as_ref().is_none_or(|wanted| {
            device.is_some_and(|device| device.as_str().contains(wanted.as_str()))
        });
        store_ok && device_ok
    }

    fn words_match(&self, text: &str) -> bool {
        self.words.iter().all(|word| text.contains(word.as_str()))
    }

    pub fn matches_event(&self, record: &EventRecord) -> bool {
        let event = &record.event;
        let kind_ok = self
            .kind
            .as_ref()
            .is_none_or(|wanted| super::ingest::kind_name(&event.kind).contains(wanted.as_str()));
        kind_ok
            && self.ids_match(&event.store, event.device.as_ref())
            && self.words_match(&record.search_text)
    }

    pub fn matches_session(&self, session: &SessionRecord) -> bool {
        let state = match &session.ended {
            Some(end) => format!("ended {}", end.reason.as_str()),
            None => "running".to_owned(),
        };
        let device = session.device.as_ref().map_or("", |device| device.as_str());
        let text = format!("{} {device} {} {state}", session.store, session.session_id);
        self.ids_match(&session.store, session.device.as_ref()) && self.words_match(&text)
    }

    pub fn matches_booking(&self, booking: &BookingSummary) -> bool {
        let text = format!(
            "{} {} {} booked",
            booking.store, booking.device, booking.ticket_id
        );
        self.ids_match(&booking.store, Some(&booking.device)) && self.words_match(&text)
    }

    fn matches_device(&self, device: &DeviceId, row: &DeviceRow) -> bool {
        let session = row
            .session()
            .map(|(session_id, _)| session_id.to_string())
            .unwrap_or_default();
        let text = format!("{device} {} {session}", row.status().as_str());
        self.device
            .as_ref()
            .is_none_or(|wanted| device.as_str().contains(wanted.as_str()))
            && self.words_match(&text)
    }
}

impl App {
    /// Every store seen so far, sorted.
    pub fn store_ids(&self) -> impl Iterator<Item = &StoreId> {
        self.stores.keys()
    }

    /// The filter typed for a view.
    pub fn filter_text(&self, view: View) -> &str {
        &self.filters[view.index()]
    }

    pub fn filter(&self, view: View) -> Filter {
        Filter::parse(self.filter_text(view))
    }

    /// The store the store view shows: the chosen one, else the first.
    pub fn current_store(&self) -> Option<&StoreId> {
        self.store
            .as_ref()
            .filter(|store| self.stores.contains_key(*store))
            .or_else(|| self.stores.keys().next())
    }

    /// The store view's rows: the current store's devices through its filter, in sort order.
    pub fn store_rows(&self) -> Vec<(&DeviceId, &DeviceRow)> {
        let Some(store) = self.current_store().and_then(|id| self.stores.get(id)) else {
            return Vec::new();
        };
        let filter = self.filter(View::Store);
        let mut rows: Vec<(&DeviceId, &DeviceRow)> = store
            .devices
            .iter()
            .filter(|(device, row)| filter.matches_device(device, row))
            .collect();
        if self.sort != SortColumn::Device {
            // Stable: ties stay in device order.
            rows.sort_by(|a, b| self.compare(a.1, b.1));
        }
        rows
    }

    fn compare(&self, a: &DeviceRow, b: &DeviceRow) -> Ordering {
        match self.sort {
            SortColumn::Device => Ordering::Equal,
            SortColumn::Status => a.status().cmp(&b.status()),
            SortColumn::TimeLeft => {
                let left = |row: &DeviceRow| row.session().map(|(_, until)| until);
                match (left(a), left(b)) {
                    (Some(a), Some(b)) => a.cmp(&b),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                }
            }
            // `None` (never seen) sorts first: the most silent of all.
            SortColumn::Seen => a.last_seen.cmp(&b.last_seen),
            SortColumn::Skew => {
                let skew = |row: &DeviceRow| row.skew().map(|skew| skew.abs());
                skew(b).cmp(&skew(a))
            }
        }
    }

    /// Position of the selected device among the store view's rows.
    pub fn selected_index(&self) -> Option<usize> {
        let selected = self.selected.as_ref()?;
        self.store_rows()
            .iter()
            .position(|(device, _)| *device == selected)
    }

    /// The device the detail view shows.
    pub fn selected_device(&self) -> Option<(&StoreId, &DeviceId, &DeviceRow)> {
        let store_id = self.current_store()?;
        let device = self.selected.as_ref()?;
        let row = self.stores.get(store_id)?.devices.get(device)?;
        Some((store_id, device, row))
    }

    /// The events the events view shows (through its filter and the pause), newest first.
    pub fn visible_events(&self) -> impl Iterator<Item = &EventRecord> {
        let filter = self.filter(View::Events);
        let paused_at = self.paused_at;
        self.events
            .iter()
            .rev()
            .filter(move |record| paused_at.is_none_or(|count| record.seq < count))
            .filter(move |record| filter.matches_event(record))
    }

    /// Events that arrived after the tail was paused.
    pub fn unseen_while_paused(&self) -> usize {
        self.paused_at.map_or(0, |count| {
            self.events
                .iter()
                .rev()
                .take_while(|r| r.seq >= count)
                .count()
        })
    }

    /// The rows of the sessions view: running sessions (newest first), then upcoming bookings
    /// (soonest first), then ended sessions (newest first), through its filter.
    pub fn visible_sessions(&self) -> impl Iterator<Item = SessionsRow<'_>> {
        let filter = self.filter(View::Sessions);
        let sessions = |running: bool| {
            self.sessions
                .iter()
                .rev()
                .filter(move |session| session.ended.is_none() == running)
                .map(SessionsRow::Session)
        };
        let bookings = self
            .bookings
            .values()
            .filter(|booking| booking.not_after > self.now)
            .map(SessionsRow::Booking);
        sessions(true)
            .chain(bookings)
            .chain(sessions(false))
            .filter(move |row| match row {
                SessionsRow::Booking(booking) => filter.matches_booking(booking),
                SessionsRow::Session(session) => filter.matches_session(session),
            })
    }

    /// The sessions view's selected row.
    pub fn selected_sessions_row(&self) -> Option<SessionsRow<'_>> {
        // The view shows the last row selected when the list shrank under the cursor.
        let last = self.visible_sessions().count().checked_sub(1)?;
        self.visible_sessions().nth(self.scroll.min(last))
    }

    /// The next upcoming booking of each device of `store` that has one.
    pub fn next_bookings(&self, store: &StoreId) -> HashMap<&DeviceId, &BookingSummary> {
        let mut next = HashMap::new();
        let upcoming = self
            .bookings
            .values()
            .filter(|booking| &booking.store == store && booking.not_after > self.now);
        for booking in upcoming {
            // In start order: the first one seen per device is its next.
            next.entry(&booking.device).or_insert(booking);
        }
        next
    }

    /// Number of devices across all stores.
    pub fn device_count(&self) -> usize {
        self.stores.values().map(|store| store.devices.len()).sum()
    }

    /// Open alerts per store, in one pass.
    pub fn alert_counts(&self) -> BTreeMap<&StoreId, usize> {
        let mut counts = BTreeMap::new();
        for ((store, _), _) in self.alerts.keys() {
            *counts.entry(store).or_default() += 1;
        }
        counts
    }
}
