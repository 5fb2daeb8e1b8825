//! The uplink over TLS with a client certificate and a password, against a
//! Mosquitto that requires both; a client certificate about to expire is
//! warned about.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::json;

use crate::support::*;

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    // Distinct subject names: OpenSSL (in Mosquitto) takes a certificate whose
    // subject equals its issuer for a self-signed one.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Kite test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, last_day: Option<(i32, u8, u8)>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        if let Some((year, month, day)) = last_day {
            params.not_after = rcgen::date_time_ymd(year, month, day);
        }
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    // The client's certificate runs out in ten days.
    let in_ten_days = kite_core::utc(kite_core::now_ms() + 10 * 86_400_000);
    let part = |range: std::ops::Range<usize>| in_ten_days[range].parse().unwrap();
    let last_day = (part(0..4), part(5..7) as u8, part(8..10) as u8);
    Pki {
        server: leaf(vec!["127.0.0.1".into(), "localhost".into()], None),
        client: leaf(vec!["kite-client".into()], Some(last_day)),
        ca: ca.pem(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn uplink_over_mutual_tls_with_password() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki();
    for (name, text) in [
        ("ca.pem", &pki.ca),
        ("server.pem", &pki.server.0),
        ("server.key", &pki.server.1),
        ("client.pem", &pki.client.0),
        ("client.key", &pki.client.1),
    ] {
        std::fs::write(d.join(name), text).unwrap();
    }
    let passwd = d.join("passwd");
    std::fs::write(&passwd, "").unwrap();
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b"])
        .arg(&passwd)
        .args(["gateway", "s3cret-pw"])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    std::fs::write(d.join("password"), "s3cret-pw\n").unwrap();
    std::fs::write(d.join("wrong-password"), "guess\n").unwrap();

    let (tls_port, plain_port, api_port) = (free_port(), free_port(), free_port());
    let conf = format!(
        "per_listener_settings true\n\
         listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
         require_certificate true\nallow_anonymous false\npassword_file {d}/passwd\n\
         listener {plain_port} 127.0.0.1\nallow_anonymous true\n",
        d = d.display()
    );
    let _broker = Mosquitto::with_config(d, plain_port, &conf).await;
    let mut sub = Subscriber::connect(plain_port, "kite/#", "tls-test", false).await;
    let (_device, device_port) = modbus_device(json!({"size": 10, "holding": {"0": [5]}})).await;

    let config = |password_file: &str| {
        format!(
            "[gateway]\nid = \"gw-tls\"\ndata_dir = \"{data}\"\n\n[http]\nlisten = \"127.0.0.1:{api_port}\"\n\n[mqtt]\nurl = \"mqtts://127.0.0.1:{tls_port}\"\n\
             username = \"gateway\"\npassword_file = \"{password_file}\"\nca_file = \"ca.pem\"\ncert_file = \"client.pem\"\nkey_file = \"client.key\"\n\n\
             [[devices]]\nname = \"meter\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{device_port}\"\npoll_interval = \"100ms\"\n\
             [[devices.points]]\nname = \"energy\"\naddress = 0\n",
            data = d.join("data").display()
        )
    };

    // A wrong password is refused by the broker, and the gateway says so.
    let refused = Kite::start(kite_bin(), d, &config("wrong-password"));
    wait_until("the broker's refusal is logged", || {
        refused.log().contains("uplink down")
    })
    .await;
    assert!(refused.log().contains("refused"), "{}", refused.log());
    drop(refused);

    // The buffer kept what was read meanwhile; with the right password it all arrives over TLS.
    let kite = Kite::start(kite_bin(), d, &config("password"));
    // The status goes out first on connect, then the backlog from its oldest row.
    let status = sub
        .next_on("kite/gw-tls/status", |s| s["state"] == "online")
        .await;
    assert_eq!(status["state"], "online");
    let first = sub.next_on("kite/gw-tls/meter", |_| true).await;
    assert_eq!(first["seq"], 1, "nothing read while refused is lost");
    assert_eq!(first["points"]["energy"]["value"], 5);

    // The client certificate expires within 14 days, the CA's does not.
    let certificates = status["uplink"]["certificates"].as_array().unwrap();
    let warnings: Vec<(&str, &str)> = certificates
        .iter()
        .filter_map(|c| Some((c["file"].as_str()?, c["warning"].as_str()?)))
        .collect();
    assert_eq!(certificates.len(), 2, "{status}");
    assert!(
        matches!(warnings[..], [("cert_file", warning)] if warning.contains("expires on") && warning.contains("in 9d")),
        "{warnings:?}"
    );
    assert!(
        kite.log()
            .contains("mqtt.cert_file certificate \"CN=rcgen self signed cert\" expires on"),
        "{}",
        kite.log()
    );
    let (_, metrics) = kite.http("GET", "/metrics", None, "").await;
    assert!(
        metrics.contains("kite_tls_certificate_expiry_timestamp_seconds{file=\"cert_file\""),
        "{metrics}"
    );
}
