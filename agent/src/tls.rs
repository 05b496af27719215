//! TLS to the hub: whom the agent trusts, what it shows, and what it says when the hub's
//! certificate does not verify.
//!
//! The agent trusts the system's roots (`/etc/ssl/certs`, or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR`) plus the CA certificates in `ca_file` from agent.toml
//! (`init --ca-file`), so a government or ministry CA works without touching the
//! system's store. With `client_cert` and `client_key` it presents a client certificate
//! (for a hub that asks for one: mutual TLS, a second factor beside the signed
//! requests). rustls with ring, as everywhere in the project.
//!
//! A hub whose certificate does not verify is not reached: [`certificate_problem`] finds
//! rustls's reason in the error chain, and the pusher's `last_error` (shown by `status`)
//! names it (`UnknownIssuer`, `NotValidForName`, `Expired` …) with what to do.

use std::path::PathBuf;

use rustls::RootCertStore;
use spacesync_http::tls as edge_tls;

use crate::config::Config;

/// Why the agent's TLS client cannot be set up; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `ca_file`, `client_cert` or `client_key` is unreadable or not PEM.
    #[error("{0} (agent.toml)")]
    File(#[from] edge_tls::TlsError),
    /// The client certificate and key do not go together.
    #[error(
        "client_cert {cert} with client_key {key} (agent.toml): {error}; the key must be the certificate's own"
    )]
    ClientCert {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        error: rustls::Error,
    },
    /// No root certificate at all: nothing could verify an https hub.
    #[error(
        "no trusted CA certificates: the system's store is empty or unreadable and agent.toml names no ca_file; install the ca-certificates package or give the hub's CA with `ca_file`"
    )]
    NoRoots,
    /// reqwest refused the configuration.
    #[error("cannot create the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The roots the agent trusts: the system's, plus `ca_file`'s.
pub fn roots(cfg: &Config) -> Result<RootCertStore, TlsError> {
    roots_with(cfg.ca_file.as_ref())
}

/// The system's roots plus `ca_file`'s.
fn roots_with(ca_file: Option<&PathBuf>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "A system CA certificate could not be read.");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = ca_file {
        for c in edge_tls::read_certs("ca_file", ca)? {
            roots.add(c).map_err(|e| {
                TlsError::File(edge_tls::TlsError::Pem {
                    what: "ca_file",
                    path: ca.clone(),
                    why: format!("a certificate in it cannot be a trust anchor ({e})"),
                })
            })?;
        }
    }
    Ok(roots)
}

/// The rustls client configuration for talking to the hub.
pub fn client_config(cfg: &Config) -> Result<rustls::ClientConfig, TlsError> {
    client_config_for(
        &cfg.hub,
        cfg.ca_file.as_ref(),
        cfg.client_cert.as_ref().zip(cfg.client_key.as_ref()),
    )
}

/// An HTTP client to the hub at `hub` with the agent's TLS settings (`ca_file`, client
/// certificate) and no redirects: what the pusher and enrolment use.
pub fn http_client(
    hub: &str,
    ca_file: Option<&PathBuf>,
    client: Option<(&PathBuf, &PathBuf)>,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, TlsError> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
        .user_agent(concat!("spacesync-agent/", env!("CARGO_PKG_VERSION")))
        // The hub is configured, not discovered: a 3xx is an error, never followed.
        .redirect(reqwest::redirect::Policy::none())
        // The hub closes a connection idle past its header-read timeout.
        .pool_idle_timeout(spacesync_http::CLIENT_POOL_IDLE)
        .use_preconfigured_tls(client_config_for(hub, ca_file, client)?)
        .build()?)
}

/// [`client_config`] from its parts (before agent.toml exists: enrolment).
pub fn client_config_for(
    hub: &str,
    ca_file: Option<&PathBuf>,
    client: Option<(&PathBuf, &PathBuf)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = roots_with(ca_file)?;
    if roots.is_empty() && hub.starts_with("https://") {
        return Err(TlsError::NoRoots);
    }
    let builder = rustls::ClientConfig::builder_with_provider(edge_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| {
            TlsError::File(edge_tls::TlsError::Pem {
                what: "TLS",
                path: PathBuf::new(),
                why: error.to_string(),
            })
        })?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            let certs = edge_tls::read_certs("client_cert", cert)?;
            let k = edge_tls::read_key(key)?;
            builder
                .with_client_auth_cert(certs, k)
                .map_err(|error| TlsError::ClientCert {
                    cert: cert.clone(),
                    key: key.clone(),
                    error,
                })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// rustls's reason when `e` (or an error it was caused by) is a failed TLS handshake.
/// The reason sits in an `io::Error` (tokio-rustls), possibly inside another `io::Error`
/// (the HTTPS connector's); an `io::Error` does not give its payload as its `source()`,
/// so payloads are looked into.
pub fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = inside(err) {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// A rustls error that `err` is, or that `io::Error`s around it hold.
fn inside(err: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    if let Some(r) = err.downcast_ref::<rustls::Error>() {
        return Some(r.clone());
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        return io.get_ref().and_then(|i| inside(i));
    }
    None
}

/// The sentence `status` shows for a TLS failure reaching `hub`: rustls's reason, then
/// what to do about it.
pub fn describe(hub: &str, problem: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    let fix = match problem {
        Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | Error::InvalidCertificate(CertificateError::BadSignature) => {
            "the hub's certificate is not issued by a CA this agent trusts: set ca_file in agent.toml to a file holding that CA's certificate (PEM), readable by the agent's user, and restart the agent (a new agent: `init --ca-file FILE`)"
        }
        Error::InvalidCertificate(CertificateError::NotValidForName)
        | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "the hub's certificate does not name the host in `hub` (agent.toml): use the name the certificate was issued for, or have the hub's certificate reissued"
        }
        Error::InvalidCertificate(CertificateError::Expired)
        | Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        | Error::InvalidCertificate(CertificateError::NotValidYet)
        | Error::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => {
            "the hub's certificate is outside its validity period: renew it on the hub, and check both machines' clocks (NTP)"
        }
        Error::InvalidCertificate(CertificateError::Revoked) => {
            "the hub's certificate is revoked: the hub must install a new one"
        }
        Error::AlertReceived(AlertDescription::CertificateRequired)
        | Error::AlertReceived(AlertDescription::HandshakeFailure) => {
            "the hub asks for a client certificate this agent did not present or the hub does not accept: set client_cert and client_key in agent.toml to a certificate of the hub's client CA"
        }
        Error::AlertReceived(AlertDescription::UnknownCA)
        | Error::AlertReceived(AlertDescription::BadCertificate) => {
            "the hub refused this agent's client certificate: it must be issued by the hub's client CA (client_cert / client_key in agent.toml)"
        }
        _ => "check the hub's TLS setup and this agent's ca_file / client_cert in agent.toml",
    };
    format!("cannot verify the TLS connection to the hub at {hub}: {problem}; {fix}")
}
