//! What the fuzz targets share: the keys of `protocol/vectors/` (ticket keys and management's
//! command key), so that the seeds verify and the targets can check what verifying means.

use std::sync::OnceLock;

use mujin_protocol::ticket::{Keyring, SigningKey};
use mujin_protocol::KeyId;

/// The keys of `tickets.json` (`k1` is RFC 8032's first test key), as (key id, seed).
const VECTOR_KEYS: [(&str, [u8; 32]); 3] = [
    (
        "k1",
        [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ],
    ),
    ("k2", [0x42; 32]),
    (
        "rotation-2027-01",
        [
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
            24, 25, 26, 27, 28, 29, 30, 31,
        ],
    ),
];

/// The signing keys of the vectors, built once per fuzzing process.
pub fn signing_keys() -> &'static [SigningKey] {
    static KEYS: OnceLock<Vec<SigningKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        VECTOR_KEYS
            .iter()
            .map(|(id, seed)| {
                let id = KeyId::parse(id).expect("the vector key ids are valid");
                SigningKey::from_seed(id, seed).expect("the vector seeds are 32 bytes")
            })
            .collect()
    })
}

/// A keyring trusting every vector key.
pub fn keyring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| Keyring::new(signing_keys().iter().map(SigningKey::public_key)))
}

/// The signing key with this id, if it is one of the vectors'.
pub fn signing_key(key_id: &KeyId) -> Option<&'static SigningKey> {
    signing_keys().iter().find(|key| key.key_id() == key_id)
}

/// Management's command key of the message vectors (`c1`, seed `0x5c` × 32), which signs
/// their commands, desired states and trust list.
pub fn command_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let id = KeyId::parse("c1").expect("a valid key id");
        SigningKey::from_seed(id, &[0x5c; 32]).expect("the seed is 32 bytes")
    })
}
