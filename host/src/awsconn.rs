//! How every AWS SDK client of the host connects: the system CA bundle as its TLS trust (read
//! once, not a directory scan per call), rustls on ring, an optional proxy, and no TLS at
//! all for an `http://` endpoint (an emulator or a plain-HTTP VPC endpoint). Shared by the
//! EC2 capability and the DynamoDB store so both reach AWS the same way.

use std::path::PathBuf;

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{TlsContext, TrustStore};

/// Where Linux distributions keep the CA bundle (`SSL_CERT_FILE` wins).
pub const CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
];

/// The CA bundle file in use: `SSL_CERT_FILE`, else the first of [`CA_BUNDLES`] present.
pub fn ca_bundle() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .or_else(|| CA_BUNDLES.iter().map(PathBuf::from).find(|p| p.is_file()))
}

/// TLS trust: the CA bundle file if one exists, else the platform's native roots.
pub fn tls_context() -> Result<TlsContext, String> {
    let store = match ca_bundle().and_then(|p| std::fs::read(&p).ok()) {
        Some(pem) => TrustStore::empty().with_native_roots(false).with_pem_certificate(pem),
        None => TrustStore::default(),
    };
    TlsContext::builder()
        .with_trust_store(store)
        .build()
        .map_err(|e| format!("TLS setup: {e}"))
}

/// The SDK HTTP client for `endpoint` (None = AWS's own, over TLS) through `proxy` (a URL).
pub fn http_client(endpoint: Option<&str>, proxy: Option<&str>) -> Result<aws_sdk_ec2::config::SharedHttpClient, String> {
    let proxy = match proxy {
        Some(url) => Some(ProxyConfig::all(url).map_err(|e| format!("proxy {url}: {e}"))?),
        None => None,
    };
    let plain_http = endpoint.is_some_and(|u| u.starts_with("http://"));
    let tls = if plain_http { None } else { Some(tls_context()?) };
    Ok(aws_smithy_http_client::Builder::new().build_with_connector_fn(move |settings, _| {
        let mut b = aws_smithy_http_client::Connector::builder();
        if let Some(s) = settings {
            b = b.connector_settings(s.clone());
        }
        match &tls {
            None => {
                if let Some(p) = &proxy {
                    b = b.proxy_config(p.clone());
                }
                b.build_http()
            }
            Some(ctx) => {
                let mut b = b
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .tls_context(ctx.clone());
                if let Some(p) = &proxy {
                    b = b.proxy_config(p.clone());
                }
                b.build()
            }
        }
    }))
}

/// The innermost cause of an SDK error chain: the words that say what went wrong (the
/// outer ones say "dispatch failure" and the like).
pub fn root_cause(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        last = inner.to_string();
        src = inner.source();
    }
    last
}
