//! Fuzzes ticket texts: `parse_unverified` and `Keyring::verify` never panic, agree with each
//! other, and what they accept is exactly what signing produces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mujin_fuzz::{keyring, signing_key, signing_keys};
use mujin_protocol::ticket::{parse_unverified, TicketClaims};

fuzz_target!(|data: &[u8]| {
    // Scanners deliver bytes; the agent reads them as (lossy) UTF-8 text.
    let text = String::from_utf8_lossy(data);
    let parsed = parse_unverified(&text);
    let verified = keyring().verify(&text);

    let claims = match parsed {
        Ok(ticket) => ticket.claims,
        Err(error) => {
            // verify parses first, so it must refuse the text for the same reason.
            assert_eq!(verified, Err(error));
            return;
        }
    };
    assert!(claims.not_before < claims.not_after, "{claims:?}");

    if let Ok(verified) = &verified {
        assert_eq!(verified, &claims);
        // A text that verifies is the one its key issues for its claims: the text form has
        // one spelling, up to the case and surrounding whitespace scanners may change.
        let key = signing_key(&verified.key_id).expect("verified with a known key");
        assert_eq!(key.issue(verified), text.trim().to_ascii_uppercase());
    }

    // Any claims that parse can be issued again and read back unchanged.
    let key = &signing_keys()[0];
    let reissued = TicketClaims {
        key_id: key.key_id().clone(),
        ..claims
    };
    assert_eq!(keyring().verify(&key.issue(&reissued)), Ok(reissued));
});
