//! The error messages a person setting up TLS sees, and the configurations that must build.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use super::*;

/// A CA, a certificate it signed for `localhost`, and a second, unrelated key, as PEM files.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let other_key = KeyPair::generate().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", &ca.pem());
        write("cert.pem", &cert.pem());
        write("key.pem", &key.serialize_pem());
        write("other-key.pem", &other_key.serialize_pem());
        write("garbage.pem", "this is not a certificate\n");
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn client(&self, ca: &str, cert: Option<&str>, key: Option<&str>) -> TlsSettings {
        TlsSettings {
            ca_file: self.path(ca),
            client_cert: cert.map(|name| self.path(name)),
            client_key: key.map(|name| self.path(name)),
        }
    }
}

fn message(error: TlsError) -> String {
    error.to_string()
}

fn shows(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn a_missing_file_is_named() {
    let files = Files::new();
    let error = message(
        files
            .client("nope.pem", None, None)
            .client_config()
            .unwrap_err(),
    );
    assert_eq!(
        error,
        format!("{}: no such file", shows(&files.path("nope.pem")))
    );
}

#[test]
fn a_file_that_is_not_pem_is_named() {
    let files = Files::new();
    let error = message(
        files
            .client("garbage.pem", None, None)
            .client_config()
            .unwrap_err(),
    );
    assert!(
        error.starts_with(&shows(&files.path("garbage.pem"))),
        "{error}"
    );
    assert!(error.contains("not a PEM file"), "{error}");
}

#[test]
fn a_key_given_as_the_ca_holds_no_certificate() {
    let files = Files::new();
    let error = message(
        files
            .client("key.pem", None, None)
            .client_config()
            .unwrap_err(),
    );
    assert_eq!(
        error,
        format!(
            "{}: holds no certificate (no -----BEGIN CERTIFICATE----- block)",
            shows(&files.path("key.pem"))
        )
    );
}

#[test]
fn a_certificate_given_as_the_key_holds_no_key() {
    let files = Files::new();
    let settings = files.client("ca.pem", Some("cert.pem"), Some("cert.pem"));
    let error = message(settings.client_config().unwrap_err());
    assert!(
        error.starts_with(&format!(
            "{}: holds no private key",
            shows(&files.path("cert.pem"))
        )),
        "{error}"
    );
    let error =
        message(server_config(&files.path("cert.pem"), &files.path("ca.pem"), None).unwrap_err());
    assert!(error.contains("holds no private key"), "{error}");
}

#[test]
fn a_key_of_another_certificate_is_a_mismatch() {
    let files = Files::new();
    let settings = files.client("ca.pem", Some("cert.pem"), Some("other-key.pem"));
    let expected = format!(
        "the private key {} does not belong to the certificate {}",
        shows(&files.path("other-key.pem")),
        shows(&files.path("cert.pem"))
    );
    assert_eq!(message(settings.client_config().unwrap_err()), expected);
    let error = server_config(&files.path("cert.pem"), &files.path("other-key.pem"), None);
    assert_eq!(message(error.unwrap_err()), expected);
}

#[test]
fn matching_files_build_client_and_server_configurations() {
    let files = Files::new();
    files.client("ca.pem", None, None).transport().unwrap();
    let with_identity = files.client("ca.pem", Some("cert.pem"), Some("key.pem"));
    assert!(with_identity
        .client_config()
        .unwrap()
        .client_auth_cert_resolver
        .has_certs());
    assert!(matches!(
        with_identity.transport().unwrap(),
        rumqttc::Transport::Tls(TlsConfiguration::Rustls(_))
    ));
    let (cert, key) = (files.path("cert.pem"), files.path("key.pem"));
    server_config(&cert, &key, None).unwrap();
    server_config(&cert, &key, Some(&files.path("ca.pem"))).unwrap();
    let error = server_config(&cert, &key, Some(&files.path("garbage.pem"))).unwrap_err();
    assert!(message(error).contains("not a PEM file"));
}

#[test]
fn flags_without_a_ca_mean_plain_mqtt_and_a_client_certificate_needs_all_three() {
    let path = |name: &str| Some(PathBuf::from(name));
    assert_eq!(TlsSettings::from_flags(None, None, None).unwrap(), None);
    assert!(matches!(transport(None).unwrap(), rumqttc::Transport::Tcp));
    let settings = TlsSettings::from_flags(path("ca"), path("c"), path("k")).unwrap();
    assert_eq!(
        settings,
        Some(TlsSettings {
            ca_file: "ca".into(),
            client_cert: path("c"),
            client_key: path("k"),
        })
    );
    assert!(matches!(
        TlsSettings::from_flags(path("ca"), path("c"), None),
        Err(TlsError::IncompleteClientIdentity)
    ));
    assert!(matches!(
        TlsSettings::from_flags(path("ca"), None, path("k")),
        Err(TlsError::IncompleteClientIdentity)
    ));
    assert!(matches!(
        TlsSettings::from_flags(None, path("c"), path("k")),
        Err(TlsError::ClientIdentityWithoutCa)
    ));
}
