//! `kite check`: broken configs are refused with their line and column,
//! files a config names are read as `kite run` reads them, and the example
//! configs pass.

use std::process::Command;

use crate::support::*;

const HEAD: &str = "[gateway]\nid = \"gw\"\ndata_dir = \"/tmp/kite-check\"\n\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n";
const DEVICE: &str =
    "[[devices]]\nname = \"d\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n";

/// Runs `kite check` on `text`; it must fail and name `file:line:column` and `expected`.
fn check_rejects(text: &str, line: usize, column: usize, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (passed, stderr) = kite_check(dir.path(), text);
    assert!(!passed, "accepted:\n{text}");
    let location = format!(
        "{}:{line}:{column}: ",
        dir.path().join("kite.toml").display()
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&location) && l.contains(expected)),
        "wanted {location}...{expected}, got:\n{stderr}"
    );
}

#[test]
fn kite_check_names_every_kind_of_mistake() {
    let point = |body: &str| format!("{HEAD}{DEVICE}[[devices.points]]\nname = \"p\"\n{body}");
    let cases: Vec<(String, usize, usize, &str)> = vec![
        (format!("{HEAD}[gateway.extra]\n"), 7, 10, "unknown field `extra`"),
        (HEAD.replace("id =", "idd ="), 2, 1, "unknown field `idd`"),
        (HEAD.replace("mqtt://", "http://"), 6, 7, "unsupported url"),
        (format!("{HEAD}[buffer]\nmax_bytes = \"lots\"\n"), 8, 13, "invalid size"),
        (format!("{HEAD}[buffer]\ndurability = \"maybe\"\n"), 8, 14, "unknown variant `maybe`"),
        (format!("{HEAD}{DEVICE}poll_interval = 5\n"), 11, 17, "invalid type"),
        (format!("{HEAD}{DEVICE}timeout = \"5 parsecs\"\n"), 11, 11, "invalid duration"),
        (format!("{HEAD}{DEVICE}{DEVICE}"), 12, 8, "duplicate device name"),
        (format!("{HEAD}{DEVICE}[[devices.points]]\nname = \"p\"\naddress = 1\n[[devices.points]]\nname = \"p\"\naddress = 2\n"), 15, 8, "duplicate point name"),
        (point("address = 65534\ntype = \"u64\"\n"), 13, 11, "past the last Modbus address"),
        (point("address = 70000\n"), 13, 11, "expected u16"),
        (point("address = 1\ntype = \"f64\"\narea = \"coil\"\n"), 13, 11, "does not fit in a coil"),
        (point("address = 1\ntype = \"string\"\n"), 13, 11, "needs `length`"),
        (point("address = 1\ntype = \"u128\"\n"), 14, 8, "unknown variant `u128`"),
        (point("address = 1\narea = \"discrete\"\ntype = \"bool\"\nwritable = true\n"), 13, 11, "read-only"),
        (point("adress = 1\n"), 13, 1, "unknown field `adress`"),
        ("[gateway\nid = 1".to_string(), 1, 9, ""),
        (format!("{HEAD}[[plugins]]\nname = \"p\"\npath = \"missing.wasm\"\ninputs = [\"a/b\"]\n"), 9, 8, "no such plug-in file"),
        (format!("{HEAD}{DEVICE}[[plugins]]\nname = \"d\"\npath = \"kite.toml\"\ninputs = [\"d/*\"]\n"), 12, 8, "is taken"),
        (format!("{HEAD}[[plugins]]\nname = \"p\"\npath = \"kite.toml\"\ninputs = [\"nopattern\"]\n"), 10, 11, "must be device/point"),
        (format!("{HEAD}[[plugins]]\nname = \"p\"\npath = \"kite.toml\"\ninputs = [\"a/b\"]\ntime_limit = \"1h\"\n"), 11, 14, "time_limit"),
        (format!("{HEAD}{DEVICE}max_frame = 64\n"), 11, 13, "`max_frame` does not apply to protocol modbus-tcp"),
        (format!("{HEAD}{DEVICE}length_endian = \"little\"\n"), 11, 17, "`length_endian` does not apply"),
        (HEAD.replace("127.0.0.1", "broker.example"), 6, 7, "plaintext"),
    ];
    for (text, line, column, expected) in cases {
        check_rejects(&text, line, column, expected);
    }
}

/// Runs `kite check` on `text` written to `kite.toml` in `dir`; its stderr, and whether it passed.
fn kite_check(dir: &std::path::Path, text: &str) -> (bool, String) {
    let path = dir.join("kite.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(kite_bin())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_problem_without_a_place_is_printed_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let (passed, stderr) = kite_check(
        dir.path(),
        &format!("{HEAD}\n[plugin_trust]\nrequire_signed = true\n"),
    );
    assert!(!passed);
    let expected = format!(
        "{}: plugin_trust.require_signed needs at least one of plugin_trust.trusted_keys",
        dir.path().join("kite.toml").display()
    );
    assert_eq!(stderr.trim_end(), expected);
}

#[test]
fn kite_check_refuses_tls_files_that_kite_run_could_not_use() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["kite".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    std::fs::write(d.join("good.pem"), &cert).unwrap();
    std::fs::write(d.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(
        d.join("garbled.pem"),
        cert.replace("CERTIFICATE-----\n", "CERTIFICATE-----\n!!"),
    )
    .unwrap();
    std::fs::write(d.join("empty.pem"), "").unwrap();
    let tls = |ca: &str, cert: &str, key: &str| {
        format!(
            "[gateway]\nid = \"gw\"\ndata_dir = \"/tmp/kite-check\"\n[mqtt]\nurl = \"mqtts://broker.example\"\n\
             ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n"
        )
    };
    let (passed, stderr) = kite_check(d, &tls("good.pem", "good.pem", "key.pem"));
    assert!(passed, "{stderr}");
    let config = d.join("kite.toml").display().to_string();
    for (ca, cert, key, line, expected) in [
        ("garbled.pem", "good.pem", "key.pem", 6, "mqtt.ca_file"),
        ("empty.pem", "good.pem", "key.pem", 6, "no certificate"),
        ("good.pem", "garbled.pem", "key.pem", 7, "mqtt.cert_file"),
        ("good.pem", "good.pem", "good.pem", 8, "no private key"),
    ] {
        let (passed, stderr) = kite_check(d, &tls(ca, cert, key));
        assert!(!passed, "{ca} {cert} {key} accepted");
        let location = format!("{config}:{line}:");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&location) && l.contains(expected)),
            "wanted {location} ... {expected}, got:\n{stderr}"
        );
    }
}

#[test]
fn example_configs_pass_kite_check() {
    let dir = repo_root().join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        // The demo's config has placeholders the demo fills in.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("{mqtt_port}", "1883")
            .replace("{http_port}", "9870")
            .replace("{data_dir}", "/tmp/kite-example")
            .replace("{port_1}", "1502")
            .replace("{port_2}", "1503")
            .replace("{port_3}", "1504");
        let copy = tempfile::tempdir().unwrap();
        // Files a config names are relative to it: the demo's plug-ins.
        std::fs::create_dir(copy.path().join("demo")).unwrap();
        for file in std::fs::read_dir(dir.join("demo")).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(
                &file,
                copy.path().join("demo").join(file.file_name().unwrap()),
            )
            .unwrap();
        }
        let target = copy.path().join(path.file_name().unwrap());
        std::fs::write(&target, text).unwrap();
        let output = Command::new(kite_bin())
            .arg("check")
            .arg("--config")
            .arg(&target)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected the example configs in {}",
        dir.display()
    );
}
