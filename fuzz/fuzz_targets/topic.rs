//! Fuzzes topic strings: `Topic::parse` never panics, accepts only the one spelling it builds
//! (`parse(t).to_string() == t`, so `parse(display(t)) == t`), and the ids it is made of never
//! hold what would change a topic's shape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mujin_protocol::message::{decode, encode};
use mujin_protocol::topic::Topic;
use mujin_protocol::{
    CommandId, DeviceId, KeyId, OperatorId, RequestId, ScanId, SessionId, StoreId, TicketId,
    WorkerId,
};

fuzz_target!(|data: &[u8]| {
    // MQTT topic names are UTF-8; the client refuses anything else before mujin sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(topic) = Topic::parse(text) {
        let shown = topic.to_string();
        assert_eq!(shown, text);
        assert_eq!(Topic::parse(&shown), Ok(topic.clone()));
        assert!(topic.qos() <= 1);
        let _ = topic.retained();
    }
    for level in text.split('/') {
        check_ids(level);
    }
});

/// Every id kind: an accepted slug is the text itself, short, and safe in a topic level; a
/// uuid id reads back from its display; both survive a JSON round trip.
fn check_ids(level: &str) {
    macro_rules! slugs {
        ($($id:ty),*) => {$(
            if let Ok(id) = <$id>::parse(level) {
                assert_eq!(id.as_str(), level);
                assert!(!level.is_empty() && level.len() <= <$id>::MAX_LEN);
                assert!(!level.contains(['/', '+', '#', '$']) && !level.starts_with('-'));
                assert_eq!(decode::<$id>(&encode(&id)), Ok(id));
            }
        )*};
    }
    macro_rules! uuids {
        ($($id:ty),*) => {$(
            if let Ok(id) = <$id>::parse(level) {
                assert_eq!(<$id>::parse(&id.to_string()), Ok(id));
                assert_eq!(decode::<$id>(&encode(&id)), Ok(id));
            }
        )*};
    }
    slugs!(StoreId, DeviceId, KeyId, OperatorId, WorkerId);
    uuids!(RequestId, TicketId, SessionId, ScanId, CommandId);
}
