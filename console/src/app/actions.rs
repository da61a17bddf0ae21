//! Operator actions: the keys that open a confirmation dialog, the dialog's keys, the request a
//! confirmation sends, and the replies that settle each request.
//!
//! A request is only ever shown as sent when it was handed to a live connection; one that gets
//! no reply is published again with the same id (see [`super::delivery`]), says so after
//! [`NO_ANSWER_AFTER`], and is given up with "no answer from management" after
//! [`GIVE_UP_AFTER`]. A late reply still settles it.

use std::collections::VecDeque;

use chrono::{DateTime, TimeDelta, Utc};
use crossterm::event::KeyCode;
use mujin_protocol::message::{Reply, Request, RequestAction};
use mujin_protocol::{DeviceId, RequestId, SessionId, StoreId, TicketId};

use super::delivery::{Delivery, Step, GIVE_UP_AFTER};
use super::model::push_bounded;
use super::query::SessionsRow;
use super::{App, Connection, Effect, View};

/// Minutes an extension proposes.
pub const DEFAULT_EXTEND_MINUTES: u32 = 15;
/// Minutes a walk-in ticket proposes.
pub const DEFAULT_WALK_IN_MINUTES: u32 = 60;
/// After this long without a reply a request says "no answer yet" (and keeps trying).
pub const NO_ANSWER_AFTER: TimeDelta = TimeDelta::seconds(5);
/// Requests remembered; the status line shows the newest.
pub const REQUEST_HISTORY: usize = 20;
/// Digits the minutes field takes: enough for days, never an overflow.
const MINUTES_DIGITS: usize = 5;
/// A ticket id is a hyphenated UUID.
const TICKET_ID_LEN: usize = 36;
/// What an action key says when the console has no operator key to sign requests with.
pub const READ_ONLY: &str = "no operator key: read-only";

/// What an operator asks management to do, before it becomes a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    ForceStop {
        store: StoreId,
        device: DeviceId,
        session_id: SessionId,
    },
    Extend {
        store: StoreId,
        device: DeviceId,
        session_id: SessionId,
        minutes: u32,
    },
    SetService {
        store: StoreId,
        device: DeviceId,
        in_service: bool,
    },
    WalkInTicket {
        store: StoreId,
        device: DeviceId,
        minutes: u32,
    },
    Cancel {
        ticket_id: TicketId,
    },
}

impl Action {
    /// The request's action as management reads it.
    pub fn request_action(&self) -> RequestAction {
        match self.clone() {
            Action::ForceStop { session_id, .. } => RequestAction::ForceStop { session_id },
            Action::Extend {
                session_id,
                minutes,
                ..
            } => RequestAction::Extend {
                session_id,
                minutes,
            },
            Action::SetService {
                store,
                device,
                in_service,
            } => RequestAction::SetService {
                store,
                device,
                in_service,
            },
            Action::WalkInTicket {
                store,
                device,
                minutes,
            } => RequestAction::IssueTicket {
                store,
                device,
                minutes,
            },
            Action::Cancel { ticket_id } => RequestAction::Cancel { ticket_id },
        }
    }

    /// A short description for the dialog and the status line.
    pub fn describe(&self) -> String {
        match self {
            Action::ForceStop { store, device, .. } => format!("force stop {store}/{device}"),
            Action::Extend {
                store,
                device,
                minutes,
                ..
            } => format!("extend {store}/{device} by {minutes} min"),
            Action::SetService {
                store,
                device,
                in_service: true,
            } => format!("put {store}/{device} back in service"),
            Action::SetService { store, device, .. } => {
                format!("take {store}/{device} out of service")
            }
            Action::WalkInTicket {
                store,
                device,
                minutes,
            } => format!("walk-in ticket for {store}/{device}, {minutes} min"),
            Action::Cancel { ticket_id } => format!("cancel booking {ticket_id}"),
        }
    }
}

/// What a minutes field is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MinutesFor {
    Extend {
        store: StoreId,
        device: DeviceId,
        session_id: SessionId,
    },
    WalkIn {
        store: StoreId,
        device: DeviceId,
    },
}

impl MinutesFor {
    fn action(&self, minutes: u32) -> Action {
        match self.clone() {
            MinutesFor::Extend {
                store,
                device,
                session_id,
            } => Action::Extend {
                store,
                device,
                session_id,
                minutes,
            },
            MinutesFor::WalkIn { store, device } => Action::WalkInTicket {
                store,
                device,
                minutes,
            },
        }
    }
}

/// The dialog over the view; while one is open it takes every key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialog {
    /// An action waiting for y/Enter (send) or n/Esc (cancel).
    Confirm(Action),
    /// An action that needs a number of minutes: digits edit it, y/Enter sends, n/Esc cancels.
    Minutes { purpose: MinutesFor, input: String },
    /// A booking to cancel: its ticket id is typed, Enter sends, Esc cancels.
    CancelTicket { input: String },
    /// The device's service state is not known: `o` takes it out, `i` puts it back.
    ChooseService { store: StoreId, device: DeviceId },
    /// A walk-in ticket, shown as a QR code until any key is pressed.
    Ticket { detail: String, ticket: String },
}

/// How a request ended, or that it has not yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handed to the connection; no reply yet.
    Pending,
    Done(String),
    Refused(String),
    /// Never left the console.
    NotSent(String),
    /// Sent again and again, never answered within [`GIVE_UP_AFTER`].
    NoAnswer,
}

/// One request of this console and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub request_id: RequestId,
    pub action: Action,
    pub delivery: Delivery,
    pub outcome: Outcome,
}

impl RequestRecord {
    /// The status line's text at `now`.
    pub fn status(&self, now: DateTime<Utc>) -> String {
        let what = self.action.describe();
        match &self.outcome {
            Outcome::Pending if self.waiting(now) >= NO_ANSWER_AFTER => format!(
                "{what}: no answer yet ({} s), sending again",
                self.waiting(now).num_seconds()
            ),
            Outcome::Pending => format!("{what}: sent, waiting for the reply…"),
            Outcome::Done(detail) => format!("{what}: done: {detail}"),
            Outcome::Refused(detail) => format!("{what}: refused: {detail}"),
            Outcome::NotSent(reason) => format!("{what}: not sent: {reason}"),
            Outcome::NoAnswer => format!(
                "{what}: no answer from management (gave up after {} s)",
                GIVE_UP_AFTER.num_seconds()
            ),
        }
    }

    /// How long since it was first sent.
    pub fn waiting(&self, now: DateTime<Utc>) -> TimeDelta {
        now - self.delivery.first_sent_at
    }

    fn request(&self) -> Request {
        Request::new(self.request_id, self.action.request_action())
    }
}

/// The keys that open a dialog: `x` force stop, `e` extend, `o` service, `w` walk-in ticket
/// (on the selected device), `c` cancel a booking. Returns whether the key was one of them.
pub fn on_action_key(app: &mut App, code: KeyCode) -> bool {
    if !matches!(code, KeyCode::Char('c' | 'x' | 'e' | 'o' | 'w')) {
        return false;
    }
    if app.read_only {
        // Management refuses unsigned requests: say so rather than send one.
        app.note = Some(READ_ONLY.to_owned());
        app.dialog = None;
        return true;
    }
    let dialog = match code {
        KeyCode::Char('c') => Some(cancel_dialog(app)),
        _ => device_dialog(app, code),
    };
    if dialog.is_some() {
        app.note = None;
    }
    app.dialog = dialog;
    true
}

/// `c`: the selected upcoming booking of the sessions view, else a ticket id to type.
fn cancel_dialog(app: &App) -> Dialog {
    let selected = match app.view {
        View::Sessions => app.selected_sessions_row(),
        _ => None,
    };
    match selected {
        Some(SessionsRow::Booking(booking)) => Dialog::Confirm(Action::Cancel {
            ticket_id: booking.ticket_id,
        }),
        _ => Dialog::CancelTicket {
            input: String::new(),
        },
    }
}

/// The dialog of a device action key, or `None` with a note saying why not.
fn device_dialog(app: &mut App, code: KeyCode) -> Option<Dialog> {
    let selected = match app.view {
        View::Store | View::Device => app.selected_device(),
        _ => None,
    };
    let Some((store, device, row)) = selected else {
        app.note = Some("select a device first (devices view)".to_owned());
        return None;
    };
    let (store, device) = (store.clone(), device.clone());
    let session_id = row.session().map(|(session_id, _)| session_id);
    let session_id = session_id.or(row.event_session);
    let out_of_service = row.service_known.then_some(row.out_of_service);
    match (code, session_id) {
        (KeyCode::Char('x'), Some(session_id)) => Some(Dialog::Confirm(Action::ForceStop {
            store,
            device,
            session_id,
        })),
        (KeyCode::Char('e'), Some(session_id)) => Some(Dialog::Minutes {
            purpose: MinutesFor::Extend {
                store,
                device,
                session_id,
            },
            input: DEFAULT_EXTEND_MINUTES.to_string(),
        }),
        (KeyCode::Char('x' | 'e'), None) => {
            app.note = Some(format!("no running session on {store}/{device}"));
            None
        }
        (KeyCode::Char('o'), _) => Some(match out_of_service {
            Some(out_of_service) => Dialog::Confirm(Action::SetService {
                store,
                device,
                in_service: out_of_service,
            }),
            None => Dialog::ChooseService { store, device },
        }),
        _ => Some(Dialog::Minutes {
            purpose: MinutesFor::WalkIn { store, device },
            input: DEFAULT_WALK_IN_MINUTES.to_string(),
        }),
    }
}

/// A key while a dialog is open.
pub fn on_dialog_key(app: &mut App, code: KeyCode) -> Option<Effect> {
    let dialog = app.dialog.take()?;
    let (next, confirmed) = dialog_step(dialog, code);
    app.dialog = next;
    confirmed.and_then(|action| confirm(app, action))
}

/// The dialog after `code`, and the action it confirmed, if any.
fn dialog_step(dialog: Dialog, code: KeyCode) -> (Option<Dialog>, Option<Action>) {
    let cancel = matches!(code, KeyCode::Esc | KeyCode::Char('n'));
    let accept = matches!(code, KeyCode::Enter | KeyCode::Char('y'));
    match dialog {
        Dialog::Ticket { .. } => (None, None),
        _ if cancel => (None, None),
        Dialog::Confirm(action) if accept => (None, Some(action)),
        Dialog::Minutes { purpose, input } if accept => match input.parse::<u32>() {
            Ok(minutes) if minutes > 0 => (None, Some(purpose.action(minutes))),
            // Nothing sensible to send: stay open for a correction.
            _ => (Some(Dialog::Minutes { purpose, input }), None),
        },
        Dialog::Minutes { purpose, mut input } => {
            edit(&mut input, code, MINUTES_DIGITS, |typed| {
                typed.is_ascii_digit()
            });
            (Some(Dialog::Minutes { purpose, input }), None)
        }
        Dialog::CancelTicket { input } if accept => match TicketId::parse(input.trim()) {
            Ok(ticket_id) => (None, Some(Action::Cancel { ticket_id })),
            Err(_) => (Some(Dialog::CancelTicket { input }), None),
        },
        Dialog::CancelTicket { mut input } => {
            // A ticket id is a UUID: hex digits and dashes (never y or n).
            edit(&mut input, code, TICKET_ID_LEN, |typed| {
                typed.is_ascii_hexdigit() || typed == '-'
            });
            (Some(Dialog::CancelTicket { input }), None)
        }
        Dialog::ChooseService { store, device } => match code {
            KeyCode::Char(choice @ ('o' | 'i')) => (
                None,
                Some(Action::SetService {
                    store,
                    device,
                    in_service: choice == 'i',
                }),
            ),
            _ => (Some(Dialog::ChooseService { store, device }), None),
        },
        other => (Some(other), None),
    }
}

/// Types into a field of at most `max_len` characters (`allowed` decides which) or deletes
/// with Backspace.
fn edit(input: &mut String, code: KeyCode, max_len: usize, allowed: impl Fn(char) -> bool) {
    match code {
        KeyCode::Backspace => {
            input.pop();
        }
        KeyCode::Char(typed) if allowed(typed) && input.len() < max_len => input.push(typed),
        _ => {}
    }
}

/// Turns a confirmed action into a request to send, or records why it was not sent.
fn confirm(app: &mut App, action: Action) -> Option<Effect> {
    if app.read_only {
        app.note = Some(READ_ONLY.to_owned());
        return None;
    }
    let request_id = RequestId::random();
    let connected = matches!(app.connection, Connection::Up { .. });
    let outcome = if connected {
        Outcome::Pending
    } else {
        // Queued for a connection that may never come back, it would look sent when it is not.
        Outcome::NotSent("disconnected".to_owned())
    };
    let request = Request::new(request_id, action.request_action());
    push_bounded(
        &mut app.requests,
        RequestRecord {
            request_id,
            action,
            delivery: Delivery::first(app.now),
            outcome,
        },
        REQUEST_HISTORY,
    );
    app.note = None;
    connected.then_some(Effect::Send(vec![request]))
}

/// A reply from management settles its pending (or given up) request; a walk-in ticket opens
/// its dialog, a cancelled booking leaves the list.
pub fn on_reply(app: &mut App, reply: Reply) {
    let Some(record) = app.requests.iter_mut().find(|record| {
        record.request_id == reply.request_id
            && matches!(record.outcome, Outcome::Pending | Outcome::NoAnswer)
    }) else {
        // Not ours, from an earlier run, or a repeated delivery of a settled one.
        return;
    };
    record.outcome = if reply.ok {
        Outcome::Done(reply.detail.clone())
    } else {
        Outcome::Refused(reply.detail.clone())
    };
    if let (true, Action::Cancel { ticket_id }) = (reply.ok, &record.action) {
        let ticket_id = *ticket_id;
        super::bookings::remove(app, ticket_id);
    }
    if let (true, Some(ticket)) = (reply.ok, reply.ticket) {
        app.dialog = Some(Dialog::Ticket {
            detail: reply.detail,
            ticket,
        });
    }
}

/// A request the connection refused the first time: it never left, say so. (A resend that
/// fails is simply tried again at the next one.)
pub fn on_not_sent(app: &mut App, request_id: RequestId, error: String) {
    if let Some(record) = find_pending(&mut app.requests, request_id) {
        if record.delivery.attempts == 1 {
            record.outcome = Outcome::NotSent(error);
        }
    }
}

/// The pending requests due to be sent again at `now`; those unanswered for too long are given
/// up.
pub fn due_requests(app: &mut App, now: DateTime<Utc>) -> Vec<Request> {
    let connected = matches!(app.connection, Connection::Up { .. });
    let mut due = Vec::new();
    for record in &mut app.requests {
        if record.outcome != Outcome::Pending {
            continue;
        }
        match record.delivery.step(now, connected) {
            Step::Wait => {}
            Step::Resend => {
                record.delivery.resent(now);
                due.push(record.request());
            }
            Step::GiveUp => record.outcome = Outcome::NoAnswer,
        }
    }
    due
}

fn find_pending(
    requests: &mut VecDeque<RequestRecord>,
    request_id: RequestId,
) -> Option<&mut RequestRecord> {
    requests
        .iter_mut()
        .find(|record| record.request_id == request_id && record.outcome == Outcome::Pending)
}
