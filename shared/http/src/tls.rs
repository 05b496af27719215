//! TLS for [`crate::serve_with`]: the server's certificate and key read from PEM files,
//! optionally the CA that client certificates must chain to (mutual TLS), and reloading
//! them while serving.
//!
//! [`ServerTls`] holds the rustls configuration in force. Every accepted connection takes
//! the one current at its handshake, so [`ServerTls::reload`] (the hub calls it on
//! SIGHUP) changes what new connections see and never touches connections already open:
//! requests in flight finish on the certificate they started with. A reload that fails
//! (a file missing, a key that does not match its certificate) keeps the old
//! configuration and says why; the listener never ends up without a certificate.
//!
//! Only TLS 1.2 and 1.3 with rustls's default (ring) cipher suites; HTTP/1.1 by ALPN.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Where the server's TLS material lives (`[tls]` in hub.toml).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, PEM: the server's certificate first, then intermediates.
    pub cert: PathBuf,
    /// The private key of the certificate, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, every client must present a certificate that chains to a CA in this
    /// PEM file (mutual TLS) before a request is read: a second factor beside signed
    /// requests, not a replacement for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// Why TLS material could not be loaded; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{what} {path}: {error}; check the path (and that the service user may read it)")]
    Read {
        /// Which file (`certificate`, `private key`, `client CA`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A file holds no usable PEM block of the kind needed.
    #[error("{what} {path}: {why}")]
    Pem {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        why: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("certificate {cert} with key {key}: {error}; the key must be the certificate's own")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        error: rustls::Error,
    },
    /// The client CA file cannot verify client certificates.
    #[error("client CA {path}: {why}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// rustls's reason.
        why: String,
    },
}

/// Reads every certificate of a PEM file (at least one).
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            why: format!("not a PEM certificate file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_path_buf(),
            why: "holds no \"-----BEGIN CERTIFICATE-----\" block; give the PEM file of the certificate".into(),
        });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key";
    let pem = fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        why: format!(
            "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it ({e}); give the key the certificate was issued for"
        ),
    })
}

/// A root store from a PEM file of CA certificates.
pub fn read_roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(what, path)? {
        roots.add(c).map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            why: format!("a certificate in it cannot be a trust anchor ({e})"),
        })?;
    }
    Ok(roots)
}

/// The rustls provider every TLS configuration of the project uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a server configuration from `files`.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = read_certs("certificate", &files.cert)?;
    let key = read_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config {
            cert: files.cert.clone(),
            key: files.key.clone(),
            error,
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = read_roots("client CA", ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    why: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|error| TlsError::Config {
            cert: files.cert.clone(),
            key: files.key.clone(),
            error,
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The TLS configuration a listener serves with, replaceable while serving.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads `files`; fails when any is missing or wrong.
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let cfg = server_config(&files)?;
        Ok(ServerTls {
            files,
            current: RwLock::new(Arc::new(cfg)),
        })
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again; on success new connections use them. On failure the
    /// configuration in force stays, and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let cfg = Arc::new(server_config(&self.files)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = cfg;
        Ok(())
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
