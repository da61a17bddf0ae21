//! The scan rules: one pure function from a ticket reading and the facts management knows to a
//! decision with its reason. No IO here, so every rule is tested directly.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mujin_protocol::message::RejectReason;
use mujin_protocol::ticket::{TicketClaims, TicketError};
use mujin_protocol::{DeviceId, StoreId};

/// What the database says about the device that scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceFacts {
    pub in_service: bool,
    /// Another session is still open on this device.
    pub busy: bool,
}

/// What the database says about the ticket's reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationFacts {
    /// The booked window, start inclusive, end exclusive (authoritative over the ticket's copy).
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub cancelled: bool,
    /// A session was already started with this ticket.
    pub used: bool,
}

/// Everything the rules look at for one scan.
#[derive(Debug, Clone)]
pub struct ScanFacts<'a> {
    /// Where the scan came from (the topic it was published on).
    pub store: &'a StoreId,
    pub device: &'a DeviceId,
    /// `None` when the device is not registered.
    pub device_facts: Option<DeviceFacts>,
    /// The ticket after signature verification.
    pub ticket: &'a Result<TicketClaims, TicketError>,
    /// `None` when no reservation has the ticket's id.
    pub reservation: Option<ReservationFacts>,
    pub now: DateTime<Utc>,
    /// How long before its window a ticket is already accepted.
    pub early_grace: Duration,
}

/// A scan that may start a session until `lease_until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub lease_until: DateTime<Utc>,
}

/// A refused scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RejectReason,
    /// For logs and operators.
    pub detail: String,
}

fn refuse(reason: RejectReason, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

/// Decides one scan. Checks run from the most basic (is this a device and a ticket at all) to
/// the most situational (is the device free right now), so the reason is the most useful one.
pub fn authorize_scan(facts: &ScanFacts<'_>) -> Result<Approval, Refusal> {
    let device = facts.device_facts.ok_or_else(|| {
        refuse(
            RejectReason::UnknownDevice,
            format!("device {}/{} is not registered", facts.store, facts.device),
        )
    })?;
    let claims = facts.ticket.as_ref().map_err(ticket_refusal)?;
    if &claims.store != facts.store {
        return Err(refuse(
            RejectReason::WrongStore,
            format!("ticket is for store {}", claims.store),
        ));
    }
    if &claims.device != facts.device {
        return Err(refuse(
            RejectReason::WrongDevice,
            format!("ticket is for device {}", claims.device),
        ));
    }
    let reservation = facts.reservation.ok_or_else(|| {
        refuse(
            RejectReason::UnknownTicket,
            format!("no reservation for ticket {}", claims.ticket_id),
        )
    })?;
    if reservation.cancelled {
        return Err(refuse(
            RejectReason::Cancelled,
            "the reservation was cancelled",
        ));
    }
    if reservation.used {
        return Err(refuse(
            RejectReason::AlreadyUsed,
            "a session was already started with this ticket",
        ));
    }
    let early_grace = chrono::Duration::from_std(facts.early_grace).unwrap_or_default();
    if facts.now < reservation.starts_at - early_grace {
        return Err(refuse(
            RejectReason::TooEarly,
            format!(
                "the booking starts at {}",
                reservation.starts_at.to_rfc3339()
            ),
        ));
    }
    if facts.now >= reservation.ends_at {
        return Err(refuse(
            RejectReason::Expired,
            format!("the booking ended at {}", reservation.ends_at.to_rfc3339()),
        ));
    }
    if !device.in_service {
        return Err(refuse(
            RejectReason::OutOfService,
            "the device is out of service",
        ));
    }
    if device.busy {
        return Err(refuse(
            RejectReason::DeviceBusy,
            "another session is still running",
        ));
    }
    Ok(Approval {
        lease_until: reservation.ends_at,
    })
}

fn ticket_refusal(error: &TicketError) -> Refusal {
    let reason = match error {
        TicketError::UnknownKey(_) => RejectReason::UnknownKey,
        TicketError::BadSignature => RejectReason::BadSignature,
        TicketError::RevokedKey(_) => RejectReason::RevokedKey,
        _ => RejectReason::MalformedTicket,
    };
    refuse(reason, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mujin_protocol::{KeyId, TicketId};

    const GRACE: Duration = Duration::from_secs(60);

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).unwrap()
    }

    fn store() -> StoreId {
        StoreId::parse("shibuya").unwrap()
    }

    fn device() -> DeviceId {
        DeviceId::parse("pc-01").unwrap()
    }

    fn claims() -> TicketClaims {
        TicketClaims {
            ticket_id: TicketId::random(),
            store: store(),
            device: device(),
            not_before: at(0),
            not_after: at(30),
            key_id: KeyId::parse("k1").unwrap(),
        }
    }

    fn free_device() -> Option<DeviceFacts> {
        Some(DeviceFacts {
            in_service: true,
            busy: false,
        })
    }

    fn booked() -> Option<ReservationFacts> {
        Some(ReservationFacts {
            starts_at: at(0),
            ends_at: at(30),
            cancelled: false,
            used: false,
        })
    }

    /// Decides with everything valid except what `change` alters.
    fn decide(change: impl FnOnce(&mut ScanFacts<'_>)) -> Result<Approval, RejectReason> {
        let (store, device) = (store(), device());
        let ticket = Ok(claims());
        let mut facts = ScanFacts {
            store: &store,
            device: &device,
            device_facts: free_device(),
            ticket: &ticket,
            reservation: booked(),
            now: at(5),
            early_grace: GRACE,
        };
        change(&mut facts);
        authorize_scan(&facts).map_err(|refusal| refusal.reason)
    }

    #[test]
    fn a_valid_scan_is_approved_until_the_end_of_the_booking() {
        assert_eq!(
            decide(|_| {}),
            Ok(Approval {
                lease_until: at(30)
            })
        );
    }

    #[test]
    fn the_window_is_checked_with_an_early_grace() {
        let early = |minutes: i64| decide(|f| f.now = at(0) - chrono::Duration::seconds(minutes));
        assert_eq!(
            early(59),
            Ok(Approval {
                lease_until: at(30)
            })
        );
        assert_eq!(early(61), Err(RejectReason::TooEarly));
        assert_eq!(decide(|f| f.now = at(30)), Err(RejectReason::Expired));
        assert!(decide(|f| f.now = at(29)).is_ok());
    }

    #[test]
    fn each_ticket_problem_has_its_own_reason() {
        let cases = [
            (TicketError::BadSignature, RejectReason::BadSignature),
            (
                TicketError::UnknownKey("k9".into()),
                RejectReason::UnknownKey,
            ),
            (
                TicketError::RevokedKey("k1".into()),
                RejectReason::RevokedKey,
            ),
            (TicketError::NotATicket, RejectReason::MalformedTicket),
            (TicketError::BadEncoding, RejectReason::MalformedTicket),
        ];
        for (error, reason) in cases {
            let store = store();
            let device = device();
            let ticket = Err(error);
            let facts = ScanFacts {
                store: &store,
                device: &device,
                device_facts: free_device(),
                ticket: &ticket,
                reservation: None,
                now: at(5),
                early_grace: GRACE,
            };
            assert_eq!(authorize_scan(&facts).unwrap_err().reason, reason);
        }
    }

    #[test]
    fn store_and_device_must_match_the_scanner() {
        let ticket = Ok(claims());
        let (store, device) = (store(), device());
        let (other_store, other_device) = (
            StoreId::parse("umeda").unwrap(),
            DeviceId::parse("pc-02").unwrap(),
        );
        let cases = [
            (&other_store, &device, RejectReason::WrongStore),
            (&store, &other_device, RejectReason::WrongDevice),
        ];
        for (store, device, reason) in cases {
            let facts = ScanFacts {
                store,
                device,
                device_facts: free_device(),
                ticket: &ticket,
                reservation: booked(),
                now: at(5),
                early_grace: GRACE,
            };
            assert_eq!(authorize_scan(&facts).unwrap_err().reason, reason);
        }
    }

    #[test]
    fn reservation_state_is_checked() {
        assert_eq!(
            decide(|f| f.reservation = None),
            Err(RejectReason::UnknownTicket)
        );
        let cancelled = booked().map(|r| ReservationFacts {
            cancelled: true,
            ..r
        });
        assert_eq!(
            decide(|f| f.reservation = cancelled),
            Err(RejectReason::Cancelled)
        );
        let used = booked().map(|r| ReservationFacts { used: true, ..r });
        assert_eq!(
            decide(|f| f.reservation = used),
            Err(RejectReason::AlreadyUsed)
        );
    }

    #[test]
    fn the_device_must_be_known_in_service_and_free() {
        assert_eq!(
            decide(|f| f.device_facts = None),
            Err(RejectReason::UnknownDevice)
        );
        let out = Some(DeviceFacts {
            in_service: false,
            busy: false,
        });
        assert_eq!(
            decide(|f| f.device_facts = out),
            Err(RejectReason::OutOfService)
        );
        let busy = Some(DeviceFacts {
            in_service: true,
            busy: true,
        });
        assert_eq!(
            decide(|f| f.device_facts = busy),
            Err(RejectReason::DeviceBusy)
        );
    }

    #[test]
    fn a_used_ticket_is_refused_as_used_even_when_expired() {
        let used = booked().map(|r| ReservationFacts { used: true, ..r });
        assert_eq!(
            decide(|f| {
                f.reservation = used;
                f.now = at(40);
            }),
            Err(RejectReason::AlreadyUsed)
        );
    }
}
