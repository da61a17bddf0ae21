//! Time to build one frame at 200×50 with 10,000 devices across 100 stores and a full event
//! history, for the overview, the store view (sorted) and the events view (filtered), next to
//! the floor of drawing an empty console. The target is < 5 ms per frame.
//!
//! `cargo bench -p mujin-console --bench frame` measures; `cargo test --benches` only runs each
//! case once.

// A benchmark's set-up panics on failure on purpose.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mujin_console::app::{update, App, SortColumn, View};
use mujin_console::event::{Event, Incoming, MqttMessage};
use mujin_console::ui;
use mujin_protocol::message::{
    self, Availability, EventKind, ProgramStatus, RejectReason, ReportedState, Telemetry,
};
use mujin_protocol::snapshot::BookingSummary;
use mujin_protocol::{DeviceId, SessionId, StoreId, TicketId};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

const STORES: usize = 100;
const DEVICES_PER_STORE: usize = 100;
const EVENTS: usize = 5_000;
const TARGET: Duration = Duration::from_millis(5);

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-06-01T10:00:00Z")
        .unwrap()
        .to_utc()
}

fn message(incoming: Incoming) -> Event {
    Event::Mqtt(MqttMessage {
        received_at: now(),
        incoming,
    })
}

fn store_id(n: usize) -> StoreId {
    StoreId::parse(&format!("store-{n:03}")).unwrap()
}

fn device_id(n: usize) -> DeviceId {
    DeviceId::parse(&format!("device-{n:03}")).unwrap()
}

/// 10,000 devices (a third running, some offline), telemetry for each, and a full event tail.
fn big_app() -> App {
    let mut app = App::new("127.0.0.1:1883", now(), FixedOffset::east_opt(0).unwrap());
    update(
        &mut app,
        Event::Connection(mujin_console::event::ConnectionChange::Up),
    );
    for s in 0..STORES {
        for d in 0..DEVICES_PER_STORE {
            let program = if d % 3 == 0 {
                ProgramStatus::Running {
                    session_id: SessionId::random(),
                    started_at: now() - TimeDelta::minutes(30),
                    lease_until: now() + TimeDelta::minutes((d % 60) as i64),
                    provisional: false,
                }
            } else {
                ProgramStatus::Idle
            };
            let availability = if d % 17 == 0 {
                Availability::Offline
            } else {
                Availability::Online
            };
            let (store, device) = (store_id(s), device_id(d));
            let state = ReportedState {
                signature: None,
                availability,
                program: program.clone(),
                last_exit: None,
                at: Some(now()),
            };
            update(
                &mut app,
                message(Incoming::State {
                    store: store.clone(),
                    device: device.clone(),
                    state,
                    retained: false,
                }),
            );
            let telemetry = Telemetry {
                interval_ms: None,
                signature: None,
                at: now() + TimeDelta::milliseconds((d as i64 % 7) * 500),
                uptime_ms: 1,
                load: Some(0.5),
                program,
            };
            update(
                &mut app,
                message(Incoming::Telemetry {
                    store,
                    device,
                    telemetry,
                }),
            );
        }
    }
    add_events(&mut app);
    add_bookings(&mut app);
    app
}

/// Two upcoming bookings per device: 20,000 in the sessions view and the NEXT column.
fn add_bookings(app: &mut App) {
    for s in 0..STORES {
        for d in 0..DEVICES_PER_STORE {
            for slot in 1..=2 {
                let not_before = now() + TimeDelta::minutes((60 * slot + d % 60) as i64);
                mujin_console::app::bookings::insert(
                    &mut app.bookings,
                    BookingSummary {
                        ticket_id: TicketId::random(),
                        store: store_id(s),
                        device: device_id(d),
                        not_before,
                        not_after: not_before + TimeDelta::minutes(30),
                    },
                );
            }
        }
    }
}

fn add_events(app: &mut App) {
    for n in 0..EVENTS {
        let kind = if n % 2 == 0 {
            EventKind::ScanRejected {
                scan_id: None,
                reason: RejectReason::TooEarly,
                detail: String::new(),
            }
        } else {
            EventKind::SessionStarted {
                session_id: SessionId::random(),
                ticket_id: TicketId::random(),
                lease_until: now() + TimeDelta::hours(1),
                offline: false,
            }
        };
        let event = message::Event {
            at: now(),
            store: store_id(n % STORES),
            device: Some(device_id(n % DEVICES_PER_STORE)),
            kind,
        };
        update(app, message(Incoming::StoreEvent(event)));
    }
}

fn in_view(base: &App, view: View) -> App {
    let mut app = base.clone();
    app.view = view;
    match view {
        View::Store => {
            app.store = Some(store_id(STORES / 2));
            app.sort = SortColumn::TimeLeft;
            update(
                &mut app,
                Event::Key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE)),
            );
        }
        View::Events => app.filters[View::Events.index()] = "kind:session store:store-05".into(),
        _ => {}
    }
    app
}

fn draw(terminal: &mut Terminal<TestBackend>, app: &App) {
    terminal
        .draw(|frame| ui::view(black_box(app), frame))
        .unwrap();
}

/// Mean time per frame over `frames` draws.
fn mean_frame(terminal: &mut Terminal<TestBackend>, app: &App, frames: u32) -> Duration {
    let started = Instant::now();
    for _ in 0..frames {
        draw(terminal, app);
    }
    started.elapsed() / frames
}

fn frames(c: &mut Criterion) {
    let base = big_app();
    let empty = App::new("127.0.0.1:1883", now(), FixedOffset::east_opt(0).unwrap());
    let cases = [
        ("empty console (floor)", empty),
        ("overview, 100 stores", in_view(&base, View::Overview)),
        ("store view, sorted", in_view(&base, View::Store)),
        ("events view, filtered", in_view(&base, View::Events)),
        ("sessions view, bookings", in_view(&base, View::Sessions)),
    ];
    let mut terminal = Terminal::new(TestBackend::new(200, 50)).unwrap();
    for (name, app) in &cases {
        c.bench_function(name, |b| b.iter(|| draw(&mut terminal, app)));
    }
    // Under `cargo bench` criterion gets `--bench`; under `cargo test --benches` keep it short.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let count = if measuring { 200 } else { 2 };
    println!("\nmean per frame at 200x50, 10,000 devices / 100 stores (target < 5 ms):");
    for (name, app) in &cases {
        let mean = mean_frame(&mut terminal, app, count);
        let verdict = if mean < TARGET { "ok" } else { "OVER TARGET" };
        println!(
            "  {name:<24} {:>8.3} ms  {verdict}",
            mean.as_secs_f64() * 1000.0
        );
    }
}

criterion_group!(benches, frames);
criterion_main!(benches);
