use prost::Message;

use super::proto::payload::{metric, Metric};
use super::proto::{DataType, Payload};
use super::*;
use crate::store::Body;
use crate::uplink::stored::readings;

const NO_LIMIT: usize = usize::MAX;

fn declared() -> DeclaredTypes {
    HashMap::from([(
        "boiler".to_string(),
        HashMap::from([
            ("temp".to_string(), DataType::Int16),
            ("setpoint".to_string(), DataType::UInt16),
        ]),
    )])
}

fn row(session: &mut Session, device: &str, ts: i64, json: &str, historical: bool) -> RowOutcome {
    row_within(session, device, ts, json, historical, NO_LIMIT)
}

/// A row of `json` read at `ts`, its DDATA at most `max_payload` bytes.
fn row_within(
    session: &mut Session,
    device: &str,
    ts: i64,
    json: &str,
    historical: bool,
    max_payload: usize,
) -> RowOutcome {
    let body = Body::Text(json.into());
    let points = readings(&body).unwrap();
    session.telemetry(
        device,
        ts,
        &points,
        historical,
        &declared(),
        5_000,
        max_payload,
    )
}

/// A session on a new connection, after its NBIRTH.
fn born() -> Session {
    let mut session = Session::default();
    session.connected(0);
    session.node_birth(0);
    session
}

fn decoded(out: &Out) -> Payload {
    Payload::decode(out.payload.as_slice()).unwrap()
}

fn quality(metric: &Metric) -> Option<u32> {
    let properties = metric.properties.as_ref()?;
    let index = properties.keys.iter().position(|k| k == "Quality")?;
    match properties.values[index].value {
        Some(proto::payload::property_value::Value::IntValue(q)) => Some(q),
        _ => None,
    }
}

#[test]
fn a_device_is_born_with_every_metric_before_its_first_ddata() {
    let mut session = Session::default();
    session.connected(7);
    let nbirth = Payload::decode(session.node_birth(1_000).as_slice()).unwrap();
    assert_eq!(nbirth.seq, Some(0));
    assert_eq!(nbirth.metrics[0].name.as_deref(), Some("bdSeq"));
    assert_eq!(nbirth.metrics[0].value, Some(metric::Value::LongValue(7)));
    assert_eq!(nbirth.metrics[1].name.as_deref(), Some(session::REBIRTH));

    let outcome = row(
        &mut session,
        "boiler",
        900,
        r#"{"temp":{"value":-5,"quality":"good","unit":"degC"},"setpoint":{"value":60,"quality":"good"},"mode":{"value":"auto","quality":"good"}}"#,
        false,
    );
    assert_eq!(outcome.refused, None);
    let kinds: Vec<(Kind, bool)> = outcome
        .messages
        .iter()
        .map(|m| (m.kind, m.carries_row))
        .collect();
    assert_eq!(kinds, [(Kind::DBirth, false), (Kind::DData, true)]);
    let birth = decoded(&outcome.messages[0]);
    assert_eq!(birth.seq, Some(1));
    let names: Vec<_> = birth
        .metrics
        .iter()
        .map(|m| m.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["temp", "setpoint", "mode"]);
    let types: Vec<_> = birth.metrics.iter().map(|m| m.datatype.unwrap()).collect();
    assert_eq!(
        types,
        [
            DataType::Int16 as u32,
            DataType::UInt16 as u32,
            DataType::String as u32
        ],
        "declared types, and the inferred one"
    );
    assert_eq!(birth.metrics[0].value, Some(metric::Value::IntValue(65531)));
    assert_eq!(birth.metrics[0].timestamp, Some(900));
    assert_eq!(quality(&birth.metrics[0]), Some(192));
    let aliases: Vec<_> = birth.metrics.iter().map(|m| m.alias.unwrap()).collect();

    let data = decoded(&outcome.messages[1]);
    assert_eq!((data.seq, data.timestamp), (Some(2), Some(900)));
    assert!(data
        .metrics
        .iter()
        .all(|m| m.name.is_none() && m.datatype.is_none()));
    let data_aliases: Vec<_> = data.metrics.iter().map(|m| m.alias.unwrap()).collect();
    assert_eq!(data_aliases, aliases);
    assert!(
        data.metrics.iter().all(|m| m.properties.is_none()),
        "good quality the birth announced is not repeated"
    );

    // The next row is only a DDATA, with the next seq.
    let next = row(
        &mut session,
        "boiler",
        1_900,
        r#"{"temp":{"value":-4,"quality":"good"}}"#,
        false,
    );
    assert_eq!(next.messages.len(), 1);
    assert_eq!(decoded(&next.messages[0]).seq, Some(3));
}

#[test]
fn a_bad_reading_is_null_with_its_quality_and_good_again_says_so() {
    let mut session = born();
    row(
        &mut session,
        "boiler",
        1,
        r#"{"temp":{"value":20,"quality":"good"},"setpoint":{"value":1,"quality":"good"}}"#,
        false,
    );
    let bad = row(
        &mut session,
        "boiler",
        2,
        r#"{"temp":{"quality":"bad","error":"exception 2"},"setpoint":{"value":1,"quality":"good"}}"#,
        false,
    );
    let data = decoded(&bad.messages[0]);
    assert_eq!(data.metrics[0].is_null, Some(true));
    assert_eq!(data.metrics[0].value, None);
    assert_eq!(quality(&data.metrics[0]), Some(0));
    assert_eq!(quality(&data.metrics[1]), None);
    let stale = row(
        &mut session,
        "boiler",
        3,
        r#"{"temp":{"value":20,"quality":"stale","error":"not heard for 10m"},"setpoint":{"value":1,"quality":"good"}}"#,
        false,
    );
    let data = decoded(&stale.messages[0]);
    assert_eq!(quality(&data.metrics[0]), Some(500));
    assert_eq!(data.metrics[0].value, Some(metric::Value::IntValue(20)));
    let good = row(
        &mut session,
        "boiler",
        4,
        r#"{"temp":{"value":21,"quality":"good"}}"#,
        false,
    );
    assert_eq!(quality(&decoded(&good.messages[0]).metrics[0]), Some(192));
}

#[test]
fn a_device_found_down_dies_once_and_is_born_again_when_it_answers() {
    let mut session = born();
    row(
        &mut session,
        "boiler",
        1,
        r#"{"temp":{"value":20,"quality":"good"}}"#,
        false,
    );
    let down = r#"{"temp":{"quality":"bad","error":"timeout"}}"#;
    let death = row(&mut session, "boiler", 2, down, false);
    assert_eq!(death.messages.len(), 1);
    assert_eq!(
        (death.messages[0].kind, death.messages[0].carries_row),
        (Kind::DDeath, true)
    );
    assert!(decoded(&death.messages[0]).metrics.is_empty());
    assert!(
        row(&mut session, "boiler", 3, down, false)
            .messages
            .is_empty(),
        "dead already"
    );
    // A replayed row of a dead device is data, not a death.
    let replayed = row(&mut session, "boiler", 0, down, true);
    let kinds: Vec<Kind> = replayed.messages.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [Kind::DBirth, Kind::DData]);
    assert_eq!(
        decoded(&replayed.messages[1]).metrics[0].is_historical,
        Some(true)
    );
    let back = row(
        &mut session,
        "boiler",
        4,
        r#"{"temp":{"value":22,"quality":"good"}}"#,
        false,
    );
    let kinds: Vec<Kind> = back.messages.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [Kind::DData], "the replayed row's birth stands");
    let again = row(&mut session, "boiler", 5, down, false);
    let back = row(
        &mut session,
        "boiler",
        6,
        r#"{"temp":{"value":22,"quality":"good"}}"#,
        false,
    );
    assert_eq!(again.messages[0].kind, Kind::DDeath);
    let kinds: Vec<Kind> = back.messages.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [Kind::DBirth, Kind::DData]);
    let birth = decoded(&back.messages[0]);
    assert_eq!(
        birth.metrics[0].value,
        Some(metric::Value::IntValue(22)),
        "born with the value it came back with"
    );
}

#[test]
fn a_new_metric_or_a_value_of_another_type_births_the_device_again_with_the_same_aliases() {
    let mut session = born();
    let first = row(
        &mut session,
        "pump",
        1,
        r#"{"speed":{"value":10,"quality":"good"}}"#,
        false,
    );
    let alias = decoded(&first.messages[0]).metrics[0].alias;
    let widened = row(
        &mut session,
        "pump",
        2,
        r#"{"speed":{"value":10.5,"quality":"good"}}"#,
        false,
    );
    let birth = decoded(&widened.messages[0]);
    assert_eq!(widened.messages[0].kind, Kind::DBirth);
    assert_eq!(birth.metrics[0].datatype, Some(DataType::Double as u32));
    assert_eq!(birth.metrics[0].alias, alias);
    let added = row(
        &mut session,
        "pump",
        3,
        r#"{"flow":{"value":3,"quality":"good"}}"#,
        false,
    );
    let birth = decoded(&added.messages[0]);
    assert_eq!(birth.metrics.len(), 2, "every metric, the new one too");
    assert_ne!(
        birth.metrics[1].alias, alias,
        "aliases are unique in the node"
    );
}

#[test]
fn seq_wraps_after_255_and_every_connection_starts_at_the_nbirth() {
    let mut session = born();
    let mut seqs = Vec::new();
    for ts in 0..300 {
        let outcome = row(
            &mut session,
            "boiler",
            ts,
            r#"{"temp":{"value":1,"quality":"good"}}"#,
            false,
        );
        seqs.extend(outcome.messages.iter().map(|m| decoded(m).seq.unwrap()));
    }
    // The first row's DBIRTH, then 300 DDATA.
    let expected: Vec<u64> = (1..=301).map(|i| i % 256).collect();
    assert_eq!(seqs, expected);
    session.connected(1);
    assert_eq!(
        Payload::decode(session.node_birth(0).as_slice())
            .unwrap()
            .seq,
        Some(0)
    );
    let births = session.device_births(0);
    assert_eq!(births.len(), 1, "the known device is born after the NBIRTH");
    assert_eq!(decoded(&births[0]).seq, Some(1));
    assert_eq!(
        decoded(&births[0]).metrics[0].value,
        Some(metric::Value::IntValue(1))
    );
}

#[test]
fn a_ddata_over_the_size_limit_is_refused_without_taking_a_seq() {
    let mut session = born();
    let refused = row_within(
        &mut session,
        "boiler",
        1,
        r#"{"temp":{"value":1,"quality":"good"}}"#,
        false,
        4,
    );
    assert!(refused.refused.is_some());
    assert_eq!(refused.messages.len(), 1, "the birth still goes");
    let next = row(
        &mut session,
        "boiler",
        2,
        r#"{"temp":{"value":1,"quality":"good"}}"#,
        false,
    );
    assert_eq!(decoded(&next.messages[0]).seq, Some(2));
}

#[test]
fn commands_name_metrics_or_address_them_by_alias() {
    let mut session = born();
    let born = row(
        &mut session,
        "boiler",
        1,
        r#"{"temp":{"value":-1,"quality":"good"},"setpoint":{"value":60,"quality":"good"}}"#,
        false,
    );
    let birth = decoded(&born.messages[0]);
    let command = Payload {
        timestamp: Some(1),
        metrics: vec![
            Metric {
                alias: birth.metrics[0].alias,
                value: Some(metric::Value::IntValue(65534)),
                ..Metric::default()
            },
            Metric {
                name: Some("setpoint".into()),
                datatype: Some(DataType::UInt16 as u32),
                value: Some(metric::Value::IntValue(70)),
                ..Metric::default()
            },
            Metric {
                alias: Some(999),
                value: Some(metric::Value::IntValue(1)),
                ..Metric::default()
            },
        ],
        ..Payload::default()
    };
    let writes = session.command("boiler", &command.encode_to_vec()).unwrap();
    assert_eq!(
        writes[0],
        ("temp".to_string(), Ok((-2).into())),
        "Int16 from its two's complement"
    );
    assert_eq!(writes[1], ("setpoint".to_string(), Ok(70.into())));
    assert_eq!(writes[2].0, "alias 999");
    assert!(writes[2].1.is_err());
    assert!(session.command("boiler", b"\xff\xff").is_err());
}

#[test]
fn a_rebirth_command_is_recognised() {
    let rebirth = Payload {
        timestamp: Some(1),
        metrics: vec![Metric {
            name: Some(session::REBIRTH.into()),
            datatype: Some(DataType::Boolean as u32),
            value: Some(metric::Value::BooleanValue(true)),
            ..Metric::default()
        }],
        ..Payload::default()
    };
    assert!(asks_rebirth(&rebirth.encode_to_vec()));
    assert!(!asks_rebirth(&Payload::default().encode_to_vec()));
}

#[test]
fn topics_follow_the_namespace() {
    let topics = SparkplugTopics::new("plant", "gw-1");
    assert_eq!(topics.node("NBIRTH"), "spBv1.0/plant/NBIRTH/gw-1");
    assert_eq!(
        topics.device(Kind::DData, "boiler"),
        "spBv1.0/plant/DDATA/gw-1/boiler"
    );
    assert_eq!(topics.dcmd_filter(), "spBv1.0/plant/DCMD/gw-1/+");
    assert_eq!(
        topics.dcmd_device("spBv1.0/plant/DCMD/gw-1/boiler"),
        Some("boiler")
    );
    assert_eq!(topics.dcmd_device("spBv1.0/plant/DCMD/gw-2/boiler"), None);
    assert_eq!(SparkplugTopics::state("scada"), "spBv1.0/STATE/scada");
    assert_eq!(
        HostState::parse(br#"{"online":true,"timestamp":5}"#),
        Some(HostState {
            online: true,
            timestamp: 5
        })
    );
}

#[test]
fn bd_seq_goes_on_across_restarts_and_wraps() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = BdSeq::open(dir.path());
    assert_eq!((first.take(), first.take()), (0, 1));
    let mut restarted = BdSeq::open(dir.path());
    assert_eq!(restarted.take(), 2);
    std::fs::write(dir.path().join("sparkplug-bdseq"), "255\n").unwrap();
    assert_eq!(BdSeq::open(dir.path()).take(), 0);
}
