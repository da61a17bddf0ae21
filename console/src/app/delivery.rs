//! Requests are published again, with the same request id, until management answers: a request
//! published while no management worker was subscribed is lost by the broker, and management
//! answers a repeated id with the reply it recorded (snapshot queries are simply answered
//! again). Every [`RESEND_EVERY`] while connected, until [`GIVE_UP_AFTER`].

use chrono::{DateTime, TimeDelta, Utc};

/// How often an unanswered request is published again.
pub const RESEND_EVERY: TimeDelta = TimeDelta::seconds(2);
/// After this long without a reply a request is given up: "no answer from management".
pub const GIVE_UP_AFTER: TimeDelta = TimeDelta::seconds(30);

/// When a request was first and last published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub first_sent_at: DateTime<Utc>,
    pub last_sent_at: DateTime<Utc>,
    /// Times published so far.
    pub attempts: u32,
}

/// What to do with an unanswered request at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Wait,
    Resend,
    GiveUp,
}

impl Delivery {
    /// A request published (or about to be) for the first time at `now`.
    pub fn first(now: DateTime<Utc>) -> Self {
        Self {
            first_sent_at: now,
            last_sent_at: now,
            attempts: 1,
        }
    }

    /// What to do at `now`. Nothing is resent while disconnected (it would only queue up in the
    /// client); the time to give up runs on regardless.
    pub fn step(&self, now: DateTime<Utc>, connected: bool) -> Step {
        if now - self.first_sent_at >= GIVE_UP_AFTER {
            Step::GiveUp
        } else if connected && now - self.last_sent_at >= RESEND_EVERY {
            Step::Resend
        } else {
            Step::Wait
        }
    }

    /// Records a resend at `now`.
    pub fn resent(&mut self, now: DateTime<Utc>) {
        self.last_sent_at = now;
        self.attempts += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn resent_every_two_seconds_while_connected_then_given_up() {
        let mut delivery = Delivery::first(at(0));
        assert_eq!(delivery.step(at(1), true), Step::Wait);
        assert_eq!(delivery.step(at(2), true), Step::Resend);
        assert_eq!(delivery.step(at(2), false), Step::Wait);
        delivery.resent(at(2));
        assert_eq!(delivery.attempts, 2);
        assert_eq!(delivery.step(at(3), true), Step::Wait);
        assert_eq!(delivery.step(at(29), true), Step::Resend);
        assert_eq!(delivery.step(at(30), true), Step::GiveUp);
        assert_eq!(delivery.step(at(30), false), Step::GiveUp);
    }
}
