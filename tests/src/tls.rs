//! A certificate authority made at test time, and a server certificate it signed for this
//! machine (`localhost`, `127.0.0.1`, `::1`), so instances can federate over real TLS.

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::PathBuf;
use velour_core::settings::PeerSettings;

/// A fresh CA and a loopback server certificate, with the CA written to a file for
/// `VELOUR_PEER_CA_FILE`.
pub struct TestCa {
    /// The CA's certificate, PEM.
    pub ca_pem: String,
    /// The server's certificate, PEM, signed by the CA.
    pub cert_pem: String,
    /// The server certificate's private key, PEM.
    pub key_pem: String,
    /// Holds `ca.pem`.
    dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "Velour test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let names = ["localhost", "127.0.0.1", "::1"].map(str::to_owned);
        let mut server_params = CertificateParams::new(names.to_vec())?;
        server_params.distinguished_name.push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        let dir = tempfile::tempdir()?;
        let ca_pem = ca_cert.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem)?;
        Ok(Self { ca_pem, cert_pem: server_cert.pem(), key_pem: server_key.serialize_pem(), dir })
    }

    /// The CA's file, as `VELOUR_PEER_CA_FILE` names it.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Peer settings that trust this CA and allow peers on loopback. Whether `http://` is
    /// refused follows the instance's federation settings.
    pub fn peer_settings(&self) -> PeerSettings {
        PeerSettings { ca_file: Some(self.ca_file()), ..PeerSettings::for_loopback_peers() }
    }

    /// A client that trusts this CA alone, for tests talking to a TLS instance.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?;
        reqwest::Client::builder().tls_certs_only([ca]).build().context("TLS test client")
    }
}
