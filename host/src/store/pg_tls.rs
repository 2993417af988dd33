//! PostgreSQL over TLS, with libpq's `sslmode` meanings (RDS in the seed's production
//! scenarios): `require` encrypts (and checks the chain too when `sslrootcert` is given, as
//! libpq does), `verify-ca` checks the server's certificate chains to the CA, `verify-full`
//! also that it names the host. `disable`, `allow` and `prefer` connect in plain text (hfwasm
//! does not try TLS unless told to require it). rustls on ring, as the AWS clients use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

/// How a connection is secured (libpq's `sslmode`, `prefer` and `allow` served as `disable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text.
    Disable,
    /// Encrypted; the certificate is checked only when a CA file is given.
    Require,
    /// Encrypted; the certificate must chain to the CA.
    VerifyCa,
    /// Encrypted; the certificate must chain to the CA and name the host.
    VerifyFull,
}

impl SslMode {
    /// libpq's spelling; None for an unknown one.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" | "allow" | "prefer" => Self::Disable,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// The TLS connector for `mode`, trusting `root_cert` (a PEM file of CA certificates) or,
/// for verify-* without one, the system's CA bundle. None for plain text. The error names
/// what is wrong with the CA file.
pub fn connector(mode: SslMode, root_cert: Option<&Path>) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, String> {
    if mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let roots = match (mode, root_cert) {
        (_, Some(file)) => Some(load_roots(file)?),
        (SslMode::Require, None) => None,
        (_, None) => {
            let bundle =
                crate::awsconn::ca_bundle().ok_or("no CA file: set `sslrootcert` (for RDS, the region's certificate bundle from AWS)")?;
            Some(load_roots(&bundle)?)
        }
    };
    let config = match (mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => builder.with_root_certificates(roots).with_no_client_auth(),
        (_, Some(roots)) => {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        (_, None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

/// The CA certificates of PEM file `file`.
fn load_roots(file: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: not a PEM certificate file: {e}", file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: a certificate cannot be used as a CA: {e}", file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", file.display()));
    }
    Ok(roots)
}

/// verify-ca (and require with a CA file): the chain is checked, the name is not (libpq's
/// meaning: a server reached by address, or a proxy's name, still passes).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(TlsError::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// require without a CA file: encrypted, the certificate not checked (libpq's meaning);
/// the handshake's signatures still are, so the session key is the server's.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The CA file setting as given (for messages): `sslrootcert`'s path.
pub fn describe(mode: SslMode, root_cert: Option<&PathBuf>) -> String {
    match root_cert {
        Some(f) => format!("sslmode {} with CA {}", mode.as_str(), f.display()),
        None => format!("sslmode {}", mode.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_libpq_spells_them() {
        assert_eq!(SslMode::parse("prefer"), Some(SslMode::Disable));
        assert_eq!(SslMode::parse("verify-full"), Some(SslMode::VerifyFull));
        assert_eq!(SslMode::parse("verify_full"), None);
        assert!(connector(SslMode::Disable, None).expect("plain").is_none());
        assert!(connector(SslMode::Require, None).expect("encrypt only").is_some());
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate").expect("write");
        let e = connector(SslMode::VerifyFull, Some(&bad)).err().expect("refused");
        assert!(e.contains("ca.pem"), "{e}");
    }
}
