//! Serial field buses against real peers: pymodbus serving Modbus RTU on one
//! end of a socat serial pair and Kite on the other; raw instruments played
//! by the test writing into the pair; RTU over TCP from pymodbus.

use std::io::{Read, Write};
use std::path::Path;

use serde_json::{json, Value};

use crate::support::*;

fn bus(name: &str, port: &Path) -> String {
    format!(
        "[[buses]]\nname = \"{name}\"\nport = \"{}\"\nbaud = 19200\n\n",
        port.display()
    )
}

fn rtu_device(name: &str, bus: &str, unit: u8) -> String {
    format!(
        "[[devices]]\nname = \"{name}\"\nprotocol = \"modbus-rtu\"\nbus = \"{bus}\"\nunit_id = {unit}\npoll_interval = \"200ms\"\ntimeout = \"300ms\"\n\
         [[devices.points]]\nname = \"energy\"\naddress = 0\ntype = \"u32\"\n\
         [[devices.points]]\nname = \"setpoint\"\naddress = 4\ntype = \"i16\"\nscale = 0.1\nwritable = true\n\n"
    )
}

fn meter_image() -> Value {
    json!({"size": 20, "units": [1, 2], "holding": {"0": [1, 34464], "4": [215]}})
}

/// Writes `setpoint` through MQTT, checks the result, and waits until a
/// poll reads the new value back from the device.
async fn write_setpoint(sub: &mut Subscriber, device_topic: &str, value: f64) {
    let request = json!({"id": "w1", "point": "setpoint", "value": value});
    sub.publish(&format!("{device_topic}/set"), &request.to_string())
        .await;
    let result = sub
        .next_on(&format!("{device_topic}/set/result"), |_| true)
        .await;
    assert_eq!(result["ok"], true, "{result}");
    sub.next_on(device_topic, |m| m["points"]["setpoint"]["value"] == value)
        .await;
}

fn is_good(message: &Value, point: &str) -> bool {
    message["points"][point]["quality"] == "good"
}

fn telemetry_device(topic: &str, gateway: &str) -> Option<String> {
    let rest = topic.strip_prefix(&format!("kite/{gateway}/"))?;
    (!rest.contains('/') && rest != "status" && rest != "events").then(|| rest.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_slave_does_not_stall_the_others_on_its_bus() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let pair = SerialPair::start(dir.path(), "line").await;
    let _slaves = modbus_rtu_device(&pair.device_end, meter_image());
    let devices = bus("rs485", &pair.kite_end)
        + &rtu_device("meter-1", "rs485", 1)
        + &rtu_device("meter-2", "rs485", 2)
        + &rtu_device("meter-3", "rs485", 3); // no such slave: never answers
    let mut sub = Subscriber::connect(broker.port, "kite/gw-rtu/#", "rtu-test", false).await;
    let config = kite_config(dir.path(), "gw-rtu", broker.port, &devices).replace(
        "flush_timeout = \"2s\"",
        "flush_timeout = \"2s\"\nstatus_interval = \"1s\"",
    );
    let kite = Kite::start(kite_bin(), dir.path(), &config);

    let dead = sub.next_on("kite/gw-rtu/meter-3", |_| true).await;
    let error = dead["points"]["energy"]["error"].as_str().unwrap();
    assert_eq!(dead["points"]["energy"]["quality"], "bad");
    assert!(error.contains("no response"), "{error}");

    // Kite may have asked before pymodbus had the port open; count from a
    // status taken once the live slaves answer.
    let before = sub
        .next_on("kite/gw-rtu/status", |s| {
            s["devices"]["meter-1"]["reads"].as_u64() > Some(0)
                && s["devices"]["meter-2"]["reads"].as_u64() > Some(0)
        })
        .await;

    // From here on, every reading of the live slaves is good (the dead one's
    // timeouts garble nothing), and they are read far more often than the
    // quarantined one is probed.
    let mut counts = std::collections::HashMap::<String, usize>::new();
    while counts.get("meter-1").copied().unwrap_or(0) < 30 {
        let (topic, message) = sub.next_message().await;
        let Some(device) = telemetry_device(&topic, "gw-rtu") else {
            continue;
        };
        if device != "meter-3" {
            assert!(is_good(&message, "energy"), "{device}: {message}");
            assert_eq!(message["points"]["energy"]["value"], 100_000);
            assert_eq!(message["points"]["setpoint"]["value"], 21.5);
        }
        *counts.entry(device).or_default() += 1;
    }
    let probes = counts.get("meter-3").copied().unwrap_or(0);
    assert!(counts["meter-2"] >= 20, "{counts:?}");
    assert!(
        30 >= 2 * probes,
        "the dead slave was polled as often as the live ones: {counts:?}"
    );

    let status = sub
        .next_on("kite/gw-rtu/status", |s| {
            s["devices"]["meter-3"]["timeouts"].as_u64() >= Some(2)
        })
        .await;
    assert_eq!(
        status["devices"]["meter-3"]["state"], "quarantined",
        "{status}"
    );
    assert_eq!(status["devices"]["meter-1"]["state"], "polling");
    for live in ["meter-1", "meter-2"] {
        for counter in ["timeouts", "errors"] {
            let (was, is) = (
                &before["devices"][live][counter],
                &status["devices"][live][counter],
            );
            assert_eq!(was, is, "{live} {counter}: {status}");
        }
    }
    assert_eq!(status["buses"]["rs485"]["state"], "open");
    assert!(kite.log().contains("device quarantined"), "{}", kite.log());

    // Writes share the line with the polls and still go through.
    write_setpoint(&mut sub, "kite/gw-rtu/meter-2", 23.5).await;
    // Each unit has its own registers: meter-1 is untouched.
    let other = sub.next_on("kite/gw-rtu/meter-1", |_| true).await;
    assert_eq!(other["points"]["setpoint"]["value"], 21.5);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unplugged_port_is_reported_and_polling_resumes_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let mut pair = SerialPair::start(dir.path(), "usb").await;
    let slave = modbus_rtu_device(&pair.device_end, meter_image());
    let devices = bus("usb-485", &pair.kite_end) + &rtu_device("meter-1", "usb-485", 1);
    let mut sub = Subscriber::connect(broker.port, "kite/gw-usb/#", "usb-test", false).await;
    let config = kite_config(dir.path(), "gw-usb", broker.port, &devices).replace(
        "flush_timeout = \"2s\"",
        "flush_timeout = \"2s\"\nstatus_interval = \"1s\"",
    );
    let kite = Kite::start(kite_bin(), dir.path(), &config);
    sub.next_on("kite/gw-usb/meter-1", |m| is_good(m, "energy"))
        .await;

    drop(slave);
    pair.unplug().await;
    let bad = sub
        .next_on("kite/gw-usb/meter-1", |m| !is_good(m, "energy"))
        .await;
    assert_eq!(bad["points"]["energy"]["quality"], "bad");
    sub.next_on("kite/gw-usb/status", |s| {
        s["buses"]["usb-485"]["state"] == "closed"
            && s["buses"]["usb-485"]["link_failures"].as_u64() >= Some(1)
    })
    .await;

    pair.plug_in().await;
    let _slave = modbus_rtu_device(&pair.device_end, meter_image());
    let back = sub
        .next_on("kite/gw-usb/meter-1", |m| is_good(m, "energy"))
        .await;
    assert_eq!(back["points"]["energy"]["value"], 100_000);
    // The polls that fell due while the port was gone are not reported as
    // an oversubscribed bus.
    let status = sub
        .next_on("kite/gw-usb/status", |s| {
            s["buses"]["usb-485"]["state"] == "open"
        })
        .await;
    assert_eq!(status["buses"]["usb-485"]["missed_polls"], 0, "{status}");
    assert!(kite.log().contains("link failed"), "{}", kite.log());
    assert!(
        kite.log().matches("link open").count() >= 2,
        "{}",
        kite.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rtu_over_tcp_polls_several_units_through_one_converter() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_converter, port) = modbus_rtu_over_tcp_device(meter_image()).await;
    let device = |name: &str, unit: u8| {
        format!(
            "[[devices]]\nname = \"{name}\"\nprotocol = \"modbus-rtu-over-tcp\"\naddress = \"127.0.0.1:{port}\"\nunit_id = {unit}\npoll_interval = \"200ms\"\ntimeout = \"500ms\"\n\
             [[devices.points]]\nname = \"energy\"\naddress = 0\ntype = \"u32\"\n\
             [[devices.points]]\nname = \"setpoint\"\naddress = 4\ntype = \"i16\"\nscale = 0.1\nwritable = true\n\n"
        )
    };
    let devices = device("meter-1", 1) + &device("meter-2", 2);
    let mut sub = Subscriber::connect(broker.port, "kite/gw-conv/#", "conv-test", false).await;
    let _kite = Kite::start(
        kite_bin(),
        dir.path(),
        &kite_config(dir.path(), "gw-conv", broker.port, &devices),
    );
    for meter in ["meter-1", "meter-2"] {
        let message = sub
            .next_on(&format!("kite/gw-conv/{meter}"), |_| true)
            .await;
        assert_eq!(message["points"]["energy"]["value"], 100_000, "{message}");
    }
    write_setpoint(&mut sub, "kite/gw-conv/meter-1", -4.5).await;
}

/// Opens the device end of a pair for the test to play the instrument.
fn instrument_port(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_lines_become_points_and_garbage_is_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let pair = SerialPair::start(dir.path(), "scale").await;
    let devices = format!(
        "{}[[devices]]\nname = \"probe\"\nprotocol = \"serial\"\nbus = \"com1\"\nmax_frame = 64\ntimeout = \"500ms\"\n\
         decode = \"regex\"\npattern = '^T=(?P<temp>-?\\d+\\.\\d+);N=(?P<n>\\d+)$'\n\
         [[devices.points]]\nname = \"temp\"\nunit = \"degC\"\n\
         [[devices.points]]\nname = \"n\"\ntype = \"i64\"\n",
        bus("com1", &pair.kite_end)
    );
    let mut sub = Subscriber::connect(broker.port, "kite/gw-raw/#", "raw-test", false).await;
    let config = kite_config(dir.path(), "gw-raw", broker.port, &devices).replace(
        "flush_timeout = \"2s\"",
        "flush_timeout = \"2s\"\nstatus_interval = \"1s\"",
    );
    let _kite = Kite::start(kite_bin(), dir.path(), &config);
    sub.next_on("kite/gw-raw/status", |s| s["devices"]["probe"].is_object())
        .await;

    let mut port = instrument_port(&pair.device_end);
    let overlong = "x".repeat(200) + "\n";
    let mut input: Vec<u8> = Vec::new();
    input.extend_from_slice(b"T=21.5;N=1\r\n");
    input.extend_from_slice(b"garbage line\n");
    input.extend_from_slice(overlong.as_bytes());
    input.extend_from_slice(&[0xff, 0x00, 0xfe, b'\n']);
    input.extend_from_slice(b"T=abc;N=2\n");
    input.extend_from_slice(b"T=22.5;N=3\n");
    input.extend_from_slice(b"T=23.");
    port.write_all(&input).unwrap();

    // Good frames become points, in order, whatever came between them.
    let mut seen = Vec::new();
    let check = |message: &Value, seen: &mut Vec<i64>| {
        if !is_good(message, "n") {
            return;
        }
        let n = message["points"]["n"]["value"].as_i64().unwrap();
        let expected = match n {
            1 => 21.5,
            3 => 22.5,
            _ => -4.25,
        };
        assert_eq!(message["points"]["temp"]["value"], expected, "{message}");
        assert_eq!(message["points"]["temp"]["unit"], "degC");
        seen.push(n);
    };
    // The unfinished frame is dropped when the line goes silent.
    let wanted_discards = overlong.len() as u64 + 5;
    loop {
        let (topic, message) = sub.next_message().await;
        match topic.as_str() {
            "kite/gw-raw/probe" => check(&message, &mut seen),
            "kite/gw-raw/status"
                if message["devices"]["probe"]["discarded_bytes"].as_u64()
                    >= Some(wanted_discards) =>
            {
                let errors = message["devices"]["probe"]["errors"].as_u64();
                assert!(errors >= Some(3), "{message}");
                break;
            }
            _ => {}
        }
    }
    port.write_all(b"T=-4.25;N=5\n").unwrap();
    while seen.last() != Some(&5) {
        let message = sub.next_on("kite/gw-raw/probe", |_| true).await;
        check(&message, &mut seen);
    }
    assert_eq!(seen, [1, 3, 5]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queried_instrument_and_a_gnss_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let scale = SerialPair::start(dir.path(), "scale").await;
    let gnss = SerialPair::start(dir.path(), "gnss").await;
    let devices = format!(
        "{}{}[[devices]]\nname = \"scale\"\nprotocol = \"serial\"\nbus = \"com-scale\"\nrequest = \"W?\\r\\n\"\npoll_interval = \"200ms\"\ntimeout = \"300ms\"\n\
         framing = \"markers\"\nstart = [2]\nend = [3]\n\
         decode = \"regex\"\npattern = '^(?P<weight>[0-9.]+) kg (?P<stable>[SU])$'\n\
         [[devices.points]]\nname = \"weight\"\nunit = \"kg\"\n\
         [[devices.points]]\nname = \"stable\"\ntype = \"string\"\n\n\
         [[devices]]\nname = \"gnss\"\nprotocol = \"serial\"\nbus = \"com-gnss\"\ndelimiter = \"\\r\\n\"\ndecode = \"nmea\"\n",
        bus("com-scale", &scale.kite_end),
        bus("com-gnss", &gnss.kite_end),
    );
    let mut sub = Subscriber::connect(broker.port, "kite/gw-inst/#", "inst-test", false).await;
    let _kite = Kite::start(
        kite_bin(),
        dir.path(),
        &kite_config(dir.path(), "gw-inst", broker.port, &devices),
    );

    // The scale answers each query, the first time with noise before the frame.
    let scale_end = scale.device_end.clone();
    let answers = std::thread::spawn(move || {
        let mut port = instrument_port(&scale_end);
        let mut queries = 0;
        let mut pending = Vec::new();
        let mut chunk = [0u8; 64];
        while queries < 3 {
            let n = port.read(&mut chunk).unwrap();
            pending.extend_from_slice(&chunk[..n]);
            while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                assert_eq!(&pending[..end], b"W?");
                pending.drain(..end + 2);
                queries += 1;
                let reply: &[u8] = if queries == 1 {
                    b"\x15noise\x0212.50 kg S\x03"
                } else {
                    b"\x0212.75 kg U\x03"
                };
                port.write_all(reply).unwrap();
            }
        }
    });
    let first = sub
        .next_on("kite/gw-inst/scale", |m| is_good(m, "weight"))
        .await;
    assert_eq!(first["points"]["weight"]["value"], 12.5, "{first}");
    assert_eq!(first["points"]["stable"]["value"], "S");
    let later = sub
        .next_on("kite/gw-inst/scale", |m| {
            m["points"]["weight"]["value"] == 12.75
        })
        .await;
    assert_eq!(later["points"]["stable"]["value"], "U");
    answers.join().unwrap();
    // Nobody answers any more: the points go bad with the reason.
    let silent = sub
        .next_on("kite/gw-inst/scale", |m| !is_good(m, "weight"))
        .await;
    let error = silent["points"]["weight"]["error"].as_str().unwrap();
    assert!(error.contains("no reply"), "{error}");

    let mut receiver = instrument_port(&gnss.device_end);
    receiver
        .write_all(
            b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*00\r\n\
              $GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n\
              $GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n",
        )
        .unwrap();
    let rmc = sub
        .next_on("kite/gw-inst/gnss", |m| {
            m["points"]["fix_valid"].is_object()
        })
        .await;
    let latitude = rmc["points"]["latitude"]["value"].as_f64().unwrap();
    let longitude = rmc["points"]["longitude"]["value"].as_f64().unwrap();
    assert!((latitude - 48.1173).abs() < 1e-6, "{rmc}");
    assert!((longitude - 11.516_667).abs() < 1e-6, "{rmc}");
    assert_eq!(rmc["points"]["fix_valid"]["value"], true);
    let gga = sub
        .next_on("kite/gw-inst/gnss", |m| {
            m["points"]["satellites"].is_object()
        })
        .await;
    assert_eq!(gga["points"]["satellites"]["value"], 8);
    assert_eq!(gga["points"]["altitude"]["value"], 545.4);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversubscribed_bus_says_so_and_serves_every_device_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let pair = SerialPair::start(dir.path(), "busy").await;
    let _slaves = modbus_rtu_device(&pair.device_end, meter_image());
    // A 50 ms silent interval allows at most 20 transactions a second; the
    // two devices ask for 20 each.
    let devices = bus("busy", &pair.kite_end)
        .replace("baud = 19200", "baud = 19200\nframe_gap = \"50ms\"")
        + &rtu_device("meter-1", "busy", 1)
            .replace("poll_interval = \"200ms\"", "poll_interval = \"50ms\"")
        + &rtu_device("meter-2", "busy", 2)
            .replace("poll_interval = \"200ms\"", "poll_interval = \"50ms\"");
    let mut sub = Subscriber::connect(broker.port, "kite/gw-busy/#", "busy-test", false).await;
    let config = kite_config(dir.path(), "gw-busy", broker.port, &devices).replace(
        "flush_timeout = \"2s\"",
        "flush_timeout = \"2s\"\nstatus_interval = \"1s\"",
    );
    let kite = Kite::start(kite_bin(), dir.path(), &config);

    let status = sub
        .next_on("kite/gw-busy/status", |s| {
            s["buses"]["busy"]["missed_polls"].as_u64() > Some(0)
        })
        .await;
    assert_eq!(status["buses"]["busy"]["state"], "open", "{status}");
    let mut counts = std::collections::HashMap::<String, usize>::new();
    while counts.values().sum::<usize>() < 40 {
        let (topic, message) = sub.next_message().await;
        if let Some(device) = telemetry_device(&topic, "gw-busy") {
            assert!(is_good(&message, "energy"), "{device}: {message}");
            *counts.entry(device).or_default() += 1;
        }
    }
    // Earliest deadline first: neither device starves the other.
    assert!(
        counts["meter-1"] >= 15 && counts["meter-2"] >= 15,
        "{counts:?}"
    );
    assert!(kite.log().contains("bus oversubscribed"), "{}", kite.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_codec_plugin_decodes_a_binary_protocol() {
    let examples = crate::plugin_builds::examples();
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let pair = SerialPair::start(dir.path(), "meter").await;
    let devices = format!(
        "{}[[devices]]\nname = \"flowmeter\"\nprotocol = \"serial\"\nbus = \"com-meter\"\n\
         framing = \"length-prefix\"\nlength_offset = 1\nlength_adjust = 1\nmax_frame = 64\n\
         decode = \"codec\"\ncodec = \"{}\"\n\
         codec_config = {{ points = {{ \"1\" = {{ name = \"flow\", scale = 0.5, unit = \"m3/h\" }} }} }}\n",
        bus("com-meter", &pair.kite_end),
        examples.join("kite_example_meter_codec.wasm").display()
    );
    let mut sub = Subscriber::connect(broker.port, "kite/gw-codec/#", "codec-test", false).await;
    let config = kite_config(dir.path(), "gw-codec", broker.port, &devices).replace(
        "flush_timeout = \"2s\"",
        "flush_timeout = \"2s\"\nstatus_interval = \"1s\"",
    );
    let _kite = Kite::start(kite_bin(), dir.path(), &config);
    sub.next_on("kite/gw-codec/status", |s| {
        s["devices"]["flowmeter"]["state"] == "polling"
    })
    .await;

    let frame = |value: i32| {
        let mut frame = vec![0xA5, 5, 1];
        frame.extend_from_slice(&value.to_be_bytes());
        frame.push(frame.iter().fold(0, |x, b| x ^ b));
        frame
    };
    let mut corrupted = frame(99);
    corrupted[4] ^= 0x01;
    let mut port = instrument_port(&pair.device_end);
    for bytes in [frame(25), corrupted, frame(-8)] {
        port.write_all(&bytes).unwrap();
    }
    let first = sub.next_on("kite/gw-codec/flowmeter", |_| true).await;
    assert_eq!(first["points"]["flow"]["value"], 12.5, "{first}");
    assert_eq!(first["points"]["flow"]["unit"], "m3/h");
    let second = sub.next_on("kite/gw-codec/flowmeter", |_| true).await;
    assert_eq!(second["points"]["flow"]["value"], -4.0, "{second}");
    let status = sub
        .next_on("kite/gw-codec/status", |s| {
            s["devices"]["flowmeter"]["errors"].as_u64() >= Some(1)
        })
        .await;
    let error = status["devices"]["flowmeter"]["last_error"]
        .as_str()
        .unwrap();
    assert!(error.contains("checksum"), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_restarts_a_changed_serial_bus_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let pair = SerialPair::start(dir.path(), "line").await;
    let _slaves = modbus_rtu_device(&pair.device_end, meter_image());
    let mut sub = Subscriber::connect(broker.port, "kite/gw-rebus/#", "rebus", false).await;
    let config = kite_config(
        dir.path(),
        "gw-rebus",
        broker.port,
        &(bus("rs485", &pair.kite_end) + &rtu_device("meter-1", "rs485", 1)),
    );
    let _kite = Kite::start(kite_bin(), dir.path(), &config);
    sub.next_on("kite/gw-rebus/meter-1", |m| is_good(m, "energy"))
        .await;

    // A second meter on the same line: the bus restarts, and its port,
    // released by the old task, opens again for the new one.
    std::fs::write(
        Kite::config_path(dir.path()),
        config.clone() + &rtu_device("meter-2", "rs485", 2),
    )
    .unwrap();
    let output = kite_reload(kite_bin(), dir.path());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("bus rs485: restarted"), "{text}");
    for meter in ["meter-2", "meter-1"] {
        sub.next_on(&format!("kite/gw-rebus/{meter}"), |m| is_good(m, "energy"))
            .await;
    }
}
