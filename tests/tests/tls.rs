//! TLS: the broker's TLS listener with management and agents running whole sessions through it,
//! and the clients it must keep out — one trusting another CA, one without the client
//! certificate the broker requires (or with one from another CA), and a broker whose
//! certificate names another host. Certificates are made at test time (`mujin_tests::tls`).

use std::net::SocketAddr;
use std::time::Duration;

use mujin_broker::{free_local_port, Broker, BrokerSettings, Credentials, TlsListenerSettings};
use mujin_protocol::message::{self, Availability, ReportedState};
use mujin_protocol::topic::{DeviceChannel, Topic};
use mujin_protocol::{DeviceId, StoreId};
use mujin_tests::stack::Stack;
use mujin_tests::tls::Pki;
use mujin_transport::TlsSettings;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};

const SHORT: Duration = Duration::from_secs(10);
const USER: (&str, &str) = ("client", "client-secret");

/// Waits until the agent of `device` reported itself online.
async fn online(stack: &Stack, (store, device): &(StoreId, DeviceId)) {
    let wanted = Topic::device(store, device, DeviceChannel::State);
    stack
        .observer
        .wait_for("the agent to come online", SHORT, |topic, payload| {
            let state: ReportedState = message::decode(payload).ok()?;
            (topic == &wanted && state.availability == Availability::Online).then_some(())
        })
        .await;
}

/// Books, scans and checks the program started: the whole path crosses the TLS listener twice
/// (agent → broker → management → broker → agent).
async fn run_a_session(stack: &Stack) {
    let device = stack.add_device("shibuya", "pc-01").await;
    let mut agent = stack.agent(&device);
    online(stack, &device).await;
    let booking = stack.book_now(&device, 30).await;
    let (_session, pid) = stack.start_session(&mut agent, &booking.ticket).await;
    assert!(
        mujin_tests::process_alive(pid),
        "the operating program runs"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_and_an_agent_over_tls_run_a_session() {
    let stack = Stack::start_with_tls(false).await;
    run_a_session(&stack).await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_and_agent_processes_with_client_certificates_run_a_session() {
    let mut stack = Stack::start_with_tls(true).await;
    // The `mujin-management run` process, given --tls-ca, --tls-client-cert, --tls-client-key.
    stack.stop_management().await;
    let _management = stack.spawn_management_process();
    stack.wait_for_workers(1).await;
    run_a_session(&stack).await;
    stack.shutdown().await;
}

/// A broker with a plain listener on loopback and a TLS listener, in this process.
async fn broker(cert: (&Pki, bool), client_ca: Option<&std::path::Path>) -> Broker {
    mujin_tests::init_tracing();
    let (pki, right_host) = cert;
    let (cert_file, key_file) = if right_host {
        (pki.server_cert.clone(), pki.server_key.clone())
    } else {
        (pki.wrong_host_cert.clone(), pki.wrong_host_key.clone())
    };
    let mut credentials = Credentials::new();
    credentials.insert(USER.0, USER.1);
    let settings = BrokerSettings {
        listen_v4: local_addr(),
        listen_v5: None,
        credentials,
    };
    let tls = TlsListenerSettings {
        listen: local_addr(),
        cert_file,
        key_file,
        client_ca: client_ca.map(ToOwned::to_owned),
    };
    Broker::start_with_tls(settings, None, Some(tls))
        .await
        .expect("the broker starts")
}

fn local_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_local_port().expect("a free port")))
}

/// Connects to `host`:`port` with `tls` and says whether the broker's CONNACK came (`Ok`) or
/// what stopped the connection first (`Err`).
async fn connect(host: &str, port: u16, tls: &TlsSettings) -> Result<(), String> {
    let mut options = MqttOptions::new(format!("tls-test-{}", uuid::Uuid::new_v4()), host, port);
    options
        .set_credentials(USER.0, USER.1)
        .set_keep_alive(Duration::from_secs(5))
        .set_transport(tls.transport().map_err(|error| error.to_string())?);
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    let outcome = tokio::time::timeout(SHORT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(format!("{error:?}")),
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|_| Err("no answer".to_owned()))
}

fn port_of(broker: &Broker) -> u16 {
    broker.tls_addr().expect("a TLS listener").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_another_ca_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::generate(dir.path());
    let broker = broker((&pki, true), None).await;
    let port = port_of(&broker);
    let stranger = TlsSettings {
        ca_file: pki.other_ca.clone(),
        client_cert: None,
        client_key: None,
    };
    let error = connect("127.0.0.1", port, &stranger).await.unwrap_err();
    assert!(error.contains("UnknownIssuer"), "{error}");
    // The refusal cost the broker nothing: the right clients still get in, by IP or by name.
    connect("127.0.0.1", port, &pki.client()).await.unwrap();
    connect("localhost", port, &pki.client()).await.unwrap();
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_for_another_host_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::generate(dir.path());
    let broker = broker((&pki, false), None).await;
    let port = port_of(&broker);
    for host in ["127.0.0.1", "localhost"] {
        let error = connect(host, port, &pki.client()).await.unwrap_err();
        assert!(error.contains("NotValidForName"), "{host}: {error}");
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_clients_with_its_certificates_get_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::generate(dir.path());
    let broker = broker((&pki, true), Some(&pki.ca)).await;
    let port = port_of(&broker);

    let error = connect("127.0.0.1", port, &pki.client()).await.unwrap_err();
    assert!(error.contains("CertificateRequired"), "{error}");
    let other = TlsSettings {
        ca_file: pki.ca.clone(),
        client_cert: Some(pki.other_client_cert.clone()),
        client_key: Some(pki.other_client_key.clone()),
    };
    let error = connect("127.0.0.1", port, &other).await.unwrap_err();
    assert!(error.contains("UnknownCA"), "{error}");

    connect("127.0.0.1", port, &pki.client_with_certificate())
        .await
        .unwrap();
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_a_bad_key_file_does_not_start_and_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::generate(dir.path());
    let settings = BrokerSettings {
        listen_v4: local_addr(),
        listen_v5: None,
        credentials: Credentials::new(),
    };
    let tls = TlsListenerSettings {
        listen: local_addr(),
        cert_file: pki.server_cert.clone(),
        key_file: pki.client_key.clone(),
        client_ca: None,
    };
    let error = Broker::start_with_tls(settings, None, Some(tls))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        error.to_string(),
        format!(
            "TLS listener: the private key {} does not belong to the certificate {}",
            pki.client_key.display(),
            pki.server_cert.display()
        )
    );
}
