//! Reading certificates and private keys from PEM files, with errors that name the file and say
//! what is wrong with it (missing, not PEM, no certificate, no key) instead of a bare parse error.

use std::io;
use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// Every certificate of a PEM file, in file order (a chain: the end entity first).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| not_pem(path, &error))?;
    if certificates.is_empty() {
        return Err(if looks_like_pem(&bytes) {
            TlsError::NoCertificate {
                path: path.to_owned(),
            }
        } else {
            not_pem(path, &pem::Error::NoItemsFound)
        });
    }
    Ok(certificates)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) if looks_like_pem(&bytes) => Err(TlsError::NoPrivateKey {
            path: path.to_owned(),
        }),
        Err(error) => Err(not_pem(path, &error)),
    }
}

/// The certificates of a PEM file as trust anchors (a CA bundle).
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(path)? {
        roots
            .add(certificate)
            .map_err(|error| TlsError::BadCaCertificate {
                path: path.to_owned(),
                reason: error.to_string(),
            })?;
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TlsError::Missing {
            path: path.to_owned(),
        },
        _ => TlsError::Unreadable {
            path: path.to_owned(),
            source,
        },
    })
}

/// Whether the file has any PEM block at all: tells "a PEM file without the wanted item" from
/// "not a PEM file" (DER, a typo'd path to some other file).
fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|window| window == b"-----BEGIN ")
}

fn not_pem(path: &Path, error: &pem::Error) -> TlsError {
    let reason = match error {
        pem::Error::NoItemsFound => "no -----BEGIN ...----- block found".to_owned(),
        other => other.to_string(),
    };
    TlsError::NotPem {
        path: PathBuf::from(path),
        reason,
    }
}
