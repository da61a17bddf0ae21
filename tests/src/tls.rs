//! Certificates for TLS tests, made at test time: a CA, the broker's certificate (for
//! `localhost` and `127.0.0.1`), a client certificate, a certificate for another host, and a
//! second CA nobody trusts — all as PEM files in a directory.

use std::path::{Path, PathBuf};

use mujin_transport::TlsSettings;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

/// The PEM files of one test's public key infrastructure.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA that signed the broker's and the client's certificates.
    pub ca: PathBuf,
    /// The broker's certificate, valid for `localhost` and `127.0.0.1`, and its key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate signed by [`Pki::ca`], and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A certificate signed by [`Pki::ca`] for `broker.example.com` only, and its key.
    pub wrong_host_cert: PathBuf,
    pub wrong_host_key: PathBuf,
    /// Another CA, and a client certificate it signed (with its key).
    pub other_ca: PathBuf,
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
}

struct Authority {
    cert: Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = name_of(name);
        let cert = params.self_signed(&key).expect("CA certificate");
        Authority { cert, key }
    }

    /// A certificate for `names` (DNS names or IP addresses), with the given purpose.
    fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (Certificate, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("certificate params");
        params.distinguished_name = name_of("mujin test");
        params.extended_key_usages = vec![purpose];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("certificate");
        (cert, key)
    }
}

fn name_of(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

impl Pki {
    /// Makes fresh keys and certificates in `dir`.
    pub fn generate(dir: &Path) -> Pki {
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write a PEM file");
            path
        };
        let ca = Authority::new("mujin test CA");
        let other = Authority::new("another CA");
        let (server, server_key) = ca.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = ca.issue(&[], ExtendedKeyUsagePurpose::ClientAuth);
        let (wrong_host, wrong_host_key) =
            ca.issue(&["broker.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
        let (other_client, other_client_key) =
            other.issue(&[], ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca: write("ca.pem", ca.cert.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server-key.pem", server_key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client-key.pem", client_key.serialize_pem()),
            wrong_host_cert: write("wrong-host.pem", wrong_host.pem()),
            wrong_host_key: write("wrong-host-key.pem", wrong_host_key.serialize_pem()),
            other_ca: write("other-ca.pem", other.cert.pem()),
            other_client_cert: write("other-client.pem", other_client.pem()),
            other_client_key: write("other-client-key.pem", other_client_key.serialize_pem()),
        }
    }

    /// A client trusting [`Pki::ca`], without a client certificate.
    pub fn client(&self) -> TlsSettings {
        TlsSettings {
            ca_file: self.ca.clone(),
            client_cert: None,
            client_key: None,
        }
    }

    /// A client trusting [`Pki::ca`], with [`Pki::client_cert`].
    pub fn client_with_certificate(&self) -> TlsSettings {
        TlsSettings {
            ca_file: self.ca.clone(),
            client_cert: Some(self.client_cert.clone()),
            client_key: Some(self.client_key.clone()),
        }
    }
}

/// How a [`crate::stack::Stack`] runs TLS: the broker's extra listener and what every client
/// (management, agents) is given.
#[derive(Debug, Clone)]
pub struct StackTls {
    pub pki: Pki,
    /// The broker's TLS port (its plain listener stays on the stack's `port`, on loopback).
    pub port: u16,
    /// Whether the broker requires client certificates signed by the CA (`--tls-client-ca`);
    /// management and agents then present [`Pki::client_cert`].
    pub client_certificates: bool,
}

impl StackTls {
    /// TLS on a free port with fresh certificates in `dir`.
    pub fn new(dir: &Path, client_certificates: bool) -> StackTls {
        StackTls {
            pki: Pki::generate(dir),
            port: mujin_broker::free_local_port().expect("a free port"),
            client_certificates,
        }
    }

    /// The broker's TLS flags.
    pub fn broker_args(&self) -> Vec<String> {
        let mut args = vec![
            "--tls-listen".to_owned(),
            format!("127.0.0.1:{}", self.port),
            "--tls-cert".to_owned(),
            path_text(&self.pki.server_cert),
            "--tls-key".to_owned(),
            path_text(&self.pki.server_key),
        ];
        if self.client_certificates {
            args.extend(["--tls-client-ca".to_owned(), path_text(&self.pki.ca)]);
        }
        args
    }

    /// What a client of the stack is given.
    pub fn client(&self) -> TlsSettings {
        if self.client_certificates {
            self.pki.client_with_certificate()
        } else {
            self.pki.client()
        }
    }

    /// A client's TLS flags (the same names for management, agents and the console).
    pub fn client_args(&self) -> Vec<String> {
        let settings = self.client();
        let mut args = vec!["--tls-ca".to_owned(), path_text(&settings.ca_file)];
        if let (Some(cert), Some(key)) = (&settings.client_cert, &settings.client_key) {
            args.extend([
                "--tls-client-cert".to_owned(),
                path_text(cert),
                "--tls-client-key".to_owned(),
                path_text(key),
            ]);
        }
        args
    }
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}
