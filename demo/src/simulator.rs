//! Simulated customers: each free device gets a short booking, and its customer scans the
//! ticket a moment later by writing it into the device's scan pipe (as a keyboard-wedge
//! scanner would). A recurring script of mistakes shows the refusals: a garbage code, a ticket
//! scanned too early, at the wrong device, and again after its session started.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use mujin_management::booking::{self, Booking, BookingError};
use mujin_management::db::DbPool;
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::{DeviceId, StoreId};
use nix::fcntl::OFlag;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the customers look around.
const TICK: Duration = Duration::from_millis(500);
/// How long a scan may wait for the device's reader before it is given up.
const PIPE_TIMEOUT: Duration = Duration::from_secs(3);
/// The mistakes repeat with this period, so a long console run keeps showing them.
const MISTAKE_CYCLE: Duration = Duration::from_secs(60);
/// A too-early customer books this far ahead.
const TOO_EARLY_BY: chrono::Duration = chrono::Duration::minutes(10);
/// A customer who came too early comes back this long before the booking starts (well inside
/// management's early grace, and longer than any walk-in booking, so walk-ins never overlap).
const COME_BACK_BEFORE: chrono::Duration = chrono::Duration::seconds(30);

/// The scripted mistakes, in the order they happen in each cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mistake {
    /// Something that is not a ticket at all: `malformed_ticket`.
    Garbage,
    /// A booking ten minutes from now, scanned now: `too_early`.
    TooEarly,
    /// One device's ticket scanned at another: `wrong_device`.
    WrongDevice,
    /// A ticket scanned again once its session runs: `already_used`.
    ScanAgain,
}

/// When each mistake happens, from the start of its cycle.
const MISTAKES: [(Duration, Mistake); 4] = [
    (Duration::from_secs(3), Mistake::Garbage),
    (Duration::from_secs(5), Mistake::TooEarly),
    (Duration::from_secs(7), Mistake::WrongDevice),
    (Duration::from_secs(9), Mistake::ScanAgain),
];

/// How long the `visit`-th booking lasts: 10 to 20 s, varied but reproducible.
fn booking_length(visit: u32) -> chrono::Duration {
    chrono::Duration::seconds(10 + i64::from(visit * 7 % 11))
}

/// How long the `visit`-th customer takes to scan after booking: 1 to 3 s.
fn scan_delay(visit: u32) -> Duration {
    Duration::from_secs(1 + u64::from(visit % 3))
}

/// What the simulator needs.
pub struct Simulator {
    pub pool: DbPool,
    pub key: SigningKey,
    pub store: StoreId,
    /// Each device with its scan pipe.
    pub devices: Vec<(DeviceId, PathBuf)>,
}

/// One device as the customers see it.
struct Counter {
    device: DeviceId,
    pipe: PathBuf,
    /// The booking in progress and when its customer scans it (`None` once scanned).
    current: Option<(Booking, Option<Instant>)>,
    /// A booking made too early, used when its time comes.
    upcoming: Option<Booking>,
}

struct State {
    sim: Simulator,
    counters: Vec<Counter>,
    visits: u32,
    cycle_start: Instant,
    next_mistake: usize,
    mistakes_done: u32,
}

/// Runs the customers until `stop` is cancelled.
pub async fn run(sim: Simulator, stop: CancellationToken) {
    let counters = sim
        .devices
        .iter()
        .map(|(device, pipe)| Counter {
            device: device.clone(),
            pipe: pipe.clone(),
            current: None,
            upcoming: None,
        })
        .collect();
    let mut state = State {
        sim,
        counters,
        visits: 0,
        cycle_start: Instant::now(),
        next_mistake: 0,
        mistakes_done: 0,
    };
    tracing::info!("customers arriving");
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        for index in 0..state.counters.len() {
            state.serve(index).await;
        }
        state.maybe_make_mistake().await;
    }
    tracing::info!("customers gone");
}

impl State {
    /// Books the device when it is free and scans its ticket when the customer is there.
    async fn serve(&mut self, index: usize) {
        let now = Utc::now();
        let counter = &mut self.counters[index];
        if let Some((booking, _)) = &counter.current {
            if booking.claims.not_after <= now {
                counter.current = None;
            }
        }
        if counter.current.is_none() {
            let visit = self.visits;
            let due_upcoming = counter
                .upcoming
                .as_ref()
                .is_some_and(|upcoming| upcoming.claims.not_before - now <= COME_BACK_BEFORE);
            let booking = if due_upcoming {
                tracing::info!(device = %counter.device, "the early customer is back");
                counter.upcoming.take()
            } else {
                let ends_at = now + booking_length(visit);
                book(&self.sim, &counter.device, now, ends_at).await
            };
            if let Some(booking) = booking {
                self.visits += 1;
                let counter = &mut self.counters[index];
                counter.current = Some((booking, Some(Instant::now() + scan_delay(visit))));
            }
        }
        let counter = &mut self.counters[index];
        if let Some((booking, scan_at)) = &mut counter.current {
            if scan_at.is_some_and(|at| at <= Instant::now()) {
                *scan_at = None;
                tracing::info!(device = %counter.device, ticket = %booking.claims.ticket_id, "customer scans their ticket");
                scan(&counter.pipe, &booking.ticket).await;
            }
        }
    }

    /// Makes the next scripted mistake once its time in the cycle has come.
    async fn maybe_make_mistake(&mut self) {
        if self.next_mistake == MISTAKES.len() {
            if self.cycle_start.elapsed() < MISTAKE_CYCLE {
                return;
            }
            self.cycle_start = Instant::now();
            self.next_mistake = 0;
        }
        let (at, mistake) = MISTAKES[self.next_mistake];
        if self.cycle_start.elapsed() < at {
            return;
        }
        // A mistake that needs something not there yet (a running session) is retried.
        if self.make_mistake(mistake).await {
            self.next_mistake += 1;
            self.mistakes_done += 1;
        }
    }

    /// Returns whether the mistake could be made now.
    async fn make_mistake(&mut self, mistake: Mistake) -> bool {
        let count = self.counters.len();
        // Rotate over the devices so every one of them shows each refusal over time.
        let start = self.mistakes_done as usize;
        let order: Vec<usize> = (0..count).map(|offset| (start + offset) % count).collect();
        match mistake {
            Mistake::Garbage => {
                let counter = &self.counters[order[0]];
                tracing::info!(device = %counter.device, "a customer scans a coffee-shop coupon");
                scan(&counter.pipe, "COFFEE-COUPON-10%-OFF").await;
                true
            }
            Mistake::TooEarly => self.too_early(&order).await,
            Mistake::WrongDevice => self.wrong_device(&order).await,
            Mistake::ScanAgain => self.scan_again(&order).await,
        }
    }

    async fn too_early(&mut self, order: &[usize]) -> bool {
        let Some(&index) = order
            .iter()
            .find(|&&index| self.counters[index].upcoming.is_none())
        else {
            return false;
        };
        let now = Utc::now();
        let starts_at = now + TOO_EARLY_BY;
        let device = self.counters[index].device.clone();
        let Some(booking) =
            book(&self.sim, &device, starts_at, starts_at + booking_length(0)).await
        else {
            return false;
        };
        tracing::info!(%device, "a customer scans a ticket booked for ten minutes from now");
        scan(&self.counters[index].pipe, &booking.ticket).await;
        self.counters[index].upcoming = Some(booking);
        true
    }

    async fn wrong_device(&mut self, order: &[usize]) -> bool {
        let Some(&from) = order
            .iter()
            .find(|&&index| self.counters[index].current.is_some())
        else {
            return false;
        };
        let to = (from + 1) % self.counters.len();
        let Some((booking, _)) = &self.counters[from].current else {
            return false;
        };
        tracing::info!(
            ticket_for = %self.counters[from].device,
            scanned_at = %self.counters[to].device,
            "a customer scans their ticket at the wrong device"
        );
        scan(&self.counters[to].pipe, &booking.ticket).await;
        true
    }

    async fn scan_again(&mut self, order: &[usize]) -> bool {
        for &index in order {
            let counter = &self.counters[index];
            let Some((booking, None)) = &counter.current else {
                continue;
            };
            if has_session(&self.sim.pool, booking).await {
                tracing::info!(device = %counter.device, "a customer scans their ticket again");
                scan(&counter.pipe, &booking.ticket).await;
                return true;
            }
        }
        false
    }
}

/// Books `device`; `None` (logged) when the booking is refused.
async fn book(
    sim: &Simulator,
    device: &DeviceId,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
) -> Option<Booking> {
    let result = booking::reserve(
        &sim.pool,
        &sim.key,
        &sim.store,
        device,
        starts_at,
        ends_at,
        Utc::now(),
    )
    .await;
    match result {
        Ok(booking) => {
            let seconds = (ends_at - starts_at).num_seconds();
            let from = starts_at.format("%H:%M:%S").to_string();
            tracing::info!(%device, from, seconds, ticket = %booking.claims.ticket_id, "customer booked");
            Some(booking)
        }
        Err(error @ BookingError::Overlap { .. }) => {
            tracing::debug!(%error, "booking refused; trying again later");
            None
        }
        Err(error) => {
            tracing::warn!(%error, %device, "booking failed");
            None
        }
    }
}

/// Whether management started a session with this booking's ticket.
async fn has_session(pool: &DbPool, booking: &Booking) -> bool {
    let query = async {
        let client = pool.get().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM sessions WHERE ticket_id = $1)",
                &[&booking.claims.ticket_id.as_uuid()],
            )
            .await?;
        anyhow::Ok(row.get::<_, bool>(0))
    };
    query.await.unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot look up a session");
        false
    })
}

/// Scans `text` at the device reading `pipe`, logging (not failing) when it cannot.
async fn scan(pipe: &Path, text: &str) {
    let path = pipe.to_owned();
    let line = format!("{text}\n");
    let written =
        tokio::task::spawn_blocking(move || write_line(&path, line.as_bytes(), PIPE_TIMEOUT)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, pipe = %pipe.display(), "scan lost"),
        Err(error) => tracing::warn!(%error, "scan task failed"),
    }
}

/// Writes one line into a named pipe. Opening without blocking fails while no reader has the
/// pipe open (the agent is starting, or between two readings), so it is retried until
/// `timeout`: the simulator never hangs on a dead agent.
fn write_line(path: &Path, line: &[u8], timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(path);
        match opened {
            // A line this short is written whole or not at all (it is below PIPE_BUF).
            Ok(mut pipe) => {
                return pipe
                    .write_all(line)
                    .context("cannot write to the scan pipe")
            }
            Err(error) if no_reader_yet(&error) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => return Err(error).context("no agent is reading the scan pipe"),
        }
    }
}

fn no_reader_yet(error: &io::Error) -> bool {
    error.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32)
        || error.kind() == io::ErrorKind::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn bookings_and_delays_vary_within_bounds() {
        let lengths: Vec<i64> = (0..30)
            .map(|visit| booking_length(visit).num_seconds())
            .collect();
        assert!(lengths.iter().all(|&seconds| (10..=20).contains(&seconds)));
        assert!(lengths.iter().any(|&seconds| seconds != lengths[0]));
        assert!((0..30).all(|visit| (1..=3).contains(&scan_delay(visit).as_secs())));
        // A booking never reaches into a too-early customer's booking before they come back.
        assert!(booking_length(10) <= COME_BACK_BEFORE);
        assert!((0..30).all(|visit| booking_length(visit) <= COME_BACK_BEFORE));
    }

    #[test]
    fn the_mistakes_come_in_order_within_one_cycle() {
        assert!(MISTAKES.windows(2).all(|pair| pair[0].0 < pair[1].0));
        assert!(MISTAKES[MISTAKES.len() - 1].0 < MISTAKE_CYCLE);
    }

    #[test]
    fn a_pipe_without_reader_times_out_and_a_reader_gets_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scan");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let started = std::time::Instant::now();
        assert!(write_line(&path, b"x\n", Duration::from_millis(200)).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));

        let reader_path = path.clone();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            std::fs::File::open(reader_path)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            text
        });
        write_line(&path, b"MJ1:ticket\n", Duration::from_secs(5)).unwrap();
        assert_eq!(reader.join().unwrap(), "MJ1:ticket\n");
    }
}
