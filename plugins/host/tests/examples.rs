//! The example plug-ins, built from source for wasm32-wasip2, fed real
//! readings through the real host.

use std::path::Path;
use std::time::Duration;

use kite_plugins::bindings::kite::plugin::types::{Output, Reading, Severity, Value};
use kite_plugins::sandbox::{Execution, Instance, Limits, PluginError, Sandbox};
use kite_plugins::state::StateStore;

mod common;
use common::examples;

/// The default limits with time enough for a debug build on a busy
/// machine: instantiation counts against the time limit too.
fn unhurried() -> Limits {
    Limits {
        time: Duration::from_secs(1),
        ..Limits::default()
    }
}

fn start(sandbox: &Sandbox, dir: &Path, example: &str, config: &str) -> Instance {
    let bytes = std::fs::read(examples().join(format!("kite_example_{example}.wasm"))).unwrap();
    let component = sandbox.compile(&bytes).unwrap();
    let limits = unhurried();
    let state =
        StateStore::open(&dir.join("plugins.sqlite3"), example, limits.state_bytes).unwrap();
    let mut instance = sandbox
        .instantiate(&component, example, limits, state)
        .unwrap();
    instance.init(config).unwrap();
    instance
}

fn reading(device: &str, point: &str, x: f64, ts: i64) -> Reading {
    Reading {
        device: device.into(),
        point: point.into(),
        value: Some(Value::Float(x)),
        error: None,
        timestamp: ts,
        unit: Some("degC".into()),
    }
}

fn series(values: &[f64]) -> Vec<Reading> {
    values
        .iter()
        .enumerate()
        .map(|(i, &x)| reading("boiler-1", "temperature", x, 1000 * i as i64))
        .collect()
}

fn floats(output: &Output) -> Vec<(String, f64)> {
    output
        .readings
        .iter()
        .map(|d| match d.value {
            Value::Float(x) => (d.point.clone(), x),
            ref other => panic!("float expected, got {other:?}"),
        })
        .collect()
}

#[test]
fn threshold_alarms_with_hysteresis_and_remembers_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(None).unwrap();
    let config = r#"{"threshold": 90.0, "hysteresis": 5.0, "severity": "critical"}"#;
    let mut plugin = start(&sandbox, dir.path(), "threshold", config);
    let output = plugin.process(&series(&[80.0, 91.0, 95.0, 88.0])).unwrap();
    assert_eq!(
        output.events.len(),
        1,
        "one alarm, no repeat while active, no clear within hysteresis"
    );
    assert_eq!(output.events[0].severity, Severity::Critical);
    assert_eq!(output.events[0].device.as_deref(), Some("boiler-1"));
    assert!(
        output.events[0].message.contains("above 90"),
        "{}",
        output.events[0].message
    );
    drop(plugin);
    // A new instance (a restart) knows the alarm is active.
    let mut plugin = start(&sandbox, dir.path(), "threshold", config);
    let output = plugin.process(&series(&[96.0, 84.0])).unwrap();
    assert_eq!(output.events.len(), 1);
    assert_eq!(output.events[0].severity, Severity::Info);
    assert!(output.events[0].message.contains("back below 85"));
    // A config without the threshold is refused with the plug-in's reason.
    let component = sandbox
        .compile(&std::fs::read(examples().join("kite_example_threshold.wasm")).unwrap())
        .unwrap();
    let state = StateStore::open(&dir.path().join("plugins.sqlite3"), "t2", 1024).unwrap();
    let mut refused = sandbox
        .instantiate(&component, "t2", unhurried(), state)
        .unwrap();
    let error = refused.init("{}").unwrap_err();
    assert!(
        error.to_string().contains("threshold is required"),
        "{error}"
    );
}

#[test]
fn average_downsamples_a_moving_mean() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(None).unwrap();
    let mut plugin = start(
        &sandbox,
        dir.path(),
        "average",
        r#"{"window": 4, "every": 2}"#,
    );
    let output = plugin
        .process(&series(&[1.0, 3.0, 5.0, 7.0, 9.0, 11.0]))
        .unwrap();
    assert_eq!(
        floats(&output),
        vec![
            ("boiler-1.temperature.avg".into(), 2.0),
            ("boiler-1.temperature.avg".into(), 4.0),
            ("boiler-1.temperature.avg".into(), 8.0),
        ]
    );
    assert_eq!(output.readings[0].unit.as_deref(), Some("degC"));
}

#[test]
fn convert_changes_units() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(None).unwrap();
    let mut plugin = start(
        &sandbox,
        dir.path(),
        "convert",
        r#"{"from": "degC", "to": "degF"}"#,
    );
    let output = plugin.process(&series(&[100.0, -40.0])).unwrap();
    assert_eq!(
        floats(&output),
        vec![
            ("boiler-1.temperature".into(), 212.0),
            ("boiler-1.temperature".into(), -40.0)
        ]
    );
    assert_eq!(output.readings[0].unit.as_deref(), Some("degF"));
    let mut back = start(
        &sandbox,
        dir.path(),
        "convert",
        r#"{"from": "psi", "to": "bar"}"#,
    );
    let output = back.process(&series(&[14.503773773])).unwrap();
    assert!((floats(&output)[0].1 - 1.0).abs() < 1e-9);
}

#[test]
fn zscore_flags_outliers_only() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(None).unwrap();
    let mut plugin = start(
        &sandbox,
        dir.path(),
        "zscore",
        r#"{"window": 10, "threshold": 3.0}"#,
    );
    let output = plugin
        .process(&series(&[20.0, 20.5, 19.5, 20.2, 19.8, 20.1, 45.0, 20.0]))
        .unwrap();
    assert_eq!(output.events.len(), 1, "{:?}", output.events);
    assert!(
        output.events[0].message.contains("45"),
        "{}",
        output.events[0].message
    );
    assert_eq!(output.events[0].timestamp, Some(6000));
}

#[test]
fn deadband_filters_small_changes_and_reports_the_rate() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(None).unwrap();
    let mut plugin = start(&sandbox, dir.path(), "deadband", r#"{"deadband": 1.0}"#);
    let output = plugin
        .process(&series(&[10.0, 10.4, 10.9, 12.0, 12.5]))
        .unwrap();
    assert_eq!(
        floats(&output),
        vec![
            ("boiler-1.temperature".into(), 10.0),
            ("boiler-1.temperature.rate".into(), 2.0 / 3.0),
            ("boiler-1.temperature".into(), 12.0),
        ]
    );
}

#[test]
fn plugins_run_on_the_pulley_interpreter_too() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::with_execution(None, Execution::Interpreter).unwrap();
    let mut plugin = start(
        &sandbox,
        dir.path(),
        "convert",
        r#"{"from": "degC", "to": "degF"}"#,
    );
    let output = plugin.process(&series(&[100.0])).unwrap();
    assert_eq!(
        floats(&output),
        vec![("boiler-1.temperature".into(), 212.0)]
    );
    let mut alarm = start(&sandbox, dir.path(), "threshold", r#"{"threshold": 90.0}"#);
    assert_eq!(alarm.process(&series(&[95.0])).unwrap().events.len(), 1);
    // The time limit holds in the interpreter as well.
    let spin = common::component(
        &common::module("", "(loop $spin (br $spin)) i32.const 16"),
        "plugin",
    );
    let component = sandbox.compile(&spin).unwrap();
    let state = StateStore::open(&dir.path().join("plugins.sqlite3"), "spin", 1024).unwrap();
    let limits = Limits {
        time: Duration::from_millis(20),
        ..Limits::default()
    };
    let mut spinning = sandbox
        .instantiate(&component, "spin", limits, state)
        .unwrap();
    spinning.init("{}").unwrap();
    assert!(matches!(
        spinning.process(&series(&[1.0])),
        Err(PluginError::Timeout(_))
    ));
}

#[test]
fn precompiled_plugins_load_only_when_signed_by_a_trusted_key() {
    use kite_plugins::{signing, Trust};
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::with_execution(None, Execution::Interpreter).unwrap();
    let wasm = std::fs::read(examples().join("kite_example_convert.wasm")).unwrap();
    let cwasm = dir.path().join("convert.cwasm");
    std::fs::write(
        &cwasm,
        kite_plugins::sandbox::precompile(&wasm, "pulley64").unwrap(),
    )
    .unwrap();
    let (secret, public) = signing::keygen(&dir.path().join("vendor")).unwrap();
    let trust = Trust {
        keys: vec![signing::read_public_key(&public).unwrap()].into(),
        require_signed: false,
    };
    let refused = kite_plugins::load(&sandbox, &cwasm, &trust);
    assert!(
        matches!(refused, Err(PluginError::Signature(_))),
        "unsigned precompiled code is refused"
    );
    signing::sign(&cwasm, &secret).unwrap();
    assert!(
        matches!(
            kite_plugins::load(&sandbox, &cwasm, &Trust::default()),
            Err(PluginError::Signature(_))
        ),
        "signed, but by nobody trusted"
    );
    let component = kite_plugins::load(&sandbox, &cwasm, &trust).unwrap();
    let state = StateStore::open(&dir.path().join("plugins.sqlite3"), "convert", 1024).unwrap();
    let mut plugin = sandbox
        .instantiate(&component, "convert", unhurried(), state)
        .unwrap();
    plugin.init(r#"{"from": "degC", "to": "degF"}"#).unwrap();
    assert_eq!(
        floats(&plugin.process(&series(&[0.0])).unwrap()),
        vec![("boiler-1.temperature".into(), 32.0)]
    );
    // Code compiled for another engine is rejected, not run.
    let native = Sandbox::with_execution(None, Execution::Native).unwrap();
    assert!(matches!(
        kite_plugins::load(&native, &cwasm, &trust),
        Err(PluginError::Load(_))
    ));
}

/// A frame of the example meter protocol: 0xA5, length, records, XOR.
fn meter_frame(records: &[(u8, i32)]) -> Vec<u8> {
    let mut frame = vec![0xA5, (records.len() * 5) as u8];
    for (id, value) in records {
        frame.push(*id);
        frame.extend_from_slice(&value.to_be_bytes());
    }
    frame.push(frame.iter().fold(0, |x, b| x ^ b));
    frame
}

#[test]
fn meter_codec_decodes_frames_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = std::sync::Arc::new(Sandbox::new(None).unwrap());
    let spec = kite_plugins::PluginSpec {
        name: "meter".into(),
        wasm: examples().join("kite_example_meter_codec.wasm"),
        inputs: Vec::new(),
        limits: unhurried(),
        config_json: r#"{"points": {"1": {"name": "flow", "scale": 0.5, "unit": "m3/h"}}}"#.into(),
        state_path: dir.path().join("plugins.sqlite3"),
        trust: kite_plugins::Trust::default(),
        max_message_bytes: kite_plugins::DEFAULT_MAX_MESSAGE_BYTES,
    };
    let mut codec = kite_plugins::Codec::start(sandbox.clone(), spec.clone()).unwrap();

    let points = codec.decode(&meter_frame(&[(1, 25), (7, -3)])).unwrap();
    let rendered: Vec<(String, kite_core::Reading, Option<String>)> = points
        .into_iter()
        .map(|p| (p.name.to_string(), p.reading, p.unit.map(|u| u.to_string())))
        .collect();
    assert_eq!(
        rendered,
        [
            (
                "flow".into(),
                kite_core::Reading::Good(kite_core::Value::Float(12.5)),
                Some("m3/h".into())
            ),
            (
                "id7".into(),
                kite_core::Reading::Good(kite_core::Value::Int(-3)),
                None
            ),
        ]
    );

    let mut corrupted = meter_frame(&[(1, 25)]);
    corrupted[3] ^= 0x40;
    let error = codec.decode(&corrupted).unwrap_err();
    assert!(error.contains("checksum"), "{error}");
    assert!(codec
        .decode(&[0xA5])
        .unwrap_err()
        .contains("not a meter frame"));
    // A refused frame leaves the codec working.
    assert_eq!(codec.decode(&meter_frame(&[(1, 2)])).unwrap().len(), 1);

    // A bad codec_config refuses the codec at start, with the codec's reason.
    let bad = kite_plugins::PluginSpec {
        config_json: r#"{"points": {"x": {"name": "flow"}}}"#.into(),
        ..spec.clone()
    };
    let error = kite_plugins::Codec::start(sandbox.clone(), bad)
        .err()
        .unwrap();
    assert!(error.to_string().contains("not an id"), "{error}");

    // Names and units from the codec are bounded: one byte more is refused.
    let name = |bytes: usize| "n".repeat(bytes);
    let cases = [
        (name(kite_plugins::MAX_NAME_BYTES), "m3/h".to_string(), true),
        (
            name(kite_plugins::MAX_NAME_BYTES + 1),
            "m3/h".to_string(),
            false,
        ),
        ("flow".to_string(), name(kite_plugins::MAX_UNIT_BYTES), true),
        (
            "flow".to_string(),
            name(kite_plugins::MAX_UNIT_BYTES + 1),
            false,
        ),
    ];
    for (point, unit, accepted) in cases {
        let config = serde_json::json!({"points": {"1": {"name": point, "unit": unit}}});
        let spec = kite_plugins::PluginSpec {
            config_json: config.to_string(),
            ..spec.clone()
        };
        let mut codec = kite_plugins::Codec::start(sandbox.clone(), spec).unwrap();
        let result = codec.decode(&meter_frame(&[(1, 25)]));
        match result {
            Ok(points) if accepted => assert_eq!(points.len(), 1),
            Err(reason) if !accepted => assert!(reason.contains("output too large"), "{reason}"),
            other => panic!("{point} in {unit}: {other:?}"),
        }
    }
}
