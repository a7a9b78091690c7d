//! TLS for both doors, with rustls (the `ring` provider): one certificate
//! chain and private key, read from PEM files (`tls_cert`, `tls_key`), serve
//! gRPC (through tonic's own TLS) and HTTP (through [`TlsListener`], which
//! hands axum connections whose handshake is done).
//!
//! A handshake gets [`HANDSHAKE_TIMEOUT`] and at most
//! [`MAX_HANDSHAKES`] run at once: a client that opens connections and
//! says nothing holds neither a task forever nor the accept loop (handshakes
//! run beside it, not in it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish the TLS handshake on the HTTP door.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most HTTP handshakes in progress at once; connections past it are closed.
pub const MAX_HANDSHAKES: usize = 1024;

/// Why TLS cannot be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// One of the two files is configured without the other.
    #[error("TLS needs both a certificate and its key: {given} is set but {missing} is not (config `tls_cert` and `tls_key`, or --tls-cert and --tls-key)")]
    Incomplete {
        /// The setting given.
        given: &'static str,
        /// The setting missing.
        missing: &'static str,
    },
    /// A file cannot be read.
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or a broken one.
    #[error("{} holds no usable PEM certificate ({reason})", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// The key file holds no PEM private key, or a broken one.
    #[error("{} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// rustls refused the pair (a key that does not match the certificate,
    /// an algorithm it does not support).
    #[error("the TLS certificate {} and key {} cannot be used together: {reason}", cert.display(), key.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
}

/// A certificate chain and its key, loaded and checked, ready for both
/// doors.
#[derive(Clone)]
pub struct TlsIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    http: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity(..)")
    }
}

impl TlsIdentity {
    /// Loads the configured files: `None` when neither is set, an error
    /// when only one is or when they cannot be used.
    pub fn from_config(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<TlsIdentity>, TlsError> {
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::Incomplete { given: "tls_cert", missing: "tls_key" }),
            (None, Some(_)) => Err(TlsError::Incomplete { given: "tls_key", missing: "tls_cert" }),
            (Some(cert), Some(key)) => TlsIdentity::load(cert, key).map(Some),
        }
    }

    /// Loads a PEM certificate chain and private key.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
        };
        let cert_pem = read("certificate", cert)?;
        let key_pem = read("key", key)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Certificate { path: cert.to_path_buf(), reason: e.to_string() })?;
        if chain.is_empty() {
            return Err(TlsError::Certificate {
                path: cert.to_path_buf(),
                reason: "no `BEGIN CERTIFICATE` section".into(),
            });
        }
        let private = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError::Key { path: key.to_path_buf(), reason: e.to_string() })?;
        let pair = |e: rustls::Error| TlsError::Pair {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason: e.to_string(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut http = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(pair)?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(pair)?;
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsIdentity { cert_pem, key_pem, http: Arc::new(http) })
    }

    /// The gRPC door's TLS settings (tonic's).
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// The HTTP door's TLS settings.
    pub fn http(&self) -> Arc<rustls::ServerConfig> {
        self.http.clone()
    }
}

/// A listener whose connections have finished their TLS handshake, for
/// `axum::serve`. Handshakes run on tasks of their own, each within
/// [`HANDSHAKE_TIMEOUT`], at most [`MAX_HANDSHAKES`] at once; a failed one
/// is logged and its connection closed.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting TLS connections on `listener`.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let acceptor = tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, as
                        // axum's own listener does, rather than spin.
                        tracing::warn!(door = "http", error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(
                        door = "http",
                        peer = %addr,
                        "{MAX_HANDSHAKES} TLS handshakes in progress; closed the connection"
                    );
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, addr)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(door = "http", peer = %addr, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::info!(
                            door = "http",
                            peer = %addr,
                            "TLS handshake not done within {} s; closed",
                            HANDSHAKE_TIMEOUT.as_secs()
                        ),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local, acceptor })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_configuration_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = TlsIdentity::from_config(Some(Path::new("c.pem")), None).unwrap_err();
        assert!(err.to_string().contains("tls_key is not"), "{err}");
        assert!(TlsIdentity::from_config(None, None).unwrap().is_none());
        let missing = dir.path().join("missing.pem");
        let err = TlsIdentity::load(&missing, &missing).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let err = TlsIdentity::load(&junk, &junk).unwrap_err();
        assert!(matches!(err, TlsError::Certificate { .. }) && err.to_string().contains("junk.pem"), "{err}");
    }

    #[test]
    fn a_generated_pair_loads_and_a_certificate_is_not_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        TlsIdentity::load(&cert, &key).unwrap();
        let err = TlsIdentity::load(&cert, &cert).unwrap_err();
        assert!(matches!(err, TlsError::Key { .. }) && err.to_string().contains("c.pem"), "{err}");
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&key, other.signing_key.serialize_pem()).unwrap();
        let err = TlsIdentity::load(&cert, &key).unwrap_err();
        assert!(matches!(err, TlsError::Pair { .. }), "a key of another certificate: {err}");
    }
}
