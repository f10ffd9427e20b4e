//! TLS and mutual TLS on the gRPC port: a client that trusts the server's CA downloads over
//! TLS; a plaintext client, a client trusting another CA, and (with `--tls-client-ca`) a client
//! without a certificate from the CA are refused at the handshake; `transferd healthcheck`
//! probes over TLS; unusable certificate files stop the server before it binds. Every
//! certificate is made by the test ([`common::pki`]).

mod common;

use common::origin::{Resource, test_bytes};
use common::pki::{Pki, path_arg, plaintext_exchange, tls_exchange};
use common::{Client, Harness, S, run_transferd};
use transferd::client::TlsOptions;

fn flags(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// Connects with `tls` and makes one call; returns the error text (with every cause) of
/// whichever step failed. Panics if the call succeeds.
async fn refusal(addr: &str, tls: Option<&TlsOptions>) -> String {
    let connected = match tls {
        Some(tls) => Client::connect_tls(addr, tls).await,
        None => Client::connect(addr).await,
    };
    let client = match connected {
        Ok(client) => client,
        Err(e) => return chain(&e),
    };
    match client.system_status().await {
        Ok(status) => panic!("a call got through: {status:?}"),
        Err(status) => chain(&status),
    }
}

/// An error and all its sources, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn a_client_that_trusts_the_ca_downloads_over_tls() {
    let pki = Pki::new();
    let h = Harness::start_tls(&pki.trusting_ca(), &flags(&pki.server_flags())).await;
    let body = test_bytes(256 * 1024, 9);
    h.origin.put("/file", Resource::new(body.clone()));
    let op = h.create(&h.origin.url("/file"), "over-tls.bin").await;
    let done = h.wait_finished(&op.guid).await;
    assert_eq!(common::status_of(&done), S::Completed, "{done:?}");
    h.assert_file("over-tls.bin", &body);
    // The handshake runs on the accepted sockets, which keep TCP_NODELAY under TLS.
    common::sockets::assert_accepted_sockets_have_nodelay(&h.server);
}

/// The first byte of a TLS alert record (RFC 8446 §5.1, ContentType alert).
const TLS_ALERT_RECORD: u8 = 21;

#[tokio::test]
async fn plaintext_and_untrusting_clients_are_refused() {
    let pki = Pki::new();
    let h = Harness::start_tls(&pki.trusting_ca(), &flags(&pki.server_flags())).await;
    let addr = h.server.addr.to_string();

    // A plaintext HTTP/2 client is answered with a TLS alert, and no call of the plaintext
    // gRPC client gets through (how its transport reports that varies with timing).
    let answer = plaintext_exchange(h.server.addr);
    assert_eq!(answer.first(), Some(&TLS_ALERT_RECORD), "{answer:?}");
    refusal(&addr, None).await;

    let other_ca = refusal(&addr, Some(&pki.trusting_other_ca())).await;
    assert!(other_ca.contains("UnknownIssuer"), "{other_ca}");
    assert_eq!(
        tls_exchange(h.server.addr, &pki.path("other-ca.pem"), None),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer
        ))
    );

    // The certificate names localhost and 127.0.0.1, not this.
    let wrong_name = pki.trusting_ca().server_name("transferd.example");
    let wrong_name = refusal(&addr, Some(&wrong_name)).await;
    let expected = "certificate not valid for name \"transferd.example\"";
    assert!(wrong_name.contains(expected), "{wrong_name}");

    // The server still serves the clients it should.
    assert_eq!(
        tls_exchange(h.server.addr, &pki.path("ca.pem"), None),
        Ok(())
    );
    h.system_status().await;
}

#[tokio::test]
async fn with_a_client_ca_only_its_client_certificates_get_in() {
    let pki = Pki::new();
    let h = Harness::start_tls(&pki.with_client_cert(), &flags(&pki.mtls_flags())).await;
    let addr = h.server.addr;
    let ca = pki.path("ca.pem");
    let alert = |alert| Err(rustls::Error::AlertReceived(alert));

    // Refused at the handshake: the server's alert says why.
    let no_cert = tls_exchange(addr, &ca, None);
    assert_eq!(
        no_cert,
        alert(rustls::AlertDescription::CertificateRequired)
    );
    let other = (
        &*pki.path("other-client.pem"),
        &*pki.path("other-client.key"),
    );
    let other_cert = tls_exchange(addr, &ca, Some(other));
    assert_eq!(other_cert, alert(rustls::AlertDescription::UnknownCA));
    // And through the library's client, no call gets through either way.
    refusal(&addr.to_string(), Some(&pki.trusting_ca())).await;
    refusal(&addr.to_string(), Some(&pki.with_other_client_cert())).await;

    let mine = (&*pki.path("client.pem"), &*pki.path("client.key"));
    assert_eq!(tls_exchange(addr, &ca, Some(mine)), Ok(()));
    let body = test_bytes(64 * 1024, 10);
    h.origin.put("/file", Resource::new(body.clone()));
    let op = h.create(&h.origin.url("/file"), "mtls.bin").await;
    let done = h.wait_finished(&op.guid).await;
    assert_eq!(common::status_of(&done), S::Completed, "{done:?}");
    h.assert_file("mtls.bin", &body);
    assert_eq!(h.client.list_all(None).await.unwrap().len(), 1);
}

/// Runs `transferd healthcheck --addr ADDR EXTRA...`; returns whether it succeeded and its
/// output.
fn healthcheck(addr: &str, extra: &[String]) -> (bool, String) {
    let args = ["healthcheck".to_string(), "--addr".into(), addr.into()];
    let out = run_transferd(args.iter().chain(extra));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn healthcheck_probes_over_tls_with_the_ca() {
    let pki = Pki::new();
    let h = Harness::start_tls(&pki.with_client_cert(), &flags(&pki.mtls_flags())).await;
    let addr = h.server.addr.to_string();
    let ca = ["--ca-cert".to_string(), path_arg(&pki.path("ca.pem"))];
    let client = [
        "--client-cert".to_string(),
        path_arg(&pki.path("client.pem")),
        "--client-key".into(),
        path_arg(&pki.path("client.key")),
    ];

    let (ok, out) = healthcheck(&addr, &[ca.as_slice(), &client].concat());
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "SERVING");
    let named = ["--server-name".to_string(), "localhost".into()];
    let (ok, out) = healthcheck(&addr, &[ca.as_slice(), &client, &named].concat());
    assert!(ok, "{out}");

    for (what, extra) in [
        ("plaintext", vec![]),
        ("no client certificate", ca.to_vec()),
        (
            "a name the certificate lacks",
            [
                ca.as_slice(),
                &client,
                &["--server-name".into(), "nope.example".into()],
            ]
            .concat(),
        ),
    ] {
        let (ok, out) = healthcheck(&addr, &extra);
        assert!(!ok, "{what}: {out}");
        assert!(!out.contains("SERVING"), "{what}: {out}");
    }

    let missing = ["--ca-cert".to_string(), path_arg(&pki.path("absent.pem"))];
    let (ok, out) = healthcheck(&addr, &missing);
    assert!(!ok, "{out}");
    assert!(
        out.contains("cannot read") && out.contains("absent.pem"),
        "{out}"
    );
}

#[tokio::test]
async fn healthcheck_without_the_ca_fails_against_a_tls_server() {
    let pki = Pki::new();
    let h = Harness::start_tls(&pki.trusting_ca(), &flags(&pki.server_flags())).await;
    let addr = h.server.addr.to_string();
    let (ok, out) = healthcheck(&addr, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("(TLS? pass --ca-cert)"), "{out}");
    let ca = ["--ca-cert".to_string(), path_arg(&pki.path("ca.pem"))];
    let (ok, out) = healthcheck(&addr, &ca);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "SERVING");
}

/// Unusable TLS files stop the server before it binds or touches its data directory, with a
/// message naming the file and the problem.
#[test]
fn unusable_tls_files_stop_the_server_before_it_binds() {
    let pki = Pki::new();
    let garbage = pki.write("garbage.pem", "not a certificate\n");
    let cut = pki.write("cut.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    let server = path_arg(&pki.path("server.pem"));
    let server_key = path_arg(&pki.path("server.key"));
    let client_key = path_arg(&pki.path("client.key"));
    let absent = path_arg(&pki.path("absent.pem"));
    let garbage = path_arg(&garbage);
    let cut = path_arg(&cut);
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--tls-cert", &absent, "--tls-key", &server_key],
            format!("cannot read {absent}"),
        ),
        (
            vec!["--tls-cert", &garbage, "--tls-key", &server_key],
            format!("{garbage}: holds no certificate"),
        ),
        (
            vec!["--tls-cert", &cut, "--tls-key", &server_key],
            format!("{cut}: is not valid PEM"),
        ),
        (
            vec!["--tls-cert", &server, "--tls-key", &server],
            format!("{server}: holds no private key"),
        ),
        (
            vec!["--tls-cert", &server, "--tls-key", &client_key],
            format!("the certificate in {server} and the key in {client_key} cannot be used"),
        ),
        (
            vec![
                "--tls-cert",
                &server,
                "--tls-key",
                &server_key,
                "--tls-client-ca",
                &garbage,
            ],
            format!("{garbage}: holds no certificate"),
        ),
        (vec!["--tls-cert", &server], "--tls-key".into()),
        (vec!["--tls-key", &server_key], "--tls-cert".into()),
        (vec!["--tls-client-ca", &server], "--tls-cert".into()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for (args, message) in cases {
        let out = run_transferd(
            [
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &path_arg(&data_dir),
            ]
            .iter()
            .chain(&args),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(&message), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} announced an address");
        assert!(!data_dir.exists(), "{args:?} touched the data directory");
    }
}
