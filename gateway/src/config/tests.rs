//! The config's rules, one broken line at a time.

use super::parse::parse_url;
use super::*;

const MINIMAL: &str =
    "[gateway]\nid = \"gw\"\ndata_dir = \"/tmp/kite\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n";

#[test]
fn minimal_config_takes_documented_defaults() {
    let config = from_text(MINIMAL, Path::new("kite.toml")).unwrap();
    assert_eq!(config.mqtt.client_id, "gw");
    assert_eq!(config.mqtt.topic_prefix, "kite");
    assert_eq!(config.mqtt.port, 1883);
    assert_eq!(config.buffer.max_bytes, 256 << 20);
    assert_eq!(config.buffer.durability, crate::store::Durability::Normal);
    assert_eq!(config.buffer.on_full, crate::store::OnFull::DropOldest);
    assert!(config.warnings.is_empty());
}

#[test]
fn urls_from_text() {
    assert_eq!(
        parse_url("mqtts://broker.example"),
        Ok((true, "broker.example".into(), 8883))
    );
    assert_eq!(
        parse_url("mqtt://[::1]:1884"),
        Ok((false, "::1".into(), 1884))
    );
    assert!(parse_url("http://x").is_err());
    assert!(parse_url("mqtt://x:0").is_err());
}

/// Each broken config must fail with a message that contains `expected`
/// at `line:column`.
fn check_error(body: &str, line: usize, expected: &str) {
    check_error_after(MINIMAL, body, line, expected);
}

/// [`check_error`] for `body` after `base` instead of the minimal config.
fn check_error_after(base: &str, body: &str, line: usize, expected: &str) {
    let text = format!("{base}{body}");
    let error = from_text(&text, Path::new("kite.toml")).expect_err(body);
    let rendered = error.to_string();
    assert!(
        error
            .problems
            .iter()
            .any(|p| p.line == line && p.message.contains(expected)),
        "wanted line {line} with {expected:?}, got:\n{rendered}"
    );
    assert!(rendered.starts_with("kite.toml:"), "{rendered}");
}

/// `settings` at the top of `[mqtt]` must fail with a message that
/// contains `expected` on one of their lines.
fn check_mqtt_error(settings: &str, expected: &str) {
    let text = MINIMAL.replace("[mqtt]\n", &format!("[mqtt]\n{settings}"));
    let error = from_text(&text, Path::new("kite.toml")).expect_err(settings);
    assert!(
        error
            .problems
            .iter()
            .any(|p| p.line >= 5 && p.message.contains(expected)),
        "{settings:?}: {error}"
    );
}

#[test]
fn mistakes_are_named_with_their_line() {
    let device =
        "[[devices]]\nname = \"d\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n";
    check_error(
        "[buffer]\nmax_byte = \"1MiB\"\n",
        7,
        "unknown field `max_byte`",
    );
    check_error("[buffer]\nmax_bytes = \"1 TB\"\n", 7, "invalid size");
    check_error(
        "[buffer]\ndurability = \"sometimes\"\n",
        7,
        "unknown variant `sometimes`",
    );
    assert_eq!(
        from_text(
            &MINIMAL.replace(
                "[mqtt]\n",
                "[mqtt]\nreplay = \"live_first\"\nreplay_rate = 50\n"
            ),
            Path::new("kite.toml")
        )
        .unwrap()
        .mqtt
        .replay,
        Replay::LiveFirst {
            rows_per_second: Some(50)
        }
    );
    for (settings, expected) in [
        ("replay_rate = 50\n", "it needs replay = \"live_first\""),
        (
            "replay = \"live_first\"\nreplay_rate = 0\n",
            "mqtt.replay_rate must be at least 1",
        ),
        ("replay = \"newest\"\n", "unknown variant `newest`"),
    ] {
        check_mqtt_error(settings, expected);
    }
    check_error(
        "[buffer]\non_full = \"thin\"\n",
        7,
        "unknown variant `thin`, expected `drop_oldest` or `downsample`",
    );
    check_error(
        &format!("{device}poll_interval = \"fast\"\n"),
        10,
        "invalid duration",
    );
    check_error(
        &format!("{device}protocol2 = 1\n"),
        10,
        "unknown field `protocol2`",
    );
    check_error(&format!("{device}{device}"), 11, "duplicate device name");
    check_error(
        &format!("{device}[[devices.points]]\nname = \"a\"\naddress = 0\n[[devices.points]]\nname = \"a\"\naddress = 1\n"),
        14,
        "duplicate point name",
    );
    check_error(
        &format!("{device}[[devices.points]]\nname = \"a\"\naddress = 65535\ntype = \"f32\"\n"),
        12,
        "past the last Modbus address",
    );
    check_error(
        &format!("{device}[[devices.points]]\nname = \"a\"\narea = \"coil\"\naddress = 1\ntype = \"f32\"\n"),
        13,
        "does not fit in a coil",
    );
    check_error(
        &format!("{device}[[devices.points]]\nname = \"a\"\narea = \"input\"\naddress = 1\nwritable = true\n"),
        13,
        "read-only",
    );
    check_error(
        &format!("{device}[[devices.points]]\nname = \"a\"\naddress = 70000\n"),
        12,
        "",
    );
    check_error(
        "[[devices]]\nname = \"status\"\nprotocol = \"modbus-tcp\"\naddress = \"h:1\"\n",
        7,
        "reserved",
    );
    check_error(
        "[[devices]]\nname = \"a/b\"\nprotocol = \"modbus-tcp\"\naddress = \"h:1\"\n",
        7,
        "topic level",
    );
    check_error(
        "[[devices]]\nname = \"a\"\nprotocol = \"bacnet\"\naddress = \"h:1\"\n",
        8,
        "unknown variant `bacnet`",
    );
}

const BUS: &str =
    "[[buses]]\nname = \"rs485\"\nport = \"/dev/ttyUSB0\"\nbaud = 9600\nparity = \"even\"\n";

#[test]
fn serial_mistakes_are_named_with_their_line() {
    let rtu = "[[devices]]\nname = \"m\"\nprotocol = \"modbus-rtu\"\nbus = \"rs485\"\n";
    check_error(
        "[[buses]]\nname = \"b\"\nport = \"/dev/x\"\n",
        6,
        "missing field `baud`",
    );
    check_error(&BUS.replace("9600", "9601000"), 9, "expected 50 to 4000000");
    check_error(&format!("{BUS}stop_bits = 3\n"), 11, "expected 1 or 2");
    check_error(&format!("{BUS}{BUS}"), 12, "duplicate bus name");
    check_error(
        &format!("{BUS}{}", rtu.replace("rs485", "rs232")),
        14,
        "no bus named \"rs232\"",
    );
    check_error(
        "[[devices]]\nname = \"m\"\nprotocol = \"modbus-rtu\"\n",
        7,
        "needs `bus`",
    );
    check_error(&format!("{BUS}{rtu}unit_id = 0\n"), 15, "1 to 247");
    check_error(
        &format!("{BUS}{rtu}address = \"h:1\"\n"),
        15,
        "`address` does not apply",
    );
    check_error(
        &format!("{BUS}data_bits = 7\n{rtu}"),
        11,
        "Modbus RTU needs data_bits = 8",
    );
    check_error(
        "[[devices]]\nname = \"m\"\nprotocol = \"modbus-rtu-over-tcp\"\n",
        7,
        "needs `address`",
    );
    let serial = "[[devices]]\nname = \"s\"\nprotocol = \"serial\"\nbus = \"rs485\"\n";
    check_error(&format!("{BUS}{serial}"), 12, "needs `decode`");
    check_error(
        &format!("{BUS}{rtu}{serial}decode = \"nmea\"\n"),
        18,
        "a raw instrument needs its port to itself",
    );
    check_error(
        &format!("{BUS}{serial}decode = \"regex\"\npattern = \"(?P<a>\"\n[[devices.points]]\nname = \"a\"\n"),
        16,
        "pattern:",
    );
    check_error(
        &format!("{BUS}{serial}decode = \"regex\"\npattern = \"(?P<a>x)\"\n[[devices.points]]\nname = \"b\"\n"),
        16,
        "pattern:",
    );
    check_error(
        &format!("{BUS}{serial}decode = \"nmea\"\nframing = \"fixed\"\n"),
        16,
        "needs `length`",
    );
    check_error(
        &format!("{BUS}{serial}decode = \"nmea\"\ndelimiter = \"\"\n"),
        12,
        "",
    );
    check_error(
        &format!("{BUS}{serial}decode = \"nmea\"\nunit_id = 2\n"),
        16,
        "`unit_id` does not apply",
    );
    // Keys of raw instruments are mistakes on Modbus devices, each at its line.
    let tcp = "[[devices]]\nname = \"t\"\nprotocol = \"modbus-tcp\"\naddress = \"h:1\"\n";
    for (key, value) in [
        ("length_offset", "1"),
        ("length_width", "2"),
        ("length_endian", "\"little\""),
        ("length_adjust", "-1"),
        ("max_frame", "64"),
    ] {
        check_error(
            &format!("{tcp}{key} = {value}\n"),
            10,
            &format!("`{key}` does not apply to protocol modbus-tcp"),
        );
        check_error(
            &format!("{BUS}{rtu}{key} = {value}\n"),
            15,
            &format!("`{key}` does not apply to protocol modbus-rtu"),
        );
    }
    check_error(
        "max_message_bytes = \"100B\"\n",
        6,
        "mqtt.max_message_bytes must be 1KiB to 16MiB",
    );
}

#[test]
fn devices_are_grouped_by_the_link_that_polls_them() {
    let body = format!(
        "{BUS}\
         [[devices]]\nname = \"a\"\nprotocol = \"modbus-rtu\"\nbus = \"rs485\"\nunit_id = 1\n\
         [[devices]]\nname = \"b\"\nprotocol = \"modbus-rtu\"\nbus = \"rs485\"\nunit_id = 2\n\
         [[devices]]\nname = \"c\"\nprotocol = \"modbus-rtu-over-tcp\"\naddress = \"10.0.0.9:4001\"\nunit_id = 1\n\
         [[devices]]\nname = \"d\"\nprotocol = \"modbus-rtu-over-tcp\"\naddress = \"10.0.0.9:4001\"\nunit_id = 2\n\
         [[devices]]\nname = \"e\"\nprotocol = \"modbus-tcp\"\naddress = \"10.0.0.5:502\"\n\
         [[buses]]\nname = \"gps\"\nport = \"/dev/ttyS1\"\nbaud = 4800\n\
         [[devices]]\nname = \"g\"\nprotocol = \"serial\"\nbus = \"gps\"\ndelimiter = \"\\r\\n\"\ndecode = \"nmea\"\n"
    );
    let config = from_text(&format!("{MINIMAL}{body}"), Path::new("kite.toml")).unwrap();
    let links: Vec<(&str, Vec<&str>)> = config
        .modbus
        .iter()
        .map(|bus| (&*bus.name, bus.devices.iter().map(|d| &*d.name).collect()))
        .collect();
    assert_eq!(
        links,
        [
            ("rs485", vec!["a", "b"]),
            ("10.0.0.9:4001", vec!["c", "d"]),
            ("e", vec!["e"])
        ]
    );
    let kite_modbus::Link::Serial(line) = &config.modbus[0].link else {
        panic!("{:?}", config.modbus[0].link)
    };
    assert_eq!(
        (line.baud, line.parity),
        (9600, kite_core::serial::Parity::Even)
    );
    assert_eq!(config.instruments.len(), 1);
    assert_eq!(config.instruments[0].decode, Decode::Nmea);
    assert_eq!(config.instruments[0].spec.line.baud, 4800);
    assert_eq!(config.device_count(), 6);
}

#[test]
fn missing_sections_and_syntax_errors_have_positions() {
    let error = from_text("[gateway]\nid = \"gw\"\n", Path::new("k.toml")).unwrap_err();
    assert!(error.to_string().contains("missing field"), "{error}");
    let error = from_text("[gateway\n", Path::new("k.toml")).unwrap_err();
    assert_eq!(error.problems[0].line, 1);
}

#[test]
fn plaintext_off_host_is_refused_unless_insecure() {
    let text = MINIMAL.replace("127.0.0.1", "broker.example");
    let error = from_text(&text, Path::new("kite.toml")).unwrap_err();
    assert_eq!((error.problems[0].line, error.problems[0].column), (5, 7));
    assert!(
        error.problems[0].message.contains("plaintext")
            && error.problems[0].message.contains("mqtt.insecure"),
        "{error}"
    );
    let config = from_text(&format!("{text}insecure = true\n"), Path::new("kite.toml")).unwrap();
    assert_eq!(config.warnings.len(), 1);
}

#[test]
fn problems_without_a_place_are_printed_without_one() {
    let text = format!("{MINIMAL}[plugin_trust]\nrequire_signed = true\n");
    let error = from_text(&text, Path::new("kite.toml")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "kite.toml: plugin_trust.require_signed needs at least one of plugin_trust.trusted_keys"
    );
}

#[test]
fn parsing_reads_no_file_and_resolving_names_each_one_missing() {
    let text = format!(
        "{MINIMAL}username = \"u\"\npassword_file = \"missing\"\n\
         [[plugins]]\nname = \"p\"\npath = \"gone.wasm\"\ninputs = [\"a/b\"]\n"
    );
    let path = Path::new("/nowhere/kite.toml");
    let mut report = Report::new(&text);
    let (config, files) = parse(&text, path, &mut report).unwrap();
    assert!(report.problems.is_empty());
    assert_eq!(config.mqtt.password, None);
    assert_eq!(files.components.len(), 1);
    let error = from_text(&text, path).unwrap_err();
    let places: Vec<(usize, &str)> = error
        .problems
        .iter()
        .map(|p| (p.line, p.message.as_str()))
        .collect();
    assert_eq!(
        places,
        [
            (7, "mqtt.password_file: no such file /nowhere/missing"),
            (10, "no such plug-in file /nowhere/gone.wasm"),
        ]
    );
}

#[test]
fn ble_sensors_take_documented_defaults() {
    let text = format!(
        "{MINIMAL}[[devices]]\nname = \"fridge\"\nprotocol = \"ble\"\naddress = \"aa:bb:cc:dd:ee:ff\"\ndecoder = \"ruuvi\"\npoints = [\"temperature\", \"rssi\"]\n"
    );
    let config = from_text(&text, Path::new("kite.toml")).unwrap();
    assert_eq!(config.device_count(), 1);
    let ble = config.ble.expect("a BLE device starts scanning");
    assert_eq!(ble.spec.adapter, "hci0");
    assert_eq!(ble.spec.scan, kite_ble::Scan::Passive);
    assert!(!ble.spec.discovery);
    assert_eq!(ble.spec.restart_after, Duration::from_secs(60));
    let device = &ble.devices[0];
    assert_eq!(device.spec.address.to_string(), "AA:BB:CC:DD:EE:FF");
    assert_eq!(device.spec.stale_after, Duration::from_secs(600));
    assert_eq!(device.spec.min_interval, Duration::ZERO);
    assert_eq!(
        device.spec.points.as_deref(),
        Some(&["temperature".to_string(), "rssi".to_string()][..])
    );
    // No BLE at all: no scanning.
    assert!(from_text(MINIMAL, Path::new("kite.toml"))
        .unwrap()
        .ble
        .is_none());
}

#[test]
fn ble_mistakes_are_named_with_their_line() {
    let ble = |extra: &str| {
        format!("[[devices]]\nname = \"s\"\nprotocol = \"ble\"\naddress = \"AA:BB:CC:DD:EE:FF\"\n{extra}")
    };
    check_error(
        &ble("decoder = \"xiaomi\"\n"),
        10,
        "expected one of \"bthome\"",
    );
    check_error(&ble(""), 7, "needs `decoder`");
    check_error(
        "[[devices]]\nname = \"s\"\nprotocol = \"ble\"\naddress = \"AA:BB:CC:DD:EE\"\ndecoder = \"atc\"\n",
        9,
        "expected a Bluetooth address",
    );
    check_error(
        &ble("decoder = \"ruuvi\"\nbind_key_file = \"k\"\n"),
        11,
        "`bind_key_file` is for decoder = \"bthome\"",
    );
    check_error(
        &ble("decoder = \"ruuvi\"\npoll_interval = \"1s\"\n"),
        11,
        "`poll_interval` does not apply",
    );
    check_error(
        &ble("decoder = \"ruuvi\"\n[[devices.points]]\nname = \"t\"\nwritable = true\n"),
        13,
        "cannot be written",
    );
    check_error(&ble("decoder = \"codec\"\n"), 7, "needs `codec`");
    check_error("[ble]\nscan = \"loud\"\n", 7, "unknown variant");
    check_error("[ble]\nrestart_after = \"1s\"\n", 7, "at least 5s");
    check_error("[ble]\nadapter = \"hci0/x\"\n", 7, "adapter name");
    check_error(
        "[[devices]]\nname = \"m\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\ndecoder = \"ruuvi\"\n",
        10,
        "`decoder` does not apply",
    );
}

#[test]
fn bind_keys_are_read_when_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{MINIMAL}[[devices]]\nname = \"s\"\nprotocol = \"ble\"\naddress = \"AA:BB:CC:DD:EE:FF\"\ndecoder = \"bthome\"\nbind_key_file = \"s.key\"\n"
    );
    let path = dir.path().join("kite.toml");
    let missing = from_text(&text, &path).unwrap_err().to_string();
    assert!(
        missing.contains("kite.toml:11:") && missing.contains("s.key"),
        "{missing}"
    );
    std::fs::write(dir.path().join("s.key"), "not hex").unwrap();
    let bad = from_text(&text, &path).unwrap_err().to_string();
    assert!(bad.contains("32 hex characters"), "{bad}");
    std::fs::write(
        dir.path().join("s.key"),
        "231d39c1d7cc1ab1aee224cd096db932\n",
    )
    .unwrap();
    let config = from_text(&text, &path).unwrap();
    let Some(BleDecoder::Format { bind_key, .. }) = &config.ble.unwrap().devices[0].decoder else {
        panic!("a built-in decoder");
    };
    assert_eq!(bind_key.unwrap()[..2], [0x23, 0x1d]);
}

#[test]
fn gatt_points_are_read_on_an_interval_or_notified() {
    let text = format!(
        "{MINIMAL}[[devices]]\nname = \"probe\"\nprotocol = \"ble\"\naddress = \"AA:BB:CC:DD:EE:01\"\n\
         gatt = [\n  {{ service = \"181a\", characteristic = \"2a6e\", name = \"temperature\", type = \"i16\", scale = 0.01, unit = \"degC\", interval = \"60s\" }},\n  \
         {{ service = \"6e400001-b5a3-f393-e0a9-e50e24dcca9e\", characteristic = \"6E400003-B5A3-F393-E0A9-E50E24DCCA9E\", name = \"level\", type = \"u32\", order = \"big\", notify = true }},\n]\n"
    );
    let config = from_text(&text, Path::new("kite.toml")).unwrap();
    let device = &config.ble.unwrap().devices[0];
    assert!(device.decoder.is_none(), "GATT alone needs no decoder");
    let [temperature, level] = &device.gatt[..] else {
        panic!("two points: {:?}", device.gatt);
    };
    assert_eq!(temperature.service, "0000181a-0000-1000-8000-00805f9b34fb");
    assert_eq!(
        temperature.characteristic,
        "00002a6e-0000-1000-8000-00805f9b34fb"
    );
    assert_eq!(
        temperature.mode,
        kite_ble::GattMode::Interval(Duration::from_secs(60))
    );
    assert!(!temperature.big_endian);
    assert_eq!(level.characteristic, "6e400003-b5a3-f393-e0a9-e50e24dcca9e");
    assert_eq!(level.mode, kite_ble::GattMode::Notify);
    assert!(level.big_endian);

    let gatt = |entry: &str| {
        format!("[[devices]]\nname = \"p\"\nprotocol = \"ble\"\naddress = \"AA:BB:CC:DD:EE:01\"\ngatt = [{entry}]\n")
    };
    check_error(
        &gatt("{ service = \"18\", characteristic = \"2a6e\", name = \"t\", interval = \"5s\" }"),
        10,
        "expected a UUID",
    );
    check_error(
        &gatt("{ service = \"181a\", characteristic = \"2a6e\", name = \"t\" }"),
        10,
        "needs `interval`",
    );
    check_error(
        &gatt("{ service = \"181a\", characteristic = \"2a6e\", name = \"t\", interval = \"5s\", notify = true }"),
        10,
        "not both",
    );
    check_error(
        &gatt("{ service = \"181a\", characteristic = \"2a6e\", name = \"t\", type = \"u24\", notify = true }"),
        10,
        "expected bool, u8",
    );
    check_error(
        &gatt(
            "{ service = \"181a\", characteristic = \"2a6e\", name = \"t\", interval = \"100ms\" }",
        ),
        10,
        "at least 1s",
    );
}

#[test]
fn zigbee_takes_documented_defaults_and_names_its_mistakes() {
    let text = format!(
        "{MINIMAL}[zigbee]\nport = \"/dev/ttyACM0\"\n\
         [[devices]]\nname = \"plug\"\nprotocol = \"zigbee\"\naddress = \"0x00124B0012345678\"\n\
         [[devices.points]]\nname = \"on\"\nwritable = true\n\
         [[devices]]\nname = \"weather\"\nprotocol = \"zigbee\"\naddress = \"00:12:4b:00:aa:bb:cc:dd\"\npoints = [\"temperature\", \"humidity\"]\nstale_after = \"30m\"\n"
    );
    let config = from_text(&text, Path::new("kite.toml")).unwrap();
    let zigbee = config.zigbee.expect("[zigbee] configured");
    assert_eq!((zigbee.baud, zigbee.channel), (115_200, 15));
    assert_eq!((zigbee.pan_id, zigbee.extended_pan_id), (None, None));
    assert!(!zigbee.permit_join);
    let [plug, weather] = &zigbee.devices[..] else {
        panic!("two devices");
    };
    assert_eq!(plug.ieee, 0x0012_4b00_1234_5678);
    assert_eq!(plug.writable, ["on"]);
    assert_eq!(plug.points, None, "a table only makes a point writable");
    assert_eq!(plug.stale_after, Duration::from_secs(7200));
    assert_eq!(weather.ieee, 0x0012_4b00_aabb_ccdd);
    assert_eq!(
        weather.points.as_deref(),
        Some(&["temperature".to_string(), "humidity".to_string()][..])
    );
    assert_eq!(weather.stale_after, Duration::from_secs(1800));

    let hex = format!(
        "{MINIMAL}[zigbee]\nport = \"/dev/ttyACM0\"\npan_id = 0x1a2b\nextended_pan_id = \"0xdddddddddddddddd\"\nchannel = 25\n"
    );
    let zigbee = from_text(&hex, Path::new("kite.toml"))
        .unwrap()
        .zigbee
        .unwrap();
    assert_eq!(zigbee.pan_id, Some(0x1a2b));
    assert_eq!(zigbee.extended_pan_id, Some(0xdddd_dddd_dddd_dddd));

    check_error(
        "[zigbee]\nport = \"/dev/x\"\nchannel = 27\n",
        8,
        "expected 11 to 26",
    );
    check_error(
        "[zigbee]\nport = \"/dev/x\"\npan_id = 0xffff\n",
        8,
        "other than 0xffff",
    );
    check_error(
        "[zigbee]\nport = \"/dev/x\"\nextended_pan_id = \"nope\"\n",
        8,
        "64-bit number",
    );
    let device = |extra: &str| {
        format!("[zigbee]\nport = \"/dev/x\"\n[[devices]]\nname = \"d\"\nprotocol = \"zigbee\"\n{extra}")
    };
    check_error(&device("address = \"0x12\"\n"), 11, "IEEE address");
    check_error(&device(""), 9, "needs `address`");
    check_error(
        &device("address = \"0x00124b0012345678\"\n[[devices.points]]\nname = \"temperature\"\nwritable = true\n"),
        14,
        "only `on` and `level` can",
    );
    check_error(
        &device("address = \"0x00124b0012345678\"\npoll_interval = \"1s\"\n"),
        12,
        "`poll_interval` does not apply",
    );
    check_error(
        "[[devices]]\nname = \"d\"\nprotocol = \"zigbee\"\naddress = \"0x00124b0012345678\"\n",
        0,
        "need a [zigbee] section",
    );
    check_error(
        "[[devices]]\nname = \"zigbee\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n",
        7,
        "reserved",
    );
}

#[test]
fn secrets_come_from_files_credentials_or_the_environment_never_the_config() {
    check_error(
        "username = \"u\"\npassword = \"hunter2\"\n",
        7,
        "mqtt.password written in the config is refused",
    );
    check_error(
        "[http]\ntoken = \"t\"\n",
        7,
        "http.token written in the config is refused",
    );
    check_error(
        "username = \"u\"\npassword_env = \"A\"\npassword_credential = \"b\"\n",
        8,
        "give one of mqtt.password_file, mqtt.password_credential and mqtt.password_env",
    );
    check_error(
        "password_env = \"KITE_TEST_UNSET_PASSWORD\"\n",
        5,
        "mqtt.password needs mqtt.username",
    );
    check_error(
        "username = \"u\"\npassword_credential = \"a/b\"\n",
        7,
        "expected a credential's name",
    );
    let env = format!("{MINIMAL}username = \"u\"\npassword_env = \"KITE_TEST_UNSET_PASSWORD\"\n");
    let unset = from_text(&env, Path::new("kite.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        unset.contains("KITE_TEST_UNSET_PASSWORD is not set"),
        "{unset}"
    );

    // A systemd credential, found by name in $CREDENTIALS_DIRECTORY; the
    // error names the credential, never its value.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mqtt-password"), "s3cret-value\n").unwrap();
    let text = format!("{MINIMAL}username = \"u\"\npassword_credential = \"mqtt-password\"\n");
    // The TLS client key as a credential too, the certificate as a file.
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["kite".to_string()])
        .unwrap()
        .self_signed(&key_pair)
        .unwrap();
    let cert_path = dir.path().join("client.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(dir.path().join("mqtt-key"), key_pair.serialize_pem()).unwrap();
    let tls = |keys: &str| {
        let text = MINIMAL.replace("mqtt://", "mqtts://")
            + &format!("ca_file = {cert_path:?}\ncert_file = {cert_path:?}\n{keys}");
        from_text(&text, Path::new("kite.toml"))
    };
    let refusal = |keys: &str| tls(keys).unwrap_err().to_string();
    // The test process's environment is shared: a variable no other test reads.
    std::env::set_var("CREDENTIALS_DIRECTORY", dir.path());
    let config = from_text(&text, Path::new("kite.toml")).unwrap();
    let with_key = tls("key_credential = \"mqtt-key\"\n");
    let missing = refusal("key_credential = \"no-such-key\"\n");
    std::env::remove_var("CREDENTIALS_DIRECTORY");
    let with_key = with_key.unwrap();
    let client_auth = with_key.mqtt.tls.unwrap().files.client_auth.unwrap();
    assert_eq!(client_auth.1, dir.path().join("mqtt-key"));
    assert!(
        missing.contains("mqtt.key_credential: no such file"),
        "{missing}"
    );
    let unset = refusal("key_credential = \"mqtt-key\"\n");
    assert!(
        unset.contains("mqtt.key_credential \"mqtt-key\": no systemd credentials here"),
        "{unset}"
    );
    let both = refusal("key_file = \"k.pem\"\nkey_credential = \"mqtt-key\"\n");
    assert!(
        both.contains("give one of mqtt.key_file and mqtt.key_credential"),
        "{both}"
    );
    assert_eq!(
        config.mqtt.password.as_ref().map(Secret::expose),
        Some("s3cret-value")
    );
    assert!(
        !format!("{config:?}").contains("s3cret-value"),
        "the value is not in Debug output"
    );
}

#[test]
fn points_reported_by_exception_take_their_rules_and_defaults() {
    let text = format!(
        "{MINIMAL}[[devices]]\nname = \"d\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n\
         [[devices.points]]\nname = \"a\"\naddress = 0\nreport = \"change\"\n\
         [[devices.points]]\nname = \"b\"\naddress = 1\ndeadband = 0.5\nmax_silence = \"1m\"\n\
         [[devices.points]]\nname = \"c\"\naddress = 2\n"
    );
    let config = from_text(&text, Path::new("kite.toml")).unwrap();
    let rules = &config.reports["d"];
    assert_eq!(rules.len(), 2, "c is reported always");
    assert_eq!(
        rules["a"],
        kite_core::ReportRule {
            deadband: 0.0,
            max_silence: std::time::Duration::from_secs(600)
        }
    );
    assert_eq!(
        rules["b"],
        kite_core::ReportRule {
            deadband: 0.5,
            max_silence: std::time::Duration::from_secs(60)
        }
    );
    let device =
        "[[devices]]\nname = \"d\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n[[devices.points]]\nname = \"a\"\naddress = 0\n";
    check_error(
        &format!("{device}max_silence = \"1m\"\n"),
        13,
        "deadband and max_silence are for points reported by exception",
    );
    check_error(
        &format!("{device}deadband = -1.0\n"),
        13,
        "deadband -1: expected a number of at least 0",
    );
    check_error(
        &format!("{device}report = \"sometimes\"\n"),
        13,
        "unknown variant `sometimes`",
    );
}

#[test]
fn sparkplug_needs_its_section_and_names_its_node() {
    let sparkplug = MINIMAL.replace("[mqtt]\n", "[mqtt]\nformat = \"sparkplug\"\n");
    let config = from_text(
        &format!("{sparkplug}[sparkplug]\ngroup_id = \"plant-1\"\n"),
        Path::new("kite.toml"),
    )
    .unwrap();
    assert_eq!(
        config.mqtt.sparkplug,
        Some(SparkplugConfig {
            group_id: "plant-1".into(),
            edge_node_id: "gw".into(),
            primary_host_id: None,
        }),
        "the edge node is the gateway unless named"
    );
    assert_eq!(
        from_text(MINIMAL, Path::new("kite.toml"))
            .unwrap()
            .mqtt
            .sparkplug,
        None,
        "JSON is the default"
    );
    check_error(
        "[sparkplug]\ngroup_id = \"plant\"\n",
        6,
        "it needs mqtt.format = \"sparkplug\"",
    );
    check_error(
        "[sparkplug]\ngroup_id = \"plant/1\"\n",
        6,
        "it needs mqtt.format",
    );
    for (body, line, expected) in [
        ("", 5, "needs a [sparkplug] section with group_id"),
        (
            "[sparkplug]\ngroup_id = \"a/b\"\n",
            8,
            "sparkplug.group_id \"a/b\" must be",
        ),
        (
            "[sparkplug]\ngroup_id = \"a\"\nprimary_host_id = \"#\"\n",
            9,
            "sparkplug.primary_host_id",
        ),
        ("[sparkplug]\ngroup = \"a\"\n", 8, "unknown field `group`"),
    ] {
        check_error_after(&sparkplug, body, line, expected);
    }
    let compact = sparkplug.replace("[mqtt]\n", "[mqtt]\njson = \"compact\"\n");
    check_error_after(
        &compact,
        "[sparkplug]\ngroup_id = \"a\"\n",
        5,
        "is a JSON layout",
    );
}

#[test]
fn mqtt5_is_chosen_by_version_and_its_properties_need_it() {
    let v5 = MINIMAL.replace(
        "[mqtt]\n",
        "[mqtt]\nversion = 5\nsession_expiry = \"1h\"\nmessage_expiry = \"10m\"\n",
    );
    assert_eq!(
        from_text(&v5, Path::new("kite.toml")).unwrap().mqtt.v5,
        Some(Mqtt5 {
            session_expiry: Duration::from_secs(3600),
            message_expiry: Some(Duration::from_secs(600)),
        })
    );
    let plain = MINIMAL.replace("[mqtt]\n", "[mqtt]\nversion = 5\n");
    assert_eq!(
        from_text(&plain, Path::new("kite.toml")).unwrap().mqtt.v5,
        Some(Mqtt5 {
            session_expiry: Duration::ZERO,
            message_expiry: None,
        }),
        "no session kept, nothing expires, unless asked"
    );
    assert_eq!(
        from_text(MINIMAL, Path::new("kite.toml")).unwrap().mqtt.v5,
        None
    );
    for (settings, expected) in [
        ("version = 4\n", "expected 3 (MQTT 3.1.1) or 5 (MQTT 5)"),
        ("session_expiry = \"1h\"\n", "it needs mqtt.version = 5"),
        (
            "version = 3\nmessage_expiry = \"1m\"\n",
            "mqtt.message_expiry is an MQTT 5 property",
        ),
    ] {
        check_mqtt_error(settings, expected);
    }
}
