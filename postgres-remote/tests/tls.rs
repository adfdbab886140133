//! TLS with rustls against a server with a self-signed certificate.

mod common;

use std::sync::Arc;

use postgres_remote::harness::{TestServer, USER_PASSWORD};
use postgres_remote::{PostgresRemote, Tls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sync_traits::{PullMode, RemoteStore, Watermark};

fn client_config(pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        roots.add(c.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test]
async fn connects_over_tls_and_refuses_an_unknown_certificate() {
    let s = TestServer::start_tls();
    let _admin = s.admin().await;
    s.create_user("alice").await;
    let pem = s.tls_cert_pem().expect("cert");
    let conn = format!("{} sslmode=require", s.conn_str("alice", USER_PASSWORD));
    let r = PostgresRemote::builder(&conn)
        .expect("config")
        .tls(Tls::Rustls(client_config(&pem)))
        .connect()
        .await
        .expect("TLS connect");
    r.pull(Watermark(0), 10, PullMode::Resync)
        .await
        .expect("pull over TLS");
    let ssl: bool = s
        .sql()
        .await
        .query_one(
            "SELECT bool_or(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE usename = 'alice'",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(ssl, "alice's connection is encrypted");
    // A certificate the client does not trust: refused, as a permanent error.
    let other = TestServer::start_tls();
    let wrong = client_config(&other.tls_cert_pem().expect("cert"));
    let e = PostgresRemote::builder(&conn)
        .expect("config")
        .tls(Tls::Rustls(wrong))
        .connect()
        .await
        .expect_err("untrusted certificate");
    assert!(
        matches!(e, postgres_remote::PgError::Tls(_)) && !e.is_transient(),
        "{e}"
    );
}
