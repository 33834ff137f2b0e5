//! `ssl:HOST:PORT` remotes: TLS with the private key, certificate and CA certificate that
//! ovn-nbctl takes as `--private-key`, `--certificate` and `--ca-cert`.
//!
//! rustls (with the ring provider) rather than OpenSSL: no system library to link or to match
//! at run time, so the static binary stays static; it speaks TLS 1.2 and 1.3 with the ECDHE
//! suites that OVS's default `--ssl-ciphers` (`HIGH:!aNULL:!MD5`) offers.

use std::{
    io::Write as _,
    net::TcpStream,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{
        CertificateDer, PrivateKeyDer, ServerName, UnixTime,
        pem::{self, PemObject as _},
    },
};

/// What went wrong with ssl; the caller names the remote.
#[derive(Debug, thiserror::Error)]
pub enum SslError {
    #[error("needs {missing} (PEM files, as ovn-nbctl and ovn-sbctl take them)")]
    Options { missing: String },
    #[error("{option} {}: {detail}", path.display())]
    File {
        option: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("TLS handshake failed: {reason}")]
    Handshake { reason: String },
}

impl SslError {
    /// A retry cannot fix the options or the files; a handshake may work once the server's
    /// certificate is renewed.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::Handshake { .. })
    }
}

/// The PKI files given on the command line (none are read until an ssl remote needs them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SslFiles {
    pub private_key: Option<PathBuf>,
    pub certificate: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
}

/// A client configuration, read from the files at start and again when they change: as OVS's
/// stream-ssl does, renewed certificates are picked up at the next connection, so a
/// long-running agent outlives a certificate rotation. A file that cannot be read then (e.g.
/// half-written) leaves the last good configuration in use, with a warning.
#[derive(Clone)]
pub struct SslConfig {
    files: SslFiles,
    loaded: Arc<Mutex<Loaded>>,
}

struct Loaded {
    stamps: Stamps,
    config: Arc<ClientConfig>,
}

/// The files' modification times, to tell when to read them again.
type Stamps = [Option<std::time::SystemTime>; 3];

impl std::fmt::Debug for SslConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SslConfig")
    }
}

/// Remotes compare by address and files.
impl PartialEq for SslConfig {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files
    }
}
impl Eq for SslConfig {}

impl SslConfig {
    /// The configuration for a new connection, read again if a file changed since.
    fn current(&self) -> Arc<ClientConfig> {
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stamps = self.files.stamps();
        if stamps != loaded.stamps {
            match self.files.client_config() {
                Ok(config) => {
                    tracing::info!("ssl: the PKI files changed; read them again");
                    *loaded = Loaded { stamps, config };
                }
                Err(e) => tracing::warn!("ssl: {e}; using the files as read before"),
            }
        }
        loaded.config.clone()
    }
}

impl SslFiles {
    /// Reads the key, certificate and CA certificate (and again when they change).
    pub fn load(&self) -> Result<SslConfig, SslError> {
        let stamps = self.stamps();
        let config = self.client_config()?;
        Ok(SslConfig {
            files: self.clone(),
            loaded: Arc::new(Mutex::new(Loaded { stamps, config })),
        })
    }

    fn stamps(&self) -> Stamps {
        [&self.private_key, &self.certificate, &self.ca_cert].map(|f| {
            f.as_ref()
                .and_then(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        })
    }

    fn client_config(&self) -> Result<Arc<ClientConfig>, SslError> {
        let missing: Vec<&str> = [
            ("--private-key", &self.private_key),
            ("--certificate", &self.certificate),
            ("--ca-cert", &self.ca_cert),
        ]
        .iter()
        .filter(|(_, f)| f.is_none())
        .map(|(o, _)| *o)
        .collect();
        let (Some(key), Some(cert), Some(ca)) =
            (&self.private_key, &self.certificate, &self.ca_cert)
        else {
            return Err(SslError::Options {
                missing: missing.join(", "),
            });
        };
        if ca.as_os_str() == "none" {
            // OVS takes `--ca-cert=none` as "trust any server" (stream-ssl.c warns that it is
            // a security risk); a read-only tool has no reason to.
            return Err(SslError::File {
                option: "--ca-cert",
                path: ca.clone(),
                detail: "detrace always checks the server's certificate: give the CA \
                         certificate that signed it"
                    .into(),
            });
        }
        let chain = read_certs("--certificate", cert)?;
        let key = read_key(key)?;
        let mut roots = RootCertStore::empty();
        for c in read_certs("--ca-cert", ca)? {
            roots.add(c).map_err(|e| SslError::File {
                option: "--ca-cert",
                path: ca.clone(),
                detail: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = CaOnlyVerifier {
            roots: Arc::new(roots),
            algs: provider.signature_verification_algorithms,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_client_auth_cert(chain, key)
            })
            .map_err(|e| SslError::File {
                option: "--private-key",
                path: self.private_key.clone().unwrap_or_default(),
                detail: format!("does not go with --certificate: {e}"),
            })?;
        Ok(Arc::new(config))
    }
}

fn read(option: &'static str, path: &Path) -> Result<Vec<u8>, SslError> {
    std::fs::read(path).map_err(|e| SslError::File {
        option,
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Every certificate of a PEM file; ovs-pki's files carry a text dump around the PEM block,
/// which the PEM reader skips.
fn read_certs(option: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SslError> {
    let bad = |detail: String| SslError::File {
        option,
        path: path.to_path_buf(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&read(option, path)?)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate (BEGIN CERTIFICATE) in it".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, SslError> {
    PrivateKeyDer::from_pem_slice(&read("--private-key", path)?).map_err(|e| SslError::File {
        option: "--private-key",
        path: path.to_path_buf(),
        detail: match e {
            pem::Error::NoItemsFound => "no PEM private key (BEGIN ... PRIVATE KEY) in it".into(),
            e => format!("bad PEM: {e}"),
        },
    })
}

/// Checks that the server's certificate chains to the CA certificate, and nothing about its
/// names. This is what OVS does (lib/stream-ssl.c, `do_ssl_init`: `SSL_VERIFY_PEER |
/// SSL_VERIFY_FAIL_IF_NO_PEER_CERT` against `--ca-cert`, and no host name check anywhere), and
/// it has to be: ovs-pki signs certificates whose only name is a CN like "ovnsb id:<uuid>"
/// (`ovs-pki req+sign ovnsb`), with no subjectAltName, so a host name check would reject every
/// OVS PKI deployment. The CA is the trust: a certificate it signed is the database, whatever
/// address it is reached at.
#[derive(Debug)]
struct CaOnlyVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for CaOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// One TLS session, shared by the connection's reader and writer halves (a TLS session cannot
/// be split like a socket). They never contend: the connection reads and writes in turn from
/// one thread.
pub type TlsSession = StreamOwned<ClientConnection, TcpStream>;
pub type TlsStream = Arc<Mutex<TlsSession>>;

/// Runs the handshake on a connected socket (bounded by its read timeout).
pub fn handshake(
    config: &SslConfig,
    host: &str,
    mut sock: TcpStream,
) -> Result<TlsStream, SslError> {
    // The name only feeds SNI (the verifier ignores it); an address sends none.
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
        .map(|n| n.to_owned())
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()));
    let mut conn = ClientConnection::new(config.current(), name).map_err(handshake_error)?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            return Err(tls_error(&e).unwrap_or_else(|| SslError::Handshake {
                reason: format!("{e} (the connection failed or timed out during the handshake)"),
            }));
        }
    }
    sock.flush().map_err(|e| SslError::Handshake {
        reason: e.to_string(),
    })?;
    Ok(Arc::new(Mutex::new(StreamOwned::new(conn, sock))))
}

/// Sends close_notify, without waiting for the server's (a best effort: the socket is closed
/// next whatever happens).
pub fn close(s: &mut TlsSession) {
    s.conn.send_close_notify();
    while s.conn.wants_write() {
        if s.conn.write_tls(&mut s.sock).is_err() {
            break;
        }
    }
}

/// The TLS error inside an I/O error, if that is what it is. With TLS 1.3 the server refuses
/// our certificate only after the client's side of the handshake is done, so the refusal
/// arrives on a later read: it is still a handshake failure, and says so.
pub fn tls_error(e: &std::io::Error) -> Option<SslError> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(handshake_error(tls.clone()))
}

/// Says which side refused and which option to look at.
fn handshake_error(e: rustls::Error) -> SslError {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let hint = match &e {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "; the server's certificate is not signed by --ca-cert"
        }
        E::InvalidCertificate(C::Expired | C::NotValidYet) => {
            "; the server's certificate is out of its validity period (renew it, or check the \
             clocks)"
        }
        E::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateRequired) => {
            "; the server refused our --certificate: it is not signed by a CA the server trusts \
             (its --ca-cert)"
        }
        E::AlertReceived(A::HandshakeFailure | A::ProtocolVersion) | E::PeerIncompatible(_) => {
            "; no TLS version or cipher in common with the server (its --ssl-protocols, \
             --ssl-ciphers)"
        }
        _ => "",
    };
    SslError::Handshake {
        reason: format!("{e}{hint}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use crate::ovsdb::{Remote, SslFiles};

    /// Missing options and unreadable files are found when the remote is parsed, before any
    /// connection, and say what to give.
    #[test]
    fn options_checked_at_parse() {
        let err = Remote::parse("ssl:1.2.3.4:6642").unwrap_err();
        assert!(err.is_fatal());
        assert_eq!(
            err.to_string(),
            "ssl:1.2.3.4:6642: needs --private-key, --certificate, --ca-cert (PEM files, as \
             ovn-nbctl and ovn-sbctl take them)"
        );
        let mut files = SslFiles {
            private_key: Some("/nonexistent/key.pem".into()),
            ..Default::default()
        };
        let err = Remote::parse_list_with("tcp:1.2.3.4:6642,ssl:1.2.3.4:6642", &files);
        assert_eq!(
            err.unwrap_err().to_string(),
            "ssl:1.2.3.4:6642: needs --certificate, --ca-cert (PEM files, as ovn-nbctl and \
             ovn-sbctl take them)"
        );
        files.certificate = Some("/nonexistent/cert.pem".into());
        files.ca_cert = Some("/nonexistent/ca.pem".into());
        let err = Remote::parse_with("ssl:h:1", &files).unwrap_err();
        assert!(err.is_fatal());
        assert_eq!(
            err.to_string(),
            "ssl:h:1: --certificate /nonexistent/cert.pem: No such file or directory (os error 2)"
        );
        files.ca_cert = Some("none".into());
        let err = Remote::parse_with("ssl:h:1", &files)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--ca-cert none: detrace always checks"),
            "{err}"
        );
        // No tls session is needed to parse an address-only remote list.
        assert_eq!(
            Remote::parse_list("tcp:1.2.3.4:6642").unwrap(),
            [Remote::Tcp("1.2.3.4:6642".into())]
        );
    }
}
