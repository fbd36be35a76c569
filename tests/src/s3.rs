//! A real S3-compatible server on loopback for the tests: moto's server (from PyPI, set up by
//! `scripts/setup`), started on port 0 in a child process that ends with the test.

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use url::Url;
use velour_storage::s3::S3Settings;
use velour_storage::s3::aws_sdk_s3::primitives::ByteStream;

/// Starts the server on a free port, prints the port, and runs until its standard input
/// closes (when the test drops it).
const LAUNCHER: &str = "
import logging, sys
from moto.server import ThreadedMotoServer
# Request lines would print presigned URLs into the test output.
logging.getLogger('werkzeug').setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
";

/// The Python that has moto installed: `VELOUR_TEST_MOTO_PYTHON`, else the virtual
/// environment `scripts/setup` makes.
fn moto_python() -> PathBuf {
    if let Some(python) = std::env::var_os("VELOUR_TEST_MOTO_PYTHON") {
        return python.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".local/share/velour/moto/bin/python")
}

/// A running S3-compatible server; stopped when dropped.
pub struct S3Server {
    pub endpoint: Url,
    _child: Child,
}

impl S3Server {
    pub async fn start() -> anyhow::Result<Self> {
        let python = moto_python();
        let mut child = Command::new(&python)
            .args(["-c", LAUNCHER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!("could not start moto with {} (scripts/setup)", python.display())
            })?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        // The port is printed once the server listens: a readiness signal, not a sleep.
        tokio::time::timeout(Duration::from_secs(60), BufReader::new(stdout).read_line(&mut line))
            .await
            .context("moto did not start within 60 s")??;
        let port: u16 = line.trim().parse().with_context(|| format!("moto printed {line:?}"))?;
        let endpoint = Url::parse(&format!("http://127.0.0.1:{port}/"))?;
        Ok(Self { endpoint, _child: child })
    }

    /// A location's configuration for `bucket` under `prefix` on this server.
    pub fn location_config(&self, bucket: &str, prefix: &str) -> Value {
        json!({
            "bucket": bucket,
            "endpoint": self.endpoint.as_str(),
            "prefix": prefix,
            "region": "us-east-1",
            "access_key_id": "velour-test",
            "secret_access_key": "velour-test-secret",
        })
    }

    /// A client for `bucket`, with the same settings a location would have.
    pub fn settings(&self, bucket: &str) -> anyhow::Result<S3Settings> {
        let config = self.location_config(bucket, "");
        let fields = config.as_object().context("not an object")?;
        Ok(S3Settings::from_request(fields)?)
    }

    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let settings = self.settings(bucket)?;
        settings.client().create_bucket().bucket(bucket).send().await?;
        Ok(())
    }

    pub async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        let settings = self.settings(bucket)?;
        let put = settings
            .client()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await;
        ensure!(put.is_ok(), "could not put {key}: {put:?}");
        Ok(())
    }
}
