//! The upcoming bookings: filled by the snapshot's bookings part on every (re)connection and
//! kept current by what is seen live (a new reservation, a session that used one, a no-show, a
//! cancellation confirmed here, a window that ended). A booking cancelled elsewhere (the command
//! line) has no event: it leaves the list at the next catch-up.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use mujin_protocol::message::{Event, EventKind};
use mujin_protocol::snapshot::BookingSummary;
use mujin_protocol::TicketId;

use super::App;

/// Bookings by start, then ticket id: the order the sessions view lists them in.
pub type Bookings = BTreeMap<(DateTime<Utc>, TicketId), BookingSummary>;

/// Adds (or replaces) a booking.
pub fn insert(bookings: &mut Bookings, booking: BookingSummary) {
    remove_from(bookings, booking.ticket_id);
    bookings.insert((booking.not_before, booking.ticket_id), booking);
}

fn remove_from(bookings: &mut Bookings, ticket_id: TicketId) {
    // Rare (a start, a no-show, a cancellation), so a scan is fine even for thousands.
    bookings.retain(|(_, ticket), _| *ticket != ticket_id);
}

/// Every list being kept: the shown one and the one a catch-up is collecting.
fn lists(app: &mut App) -> impl Iterator<Item = &mut Bookings> {
    let staged = app
        .catch_up
        .as_mut()
        .and_then(|catch_up| catch_up.staged_bookings.as_mut());
    std::iter::once(&mut app.bookings).chain(staged)
}

/// The booking is no longer upcoming.
pub fn remove(app: &mut App, ticket_id: TicketId) {
    for bookings in lists(app) {
        remove_from(bookings, ticket_id);
    }
}

/// A store event that creates or uses up a booking.
pub fn on_event(app: &mut App, event: &Event) {
    match &event.kind {
        EventKind::ReservationCreated {
            ticket_id,
            not_before,
            not_after,
        } => {
            let Some(device) = event.device.clone() else {
                return;
            };
            let booking = BookingSummary {
                ticket_id: *ticket_id,
                store: event.store.clone(),
                device,
                not_before: *not_before,
                not_after: *not_after,
            };
            for bookings in lists(app) {
                insert(bookings, booking.clone());
            }
        }
        EventKind::SessionStarted { ticket_id, .. }
        | EventKind::ReservationNoShow { ticket_id, .. } => remove(app, *ticket_id),
        _ => {}
    }
}

/// Drops the bookings whose window ended at `now`.
pub fn prune(app: &mut App, now: DateTime<Utc>) {
    for bookings in lists(app) {
        bookings.retain(|_, booking| booking.not_after > now);
    }
}
