//! Secrets come from an environment variable or a systemd credential, and
//! appear nowhere: not in the log (at debug level), `/metrics`, `/status`,
//! the status page, `kite check` or `kite status`.

use std::process::Command;

use serde_json::Value;

use crate::support::*;

const PASSWORD: &str = "pw-7f3a9c1e5d";
const TOKEN: &str = "tok-2b8e6d4f0a";

#[tokio::test(flavor = "multi_thread")]
async fn secrets_from_the_environment_and_credentials_appear_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("mosquitto.passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["gateway", PASSWORD])
        .status()
        .unwrap();
    assert!(made.success(), "mosquitto_passwd failed");
    let port = free_port();
    let _broker = Mosquitto::with_config(
        dir.path(),
        port,
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence false\n",
            passwords.display()
        ),
    )
    .await;
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("kite-token"), format!("{TOKEN}\n")).unwrap();
    let config = kite_config(dir.path(), "gw-secrets", port, "")
        .replace("[http]\n", "[http]\ntoken_credential = \"kite-token\"\n")
        .replace(
            "flush_timeout = \"2s\"\n",
            "flush_timeout = \"2s\"\nusername = \"gateway\"\npassword_env = \"KITE_TEST_MQTT_PASSWORD\"\n",
        );
    let env = [
        ("KITE_TEST_MQTT_PASSWORD", PASSWORD),
        ("CREDENTIALS_DIRECTORY", credentials.to_str().unwrap()),
        ("KITE_LOG", "debug"),
    ];
    let kite = Kite::start_with_env(kite_bin(), dir.path(), &config, &env);

    // The password got the gateway in; the token guards the API.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let status = loop {
        let (code, body) = kite.http("GET", "/status", Some(TOKEN), "").await;
        assert_eq!(code, 200, "{body}");
        let status: Value = serde_json::from_str(&body).unwrap();
        if status["uplink"]["connected"] == true {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never connected: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let (refused, _) = kite.http("GET", "/status", None, "").await;
    assert_eq!(refused, 401);

    let mut seen = vec![("/status".to_string(), status)];
    for path in ["/metrics", "/", "/history"] {
        let (code, body) = kite.http("GET", path, Some(TOKEN), "").await;
        assert_eq!(code, 200, "{path}");
        seen.push((path.to_string(), body));
    }
    let config_path = Kite::config_path(dir.path());
    for verb in ["check", "status"] {
        let output = Command::new(kite_bin())
            .arg(verb)
            .arg("--config")
            .arg(&config_path)
            .envs(env)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "kite {verb}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        seen.push((format!("kite {verb}"), text));
    }
    seen.push(("the log".to_string(), kite.log()));
    assert!(
        seen.iter().any(|(_, text)| text.contains("gw-secrets")),
        "something was read"
    );
    for (place, text) in &seen {
        for secret in [PASSWORD, TOKEN] {
            assert!(!text.contains(secret), "{place} shows a secret:\n{text}");
        }
    }
}
