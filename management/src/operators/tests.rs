//! The authentication and role rules, without a database.

use chrono::TimeZone;
use mujin_protocol::message::RequestAction;
use mujin_protocol::signed::{operator_key_id, sign_request, sign_request_at};
use mujin_protocol::snapshot::SnapshotPart;
use mujin_protocol::{RequestId, SessionId};

use super::*;

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 1, 15, 8, minute, 0).unwrap()
}

fn key(seed: u8) -> mujin_protocol::ticket::SigningKey {
    let probe =
        mujin_protocol::ticket::SigningKey::from_seed(KeyId::parse("x").unwrap(), &[seed; 32])
            .unwrap();
    let id = operator_key_id(&probe.public_key().bytes);
    mujin_protocol::ticket::SigningKey::from_seed(id, &[seed; 32]).unwrap()
}

fn id(name: &str) -> OperatorId {
    OperatorId::parse(name).unwrap()
}

fn record(name: &str, seed: u8, role: Role) -> OperatorRecord {
    OperatorRecord {
        operator: id(name),
        role,
        key: key(seed).public_key(),
        created_at: at(0),
        revoked_at: None,
    }
}

fn force_stop() -> Request {
    Request::new(
        RequestId::random(),
        RequestAction::ForceStop {
            session_id: SessionId::random(),
        },
    )
}

fn signed_by(seed: u8, minute: u32) -> Request {
    let mut request = force_stop();
    sign_request_at(&key(seed), &mut request, at(minute));
    request
}

#[test]
fn a_request_signed_by_the_topics_operator_is_theirs() {
    let alice = record("alice", 1, Role::Operator);
    let signer = authenticate(&id("alice"), &signed_by(1, 10), Some(&alice), at(12)).unwrap();
    assert_eq!(signer.operator, id("alice"));
    assert_eq!(signer.role, Role::Operator);
    assert_eq!(signer.key_id, alice.key.key_id);
}

#[test]
fn each_authentication_refusal_says_why() {
    let alice = record("alice", 1, Role::Operator);
    let bob = record("bob", 2, Role::Admin);
    let topic = id("alice");
    assert_eq!(
        authenticate(&topic, &force_stop(), Some(&alice), at(10)),
        Err(Refusal::Unsigned)
    );
    let unknown = authenticate(&topic, &signed_by(3, 10), None, at(10)).unwrap_err();
    assert_eq!(unknown, Refusal::UnknownKey(key(3).key_id().to_string()));
    // Bob's key id on a request signed by someone else's key.
    let mut forged = signed_by(3, 10);
    if let Some(signature) = forged.signature.as_mut() {
        signature.key_id = bob.key.key_id.clone();
    }
    assert_eq!(
        authenticate(&topic, &forged, Some(&bob), at(10)),
        Err(Refusal::BadSignature(id("bob")))
    );
    assert_eq!(
        authenticate(&topic, &signed_by(2, 10), Some(&bob), at(10)),
        Err(Refusal::OtherOperator {
            signer: id("bob"),
            topic: topic.clone()
        })
    );
    let revoked = OperatorRecord {
        revoked_at: Some(at(5)),
        ..alice.clone()
    };
    assert_eq!(
        authenticate(&topic, &signed_by(1, 10), Some(&revoked), at(10)),
        Err(Refusal::Revoked {
            operator: id("alice"),
            at: at(5)
        })
    );
    assert_eq!(
        authenticate(&topic, &signed_by(1, 10), Some(&alice), at(16)),
        Err(Refusal::OutOfTime {
            sent_at: at(10),
            now: at(16)
        })
    );
    let mut undated = force_stop();
    sign_request(&key(1), &mut undated);
    assert_eq!(
        authenticate(&topic, &undated, Some(&alice), at(10)),
        Err(Refusal::Undated)
    );
}

#[test]
fn refusals_read_as_reply_details() {
    assert_eq!(
        Refusal::OutOfTime {
            sent_at: at(0),
            now: at(6)
        }
        .to_string(),
        "refused: sent at 2027-01-15T08:00:00Z, more than 5 minutes from management's clock (2027-01-15T08:06:00Z)"
    );
    assert_eq!(
        Refusal::OtherOperator {
            signer: id("bob"),
            topic: id("alice")
        }
        .to_string(),
        "refused: signed by operator bob, not by alice whose topic it came on"
    );
    assert!(Refusal::Unsigned.to_string().contains("not signed"));
}

#[test]
fn a_viewer_only_reads_and_a_refusal_names_the_role_needed() {
    let viewer = Signer {
        operator: id("victor"),
        role: Role::Viewer,
        key_id: key(1).key_id().clone(),
    };
    let snapshot = RequestAction::Snapshot {
        part: SnapshotPart::Events,
        store: None,
        after: None,
    };
    assert_eq!(authorize(&viewer, &snapshot), Ok(()));
    let refusal = authorize(&viewer, &force_stop().action).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "refused: force_stop needs the operator role; victor is a viewer"
    );
    for role in [Role::Operator, Role::Admin] {
        let signer = Signer {
            role,
            ..viewer.clone()
        };
        assert_eq!(authorize(&signer, &force_stop().action), Ok(()));
        assert_eq!(authorize(&signer, &snapshot), Ok(()));
    }
}

#[test]
fn roles_parse_by_name() {
    for role in Role::ALL {
        assert_eq!(Role::parse(role.as_str()), Ok(role));
    }
    assert!(Role::parse("root").is_err());
    assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
}

#[test]
fn the_listing_shows_no_key_material() {
    let mut revoked = record("bob", 2, Role::Viewer);
    revoked.revoked_at = Some(at(30));
    let text = cli::list_text(&[record("alice", 1, Role::Admin), revoked.clone()]);
    assert!(text.contains("alice") && text.contains("admin"), "{text}");
    assert!(text.contains("revoked 2027-01-15T08:30:00Z"), "{text}");
    let hex: String = revoked
        .key
        .bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!text.contains(&hex), "{text}");
    assert_eq!(cli::list_text(&[]), "no operators\n");
}

#[test]
fn a_new_key_file_is_owner_only_and_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = cli::default_key_path(dir.path(), &id("alice"));
    let key = cli::write_new_key(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    let loaded = mujin_protocol::signed::operator_key(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(loaded.public_key(), key.public_key());
    assert!(cli::write_new_key(&path).is_err());
}
