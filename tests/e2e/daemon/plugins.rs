//! Plug-ins in the running daemon: their events and derived readings travel
//! the buffer and the uplink like any telemetry, and a plug-in that loops
//! forever is disabled while the raw data keeps flowing. Well-behaved
//! plug-ins get a time limit of 1 s: a debug build on a loaded machine can
//! take longer than the 5 ms default just to start one.

use std::path::Path;

use serde_json::{json, Value};

use crate::plugin_builds::{component, examples, module};
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn plugin_outputs_are_delivered_and_a_runaway_plugin_is_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let examples = examples();
    let spin = dir.path().join("spin.wasm");
    std::fs::write(
        &spin,
        component(
            &module("", "(loop $spin (br $spin)) i32.const 16"),
            "plugin",
        ),
    )
    .unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_device, port) = modbus_device(json!({"size": 10, "holding": {"0": [950]}})).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-plug/#", "plugin-test", false).await;
    let extra = format!(
        r#"[[devices]]
name = "boiler-1"
protocol = "modbus-tcp"
address = "127.0.0.1:{port}"
poll_interval = "100ms"
[[devices.points]]
name = "temperature"
address = 0
type = "i16"
scale = 0.1
unit = "degC"

[[plugins]]
name = "overheat"
path = "{threshold}"
time_limit = "1s"
inputs = ["boiler-*/temperature"]
config = {{ threshold = 90.0, severity = "critical" }}

[[plugins]]
name = "fahrenheit"
path = "{convert}"
time_limit = "1s"
inputs = ["*/temperature"]
config = {{ from = "degC", to = "degF" }}

[[plugins]]
name = "spin"
path = "{spin}"
inputs = ["*/*"]
time_limit = "5ms"
"#,
        threshold = examples.join("kite_example_threshold.wasm").display(),
        convert = examples.join("kite_example_convert.wasm").display(),
        spin = spin.display(),
    );
    let kite = Kite::start(
        kite_bin(),
        dir.path(),
        &kite_config(dir.path(), "gw-plug", broker.port, &extra),
    );

    let status = sub
        .next_on("kite/gw-plug/status", |s| s["state"] == "online")
        .await;
    assert!(
        status["plugins"]["overheat"].is_object(),
        "plug-ins in the status: {status}"
    );
    assert!(
        status["plugins"]["overheat"]["queued"].is_u64(),
        "batches waiting for a plug-in in the status: {status}"
    );

    let event = sub.next_on("kite/gw-plug/events", |_| true).await;
    assert_eq!(event["plugin"], "overheat");
    assert_eq!(event["severity"], "critical");
    assert_eq!(event["device"], "boiler-1");
    assert_eq!(event["point"], "temperature");
    assert!(
        event["seq"].as_u64().is_some() && event["ts"].as_u64().is_some(),
        "{event}"
    );
    assert!(
        event["message"].as_str().unwrap().contains("above 90"),
        "{event}"
    );

    let derived = sub.next_on("kite/gw-plug/fahrenheit", |_| true).await;
    assert_eq!(
        derived["points"]["boiler-1.temperature"],
        json!({"value": 203.0, "quality": "good", "unit": "degF"})
    );

    wait_until("the runaway plug-in is disabled", || {
        kite.log().contains("plug-in DISABLED")
    })
    .await;
    // Raw readings flow on, before and after.
    let before = sub.next_on("kite/gw-plug/boiler-1", |_| true).await["seq"]
        .as_u64()
        .unwrap();
    let after = sub
        .next_on("kite/gw-plug/boiler-1", |m| {
            m["seq"].as_u64().unwrap() > before + 5
        })
        .await;
    assert_eq!(after["points"]["temperature"]["value"], 95.0);
    // Disabled once, for good: not re-instantiated in a loop.
    let log = kite.log();
    assert_eq!(log.matches("plug-in DISABLED").count(), 1, "{log}");
}

fn kite_cli(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(kite_bin())
        .args(args)
        .output()
        .unwrap()
}

/// `kite plugin test` of `wasm` on `input` with `config` and `extra`
/// arguments; it must succeed. What it printed.
fn plugin_test(wasm: &Path, input: &Path, config: &str, extra: &[&str]) -> String {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "plugin".as_ref(),
        "test".as_ref(),
        wasm.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--config".as_ref(),
        config.as_ref(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let output = kite_cli(&args);
    assert!(
        output.status.success(),
        "{}: {}",
        wasm.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn kite_plugin_test_runs_a_plugin_on_recorded_readings() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("readings.jsonl");
    std::fs::write(
        &input,
        "{\"device\":\"boiler-1\",\"point\":\"temperature\",\"value\":80.5,\"ts\":1}\n\
         {\"device\":\"boiler-1\",\"point\":\"temperature\",\"value\":95,\"ts\":2}\n",
    )
    .unwrap();
    let wasm = examples().join("kite_example_threshold.wasm");
    let stdout = plugin_test(&wasm, &input, r#"{"threshold": 90}"#, &[]);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(lines[0]["event"]["ts"], 2);
    assert_eq!(lines[0]["event"]["severity"], "warning");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_and_tampered_plugins_are_refused_and_nothing_else_stops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let copy = |name: &str, example: &str| {
        let path = d.join(name);
        std::fs::copy(
            examples().join(format!("kite_example_{example}.wasm")),
            &path,
        )
        .unwrap();
        path
    };
    let (good, unsigned, tampered) = (
        copy("good.wasm", "convert"),
        copy("unsigned.wasm", "convert"),
        copy("tampered.wasm", "convert"),
    );
    let prefix = d.join("vendor");
    assert!(
        kite_cli(&["plugin".as_ref(), "keygen".as_ref(), prefix.as_os_str()])
            .status
            .success()
    );
    let sign = |wasm: &std::path::Path| {
        let signed = kite_cli(&[
            "plugin".as_ref(),
            "sign".as_ref(),
            wasm.as_os_str(),
            "--key".as_ref(),
            d.join("vendor.key").as_os_str(),
        ]);
        assert!(signed.status.success());
    };
    for wasm in [&good, &tampered] {
        sign(wasm);
    }
    let mut bytes = std::fs::read(&tampered).unwrap();
    bytes.push(0);
    std::fs::write(&tampered, bytes).unwrap();
    let verify = |wasm: &std::path::Path| {
        kite_cli(&[
            "plugin".as_ref(),
            "verify".as_ref(),
            wasm.as_os_str(),
            "--key".as_ref(),
            d.join("vendor.pub").as_os_str(),
        ])
        .status
        .success()
    };
    assert!(verify(&good));
    assert!(!verify(&tampered));
    assert!(!verify(&unsigned));

    let broker = Mosquitto::start(d, false).await;
    let (_device, port) = modbus_device(json!({"size": 10, "holding": {"0": [200]}})).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-sign/#", "sign-test", false).await;
    let plugin = |name: &str, path: &std::path::Path| {
        format!(
            "[[plugins]]\nname = \"{name}\"\npath = \"{}\"\ninputs = [\"*/temperature\"]\ntime_limit = \"1s\"\nconfig = {{ from = \"degC\", to = \"K\" }}\n",
            path.display()
        )
    };
    let extra = format!(
        "[plugin_trust]\nrequire_signed = true\ntrusted_keys = [\"vendor.pub\"]\n\n\
         [[devices]]\nname = \"boiler-1\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"100ms\"\n\
         [[devices.points]]\nname = \"temperature\"\naddress = 0\ntype = \"i16\"\nscale = 0.1\nunit = \"degC\"\n\n{}{}{}",
        plugin("good", &good),
        plugin("unsigned", &unsigned),
        plugin("tampered", &tampered),
    );
    let kite = Kite::start(
        kite_bin(),
        d,
        &kite_config(d, "gw-sign", broker.port, &extra),
    );
    let status = sub
        .next_on("kite/gw-sign/status", |s| s["state"] == "online")
        .await;
    let refused = |status: &Value, plugin: &str| status["plugins"][plugin]["state"] == "refused";
    assert!(
        refused(&status, "unsigned") && refused(&status, "tampered"),
        "{status}"
    );
    assert!(!refused(&status, "good"), "{status}");
    let derived = sub.next_on("kite/gw-sign/good", |_| true).await;
    assert_eq!(derived["points"]["boiler-1.temperature"]["value"], 293.15);
    let raw = sub.next_on("kite/gw-sign/boiler-1", |_| true).await;
    assert_eq!(raw["points"]["temperature"]["value"], 20.0);
    let log = kite.log();
    assert!(log.contains("unsigned plug-in refused"), "{log}");
    assert!(log.contains("does not match any trusted key"), "{log}");

    // Signed now, the refused plug-in is tried again and runs, with no reload.
    sign(&unsigned);
    let derived = sub.next_on("kite/gw-sign/unsigned", |_| true).await;
    assert_eq!(derived["points"]["boiler-1.temperature"]["value"], 293.15);
    let (code, body) = kite.http("GET", "/status", None, "").await;
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert!(
        !refused(&status, "unsigned") && refused(&status, "tampered"),
        "{status}"
    );
    assert!(kite
        .log()
        .contains("refused plug-in loaded after its file changed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn replacing_a_plugin_file_swaps_versions_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let wasm = d.join("live.wasm");
    let install = |bytes: &[u8]| {
        // Installed the way a package manager does: write beside, then rename over.
        let staging = d.join("live.wasm.new");
        std::fs::write(&staging, bytes).unwrap();
        std::fs::rename(&staging, &wasm).unwrap();
    };
    install(&std::fs::read(examples().join("kite_example_convert.wasm")).unwrap());
    let broker = Mosquitto::start(d, false).await;
    let (_device, port) = modbus_device(json!({"size": 10, "holding": {"0": [950]}})).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-swap/#", "swap-test", false).await;
    let extra = format!(
        "[[devices]]\nname = \"boiler-1\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"100ms\"\n\
         [[devices.points]]\nname = \"temperature\"\naddress = 0\ntype = \"i16\"\nscale = 0.1\n\n\
         [[plugins]]\nname = \"live\"\npath = \"{}\"\ninputs = [\"*/temperature\"]\ntime_limit = \"1s\"\nconfig = {{ from = \"degC\", to = \"degF\", window = 2 }}\n",
        wasm.display()
    );
    let kite = Kite::start(
        kite_bin(),
        d,
        &kite_config(d, "gw-swap", broker.port, &extra),
    );
    let first = sub.next_on("kite/gw-swap/boiler-1", |_| true).await["seq"]
        .as_u64()
        .unwrap();
    let old = sub.next_on("kite/gw-swap/live", |_| true).await;
    assert_eq!(old["points"]["boiler-1.temperature"]["value"], 203.0);

    // A broken new version is refused and the running one stays.
    install(b"not a component");
    wait_until("the broken version is refused", || {
        kite.log()
            .contains("failed to load; the running version stays")
    })
    .await;
    sub.next_on("kite/gw-swap/live", |m| {
        m["points"]["boiler-1.temperature"]["value"] == 203.0
    })
    .await;

    // A good new version takes over.
    install(&std::fs::read(examples().join("kite_example_average.wasm")).unwrap());
    let new = sub
        .next_on("kite/gw-swap/live", |m| {
            m["points"].get("boiler-1.temperature.avg").is_some()
        })
        .await;
    assert_eq!(new["points"]["boiler-1.temperature.avg"]["value"], 95.0);
    assert!(kite.log().contains("plug-in reloaded"));

    // Polling carried on through both swaps.
    let last = sub.next_on("kite/gw-swap/boiler-1", |_| true).await["seq"]
        .as_u64()
        .unwrap();
    assert!(last > first);
}

/// Rows of `device` in the buffer of `kite`.
fn buffered_rows(kite: &Kite, device: &str) -> i64 {
    kite.buffer_number(&format!(
        "SELECT count(*) FROM messages WHERE device = '{device}'"
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_outputs_of_the_last_readings_are_committed_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (_device, port) = modbus_device(json!({"size": 10, "holding": {"0": [215]}})).await;
    let extra = format!(
        "[[devices]]\nname = \"boiler-1\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"100ms\"\n\
         [[devices.points]]\nname = \"temperature\"\naddress = 0\ntype = \"i16\"\nscale = 0.1\nunit = \"degC\"\n\n\
         [[plugins]]\nname = \"fahrenheit\"\npath = \"{}\"\ninputs = [\"*/temperature\"]\ntime_limit = \"1s\"\nconfig = {{ from = \"degC\", to = \"degF\" }}\n",
        examples().join("kite_example_convert.wasm").display()
    );
    // No broker: everything stays in the buffer, where it can be counted.
    let mut kite = Kite::start(
        kite_bin(),
        dir.path(),
        &kite_config(dir.path(), "gw-drain", free_port(), &extra),
    );
    wait_until("readings and their conversions are buffered", || {
        buffered_rows(&kite, "fahrenheit") >= 20
    })
    .await;
    assert!(kite.terminate().await.success());
    // One derived reading per reading, the last ones included.
    assert_eq!(
        buffered_rows(&kite, "fahrenheit"),
        buffered_rows(&kite, "boiler-1"),
        "{}",
        kite.log()
    );
    assert!(!kite.log().contains("LOST"), "{}", kite.log());
}

#[test]
fn the_demo_plugins_are_signed_and_behave_like_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let demo = repo_root().join("config/demo");
    let input = dir.path().join("readings.jsonl");
    let readings: String = (0..40)
        .map(|i| {
            let value = 60.0 + 25.0 * (f64::from(i) / 3.0).sin();
            format!("{{\"device\":\"boiler-1\",\"point\":\"temperature\",\"value\":{value},\"ts\":{i},\"unit\":\"degC\"}}\n")
        })
        .collect();
    std::fs::write(&input, readings).unwrap();
    for (file, example, config) in [
        (
            "average.wasm",
            "kite_example_average.wasm",
            r#"{"window": 5}"#,
        ),
        (
            "threshold.wasm",
            "kite_example_threshold.wasm",
            r#"{"threshold": 80.0, "hysteresis": 5.0}"#,
        ),
    ] {
        let prebuilt = demo.join(file);
        let verified = kite_cli(&[
            "plugin".as_ref(),
            "verify".as_ref(),
            "--key".as_ref(),
            demo.join("demo-plugins.pub").as_os_str(),
            prebuilt.as_os_str(),
        ]);
        assert!(
            verified.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&verified.stderr)
        );
        let run = |wasm: &Path| {
            plugin_test(
                wasm,
                &input,
                config,
                &["--batch", "7", "--time-limit", "1s"],
            )
        };
        let from_prebuilt = run(&prebuilt);
        assert!(
            from_prebuilt.lines().count() >= 3,
            "{file}: {from_prebuilt}"
        );
        // Under the same name: derived readings are named after the file.
        let from_source = dir.path().join(file);
        std::fs::copy(examples().join(example), &from_source).unwrap();
        assert_eq!(from_prebuilt, run(&from_source), "{file}");
    }
}
