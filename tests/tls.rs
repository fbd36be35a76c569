//! Federation over real TLS, `FEDERATION_REQUIRE_HTTPS`, and the guard that keeps peer
//! requests off internal addresses. The certificate authority is made at test time.

use crate::{H264_AAC, find_video};
use anyhow::{Context, ensure};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use velour_core::settings::{FederationSettings, PeerSettings};
use velour_core::{Permissions, StorageType};
use velour_db::locations::NewLocation;
use velour_tests::tls::TestCa;
use velour_tests::{Instance, expect_json, make_video};

const NAME: &str = "Over TLS (2021).mp4";

/// Posts `body` with the admin key and returns the answer's status and JSON.
async fn post(
    instance: &Instance,
    path: &str,
    body: &Value,
) -> anyhow::Result<(StatusCode, Value)> {
    let response = instance.admin(Method::POST, path).json(body).send().await?;
    let status = response.status();
    Ok((status, response.json().await?))
}

fn velour_location(url: &str) -> Value {
    json!({
        "name": format!("peer at {url}"),
        "storage_type": "velour",
        "configuration": { "remote_instance_url": url, "api_key": "some-key" },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_is_scanned_and_streamed_over_tls() -> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    make_video(&library.path().join(NAME), H264_AAC, 1)?;
    let original = std::fs::read(library.path().join(NAME))?;
    ensure!(original.len() > 300, "the test video is too small");

    // Both require HTTPS (the default); A serves TLS, B trusts A's CA by setting.
    let ca = TestCa::new()?;
    let federation = FederationSettings::default();
    let a = Instance::start_federating(
        "tls A",
        PeerSettings::for_loopback_peers(),
        federation.clone(),
        Some(&ca),
    )
    .await?;
    let b = Instance::start_federating("tls B", ca.peer_settings(), federation, None).await?;
    ensure!(a.base.scheme() == "https", "A does not serve TLS: {}", a.base);

    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;
    let perms = Permissions { can_read: true, can_stream: true, can_metadata: true };
    let key_for_b = a.issue_key("instance B", perms).await?;
    let peer = b.add_peer_location("A", &a, &key_for_b).await?;
    b.scan(peer).await?;

    // A range of A's video, streamed by B's gateway and stream service from A over TLS.
    let id = find_video(&b.all_works().await?, NAME)?["id"].as_i64().context("id")?;
    let path = format!("/api/v1/videos/{id}/stream");
    let response =
        b.admin(Method::GET, &path).header(header::RANGE, "bytes=100-299").send().await?;
    ensure!(response.status() == StatusCode::PARTIAL_CONTENT, "status {}", response.status());
    let body = response.bytes().await?;
    ensure!(body.as_ref() == &original[100..300], "B relayed other bytes than A's");

    // The same peer at an http:// URL is refused, as a location and as a connection.
    let mut plain = a.base.clone();
    plain.set_scheme("http").map_err(|()| anyhow::anyhow!("cannot set the scheme"))?;
    let location = velour_location(plain.as_str());
    let refused = post(&b, "/api/v1/admin/storage_locations", &location).await?;
    ensure!(refused.0 == StatusCode::BAD_REQUEST, "location: {refused:?}");
    ensure!(refused.1["code"] == "https-required", "location: {refused:?}");
    let connection = json!({ "remote_instance_url": plain.as_str() });
    let refused = post(&b, "/api/v1/admin/federation_connections", &connection).await?;
    ensure!(refused.0 == StatusCode::BAD_REQUEST, "connection: {refused:?}");
    ensure!(refused.1["code"] == "https-required", "connection: {refused:?}");

    // Over https:// both are taken.
    let created = post(
        &b,
        "/api/v1/admin/federation_connections",
        &json!({
            "remote_instance_url": a.base.as_str(),
        }),
    )
    .await?;
    ensure!(created.0 == StatusCode::CREATED, "connection over https: {created:?}");

    // An instance that does not trust A's CA cannot read A: the system's roots are not
    // enough, and nothing falls back to trusting any certificate.
    let loopback = PeerSettings::for_loopback_peers();
    let c =
        Instance::start_federating("tls C", loopback, FederationSettings::default(), None).await?;
    let peer = c.add_peer_location("A", &a, &key_for_b).await?;
    let err = c.scan(peer).await.err().context("C scanned A without trusting its CA")?;
    ensure!(err.to_string().contains("could not reach the peer"), "{err}");

    a.stop().await?;
    b.stop().await?;
    c.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn internal_addresses_are_refused_unless_allowed() -> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    make_video(&library.path().join(NAME), H264_AAC, 1)?;
    let a = Instance::start("guard A").await?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;
    let perms = Permissions { can_read: true, can_stream: true, can_metadata: false };
    let key_for_b = a.issue_key("instance B", perms).await?;

    // B allows no internal network: a location naming A, on loopback, by address or by
    // name, is refused when it is added, as are other internal addresses.
    let guarded = PeerSettings { require_https: false, ..PeerSettings::default() };
    let b = Instance::start_with_peer("guard B", guarded).await?;
    let mut by_name = a.base.clone();
    by_name.set_host(Some("localhost"))?;
    let internal =
        [a.base.as_str(), by_name.as_str(), "http://10.0.0.5/", "http://[64:ff9b::a9fe:a9fe]/"];
    for url in internal {
        let mut location = velour_location(url);
        location["configuration"]["api_key"] = json!(key_for_b);
        let created = b.admin(Method::POST, "/api/v1/admin/storage_locations").json(&location);
        let refused = expect_json(created.send().await?, StatusCode::BAD_REQUEST).await?;
        ensure!(refused["code"] == "internal-address", "{url}: {refused}");
        let message = refused["error"].as_str().unwrap_or_default();
        ensure!(message.contains("VELOUR_PEER_ALLOWED_NETWORKS"), "{url}: {refused}");
    }
    // A name that does not resolve from the gateway is left to the connect-time check.
    let unresolved = velour_location("http://velour-peer.invalid/");
    let created = b.admin(Method::POST, "/api/v1/admin/storage_locations").json(&unresolved);
    let created = expect_json(created.send().await?, StatusCode::CREATED).await?;
    // Changing a location to an internal address is refused the same way.
    let path = format!("/api/v1/admin/storage_locations/{}", created["id"]);
    let moved = json!({ "configuration": { "remote_instance_url": by_name.as_str() } });
    let answer = b.admin(Method::PATCH, &path).json(&moved).send().await?;
    let refused = expect_json(answer, StatusCode::BAD_REQUEST).await?;
    ensure!(refused["code"] == "internal-address", "{refused}");

    // A name may resolve elsewhere once it is stored: the worker checks every address
    // it connects to, whatever was checked before.
    for url in [a.base.as_str(), by_name.as_str()] {
        let new = NewLocation {
            name: url,
            storage_type: StorageType::Velour,
            configuration: json!({ "remote_instance_url": url }),
            secrets: json!({ "api_key": key_for_b }),
            rescan_interval_secs: None,
        };
        let cipher = velour_db::secrets::SecretsCipher::default();
        let id = velour_db::locations::create_location(b.pool(), &cipher, new).await?.id;
        let err = b.scan(id).await.err().context("a scan of loopback succeeded")?.to_string();
        ensure!(err.contains("on loopback"), "{url}: {err}");
        ensure!(err.contains("VELOUR_PEER_ALLOWED_NETWORKS"), "{url}: {err}");
    }

    // Streaming from a peer at an internal address answers 502 without a request sent.
    for base in ["http://169.254.169.254/", "http://localhost:9/"] {
        let id = crate::peer_faults::add_peer_video(&b, &base.parse()?, base).await?;
        let path = format!("/api/v1/videos/{id}/stream");
        let answer = b.admin(Method::GET, &path).send().await?;
        let status = answer.status();
        let body: Value = answer.json().await?;
        ensure!(status == StatusCode::BAD_GATEWAY, "{base}: {status} {body}");
        ensure!(body["code"] == "peer-address-refused", "{base}: {body}");
    }
    b.stop().await?;

    // With loopback allowed (as every other test runs), the same scan succeeds.
    let c = Instance::start("guard C").await?;
    let peer = c.add_peer_location("A", &a, &key_for_b).await?;
    c.scan(peer).await?;
    ensure!(find_video(&c.all_works().await?, NAME).is_ok(), "C did not list A's video");
    c.stop().await?;
    a.stop().await?;
    Ok(())
}

#[test]
fn a_bad_tls_file_names_its_setting() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let (cert, key) = (ca.cert_pem.as_bytes(), ca.key_pem.as_bytes());
    ensure!(velour_gateway::tls_config(cert, key).is_ok(), "a good pair was refused");

    let err = velour_gateway::tls_config(b"not a certificate", key).err().context("accepted")?;
    ensure!(err.to_string().contains("VELOUR_TLS_CERT_FILE"), "{err}");
    let err = velour_gateway::tls_config(cert, cert).err().context("accepted")?;
    ensure!(err.to_string().contains("VELOUR_TLS_KEY_FILE"), "{err}");
    let broken_key = ca.key_pem.replace('A', "B");
    let err = velour_gateway::tls_config(cert, broken_key.as_bytes()).err().context("accepted")?;
    ensure!(err.to_string().contains("VELOUR_TLS_KEY_FILE"), "{err}");
    Ok(())
}
