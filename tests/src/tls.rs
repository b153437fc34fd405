//! A throwaway certificate authority and a server certificate for the test hosts, so that
//! `curl https://www.googleapis.com/` really does TLS against the world's server.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TestCa {
    /// PEM of the CA certificate, for `curl --cacert`.
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// A CA and one server certificate valid for the IP address `ip`.
    pub fn for_ip(ip: std::net::IpAddr) -> anyhow::Result<Self> {
        Self::new(&[&ip.to_string()])
    }

    /// A CA and one server certificate valid for `names` (an IP address becomes an IP SAN).
    pub fn new(names: &[&str]) -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "egress-agent test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let leaf = CertificateParams::new(names)?.signed_by(&key, &ca)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        Ok(Self {
            ca_pem: ca.pem(),
            server_config: Arc::new(server_config),
        })
    }
}
