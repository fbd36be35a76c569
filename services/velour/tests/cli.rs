//! The `velour` binary as operators run it.

use std::process::Command;

fn velour() -> Command {
    Command::new(env!("CARGO_BIN_EXE_velour"))
}

fn postgres_server() -> String {
    std::env::var("VELOUR_TEST_POSTGRES").unwrap_or_else(|_| "postgres://127.0.0.1".to_owned())
}

#[test]
fn key_create_prints_the_key_alone_and_stores_only_its_hash() {
    let name = format!("velour_test_cli_{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}/{name}", postgres_server());

    let output = velour()
        .args(["key", "create", "--name", "ops", "--admin", "--can-read", "--can-stream"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "info")
        .output()
        .expect("velour runs");
    let drop_db = || {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-d", "postgres", "-qc"])
            .arg(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .status();
    };
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    let stored = Command::new("psql")
        .args(["-h", "127.0.0.1", "-d", &name, "-Atc"])
        .arg(concat!(
            "SELECT encode(key_hash, 'hex') || ' ' || key_prefix || ' ' ",
            "|| can_read || can_stream || can_metadata FROM api_keys"
        ))
        .output()
        .expect("psql runs");
    drop_db();

    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout must hold the key alone: {stdout:?}");
    let key = lines[0];
    assert_eq!(key.len(), 64);
    assert!(key.chars().all(|c| c.is_ascii_hexdigit()));

    let stored = String::from_utf8(stored.stdout).expect("UTF-8");
    assert!(!stored.contains(key), "the clear key must not be stored");
    assert!(stored.trim().ends_with(&format!("{} truetruefalse", &key[..8])), "{stored}");
}

#[test]
fn a_bad_setting_fails_at_start_naming_its_variable() {
    let cases = [
        ("VELOUR_GATEWAY_ADDR", "not an address", "gateway"),
        ("DATABASE_URL", "mysql://localhost/velour", "migrate"),
        ("REDIS_URL", "redis://127.0.0.1:6379/zero", "worker"),
        ("VELOUR_STREAM_URL", "ftp://example/", "gateway"),
        ("VELOUR_WORKER_CONCURRENCY", "0", "worker"),
        ("FEDERATION_ENABLED", "maybe", "gateway"),
        ("MAX_FEDERATED_CONNECTIONS", "-1", "gateway"),
        ("FEDERATION_TOKEN_EXPIRY_HOURS", "forever", "gateway"),
        ("FEDERATION_KEY_ROTATION_GRACE_HOURS", "a day", "worker"),
    ];
    for (variable, value, command) in cases {
        let output = velour().arg(command).env(variable, value).output().expect("velour runs");
        assert!(!output.status.success(), "{variable}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "{variable}: {stderr}");
    }
}
