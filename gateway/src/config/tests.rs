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
    let text = format!("{MINIMAL}{body}");
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
