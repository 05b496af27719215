//! HTTPS through `serve_with`: certificates made here with rcgen, real sockets on port 0.
//! Reloading changes the certificate of new connections and leaves open ones alone; a
//! failed reload keeps the one in force; a client that never finishes its handshake is
//! closed within the header-read timeout; mutual TLS refuses a client without a
//! certificate of the configured CA; forwarded headers count only from trusted proxies.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use axum::routing::get;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use spacesync_http::tls::{ServerTls, TlsFiles};
use spacesync_http::{ClientCert, EdgeOptions, Limits, Stats, serve_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A CA that issues certificates for 127.0.0.1 / localhost.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = ok(CertificateParams::new(Vec::<String>::new()));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        Ca {
            issuer: ok(CertifiedIssuer::self_signed(p, ok(KeyPair::generate()))),
        }
    }

    /// (certificate PEM, key PEM) for `names`.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = ok(KeyPair::generate());
        let p = ok(CertificateParams::new(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ));
        let cert = ok(p.signed_by(&key, &self.issuer));
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    ok(std::fs::write(&p, text));
    p
}

fn short() -> Limits {
    Limits {
        max_connections: 64,
        max_connections_per_address: 8,
        header_read_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
    }
}

/// What the test router answers on `/who`: the client address, `X-Forwarded-Proto`,
/// `X-Forwarded-Host` and whether a client certificate came with the connection.
fn router() -> Router {
    Router::new().route(
        "/who",
        get(
            |ConnectInfo(client): ConnectInfo<SocketAddr>,
             cert: Option<axum::Extension<ClientCert>>,
             h: HeaderMap| async move {
                let hv = |n: &str| {
                    h.get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string()
                };
                format!(
                    "client={} proto={} host={} cert={}",
                    client.ip(),
                    hv("x-forwarded-proto"),
                    hv("x-forwarded-host"),
                    cert.is_some()
                )
            },
        ),
    )
}

struct Server {
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(tls: Option<Arc<ServerTls>>, trusted: &[IpAddr]) -> Server {
    let listener = ok(TcpListener::bind("127.0.0.1:0").await);
    let addr = ok(listener.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let options = EdgeOptions {
        tls,
        trusted_proxies: trusted.to_vec().into(),
    };
    tokio::spawn(serve_with(
        listener,
        router(),
        short(),
        Arc::new(Stats::default()),
        options,
        async move {
            let _ = rx.await;
        },
    ));
    Server { addr, _stop: tx }
}

/// A raw TLS client connection trusting `ca_pem`, optionally with a client certificate.
async fn connect(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        ok(roots.add(ok(c)));
    }
    let b = ok(
        rustls::ClientConfig::builder_with_provider(spacesync_http::tls::provider())
            .with_safe_default_protocol_versions(),
    )
    .with_root_certificates(roots);
    let cfg = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(ok)
                    .collect();
            ok(b.with_client_auth_cert(certs, ok(PrivateKeyDer::from_pem_slice(key.as_bytes()))))
        }
    };
    let tcp = TcpStream::connect(addr).await?;
    let name = ok(ServerName::try_from("127.0.0.1"));
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// The server's end-entity certificate on `c`.
fn served_cert(c: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    c.get_ref()
        .1
        .peer_certificates()
        .and_then(|v| v.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default()
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    ok(CertificateDer::from_pem_slice(pem.as_bytes()))
        .as_ref()
        .to_vec()
}

/// One keep-alive request on `c`; returns the answer's body.
async fn request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    c: &mut S,
    extra: &str,
) -> std::io::Result<String> {
    c.write_all(format!("GET /who HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
        .await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = c.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "closed after {:?}",
                String::from_utf8_lossy(&got)
            )));
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return Ok(body[..len].to_string());
            }
        }
    }
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_to_new_connections_and_keeps_open_ones() {
    let dir = ok(tempfile::tempdir());
    let ca = Ca::new("test CA");
    let (cert_a, key_a) = ca.issue(&["127.0.0.1", "localhost"]);
    let files = TlsFiles {
        cert: write(dir.path(), "hub.crt", &cert_a),
        key: write(dir.path(), "hub.key", &key_a),
        client_ca: None,
    };
    let tls = Arc::new(ok(ServerTls::load(files.clone())));
    let s = start(Some(tls.clone()), &[]).await;

    let mut old = ok(connect(s.addr, &ca.pem(), None).await);
    assert_eq!(served_cert(&old), der_of(&cert_a));
    let body = ok(request(&mut old, "").await);
    assert_eq!(body, "client=127.0.0.1 proto=https host=- cert=false");

    // New certificate and key on disk, then the reload (what SIGHUP does).
    let (cert_b, key_b) = ca.issue(&["127.0.0.1", "localhost"]);
    write(dir.path(), "hub.crt", &cert_b);
    write(dir.path(), "hub.key", &key_b);
    ok(tls.reload());
    let mut new = ok(connect(s.addr, &ca.pem(), None).await);
    assert_eq!(
        served_cert(&new),
        der_of(&cert_b),
        "new connections get the new certificate"
    );
    ok(request(&mut new, "").await);
    // The connection opened before the reload goes on serving requests.
    let again = ok(request(&mut old, "").await);
    assert!(again.starts_with("client=127.0.0.1"), "{again}");
    assert_eq!(served_cert(&old), der_of(&cert_a));

    // A reload that fails keeps the certificate in force and names the file.
    write(dir.path(), "hub.key", "not a key\n");
    let e = tls
        .reload()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("hub.key") && e.contains("private key"), "{e}");
    let third = ok(connect(s.addr, &ca.pem(), None).await);
    assert_eq!(served_cert(&third), der_of(&cert_b));
    // And a key that is not the certificate's own is refused too.
    let (_, other_key) = ca.issue(&["127.0.0.1"]);
    write(dir.path(), "hub.key", &other_key);
    let e = tls
        .reload()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("the key must be the certificate's own"), "{e}");
}

#[tokio::test]
async fn a_client_of_another_ca_is_refused_and_a_silent_one_is_closed_in_time() {
    let dir = ok(tempfile::tempdir());
    let ca = Ca::new("test CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let tls = Arc::new(ok(ServerTls::load(TlsFiles {
        cert: write(dir.path(), "c.pem", &cert),
        key: write(dir.path(), "k.pem", &key),
        client_ca: None,
    })));
    let s = start(Some(tls), &[]).await;
    let other = Ca::new("another CA");
    let e = connect(s.addr, &other.pem(), None)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("UnknownIssuer"), "{e}");

    // No ClientHello at all: closed within the header-read timeout (1 s), not held.
    let mut silent = ok(TcpStream::connect(s.addr).await);
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "a silent TLS client must be closed: {r:?}"
    );
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_of_the_client_ca() {
    let dir = ok(tempfile::tempdir());
    let ca = Ca::new("server CA");
    let agents = Ca::new("agents CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let tls = Arc::new(ok(ServerTls::load(TlsFiles {
        cert: write(dir.path(), "c.pem", &cert),
        key: write(dir.path(), "k.pem", &key),
        client_ca: Some(write(dir.path(), "agents.pem", &agents.pem())),
    })));
    let s = start(Some(tls), &[]).await;

    // Without a certificate: TLS 1.3 finishes the client's side, so the refusal shows
    // at the first request.
    let refused = match connect(s.addr, &ca.pem(), None).await {
        Err(e) => e.to_string(),
        Ok(mut c) => request(&mut c, "")
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "answered".into()),
    };
    assert_ne!(refused, "answered");
    // With a certificate of another CA: refused as well.
    let stranger = Ca::new("stranger").issue(&["gd-rrt"]);
    let refused = match connect(s.addr, &ca.pem(), Some((&stranger.0, &stranger.1))).await {
        Err(e) => e.to_string(),
        Ok(mut c) => request(&mut c, "")
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "answered".into()),
    };
    assert_ne!(refused, "answered");
    // With one of the agents' CA: served, and the router sees the certificate.
    let agent = agents.issue(&["gd-rrt"]);
    let mut c = ok(connect(s.addr, &ca.pem(), Some((&agent.0, &agent.1))).await);
    let body = ok(request(&mut c, "").await);
    assert!(body.ends_with("cert=true"), "{body}");
}

#[tokio::test]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    let forged = "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n";
    // Nobody trusted: the headers are dropped; the client is the TCP peer.
    let s = start(None, &[]).await;
    let mut c = ok(TcpStream::connect(s.addr).await);
    let body = ok(request(&mut c, forged).await);
    assert_eq!(body, "client=127.0.0.1 proto=- host=- cert=false");

    // 127.0.0.1 trusted as a proxy: the last X-Forwarded-For address is the client, and
    // the proxy's scheme and host stand.
    let s = start(
        None,
        &["127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"))],
    )
    .await;
    let mut c = ok(TcpStream::connect(s.addr).await);
    let body = ok(request(
        &mut c,
        "X-Forwarded-For: 198.51.100.1, 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: hub.example\r\n",
    )
    .await);
    assert_eq!(
        body,
        "client=203.0.113.9 proto=https host=hub.example cert=false"
    );
    // 127.0.0.2 is not the trusted proxy.
    let mut c = ok({
        let sock = ok(tokio::net::TcpSocket::new_v4());
        ok(sock.bind(SocketAddr::from(([127, 0, 0, 2], 0))));
        sock.connect(s.addr).await
    });
    let body = ok(request(&mut c, forged).await);
    assert_eq!(body, "client=127.0.0.2 proto=- host=- cert=false");
}
