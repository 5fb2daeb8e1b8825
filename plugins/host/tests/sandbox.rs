//! The sandbox against hostile plug-ins. They are written in WAT and made
//! into components here with wit-component, so these tests need no wasm
//! compiler target: an infinite loop, a memory bomb, deep recursion, a trap,
//! a flood of outputs, and a plug-in that imports what it was not granted.

use std::path::Path;

mod common;
use common::{component, module, module_with, WASI_IMPORTS};
use std::sync::Arc;
use std::time::Duration;

use kite_core::{PointSample, Reading, Sample, Value};
use kite_plugins::sandbox::{Limits, PluginError, Sandbox};
use kite_plugins::state::StateStore;
use kite_plugins::{
    spawn, Pattern, PluginSpec, RunState, DEFAULT_MAX_MESSAGE_BYTES, MAX_NAME_BYTES, MAX_UNIT_BYTES,
};

fn limits() -> Limits {
    Limits {
        memory_bytes: 4 << 20,
        time: Duration::from_millis(20),
        state_bytes: 1024,
    }
}

fn reading() -> kite_plugins::bindings::kite::plugin::types::Reading {
    kite_plugins::bindings::kite::plugin::types::Reading {
        device: "boiler-1".into(),
        point: "temperature".into(),
        value: Some(kite_plugins::bindings::kite::plugin::types::Value::Float(
            21.5,
        )),
        error: None,
        timestamp: 1,
        unit: None,
    }
}

/// Runs one batch through a fresh instance of `wat`'s component.
fn run_once(sandbox: &Sandbox, wat: &str, world: &str) -> Result<usize, PluginError> {
    run_once_within(sandbox, wat, world, limits())
}

fn run_once_within(
    sandbox: &Sandbox,
    wat: &str,
    world: &str,
    limits: Limits,
) -> Result<usize, PluginError> {
    let dir = tempfile::tempdir().unwrap();
    let component = sandbox.compile(&component(wat, world))?;
    let state = StateStore::open(&dir.path().join("state.sqlite3"), "test", 1024).unwrap();
    let mut instance = sandbox.instantiate(&component, "test", limits, state)?;
    instance.init("{}")?;
    let output = instance.process(&[reading()])?;
    Ok(output.readings.len() + output.events.len())
}

#[test]
fn hostile_plugins_fail_as_ordinary_errors() {
    let sandbox = Sandbox::new(None).unwrap();
    let check = |body: &str, expected: fn(&PluginError) -> bool| {
        let result = run_once(&sandbox, &module("", body), "plugin");
        assert!(
            matches!(&result, Err(e) if expected(e)),
            "{body}: {result:?}"
        );
    };
    assert_eq!(
        run_once(&sandbox, &module("", "i32.const 16"), "plugin"),
        Ok(0),
        "a well-behaved plug-in"
    );
    check("(loop $spin (br $spin)) i32.const 16", |e| {
        matches!(e, PluginError::Timeout(_))
    });
    check("unreachable", |e| matches!(e, PluginError::Trap(_)));
    check("i32.const 0 call $deep", |e| {
        matches!(e, PluginError::StackOverflow)
    });
    check(
        "(loop $bomb i32.const 16 memory.grow drop br $bomb) i32.const 16",
        |e| matches!(e, PluginError::OutOfMemory(_)),
    );
    // 20,000 derived readings of 56 bytes each at 64 KiB: more than one batch may produce.
    let flood = "i32.const 40 memory.grow drop \
                 i32.const 16 i32.const 65536 i32.store \
                 i32.const 20 i32.const 20000 i32.store \
                 i32.const 16";
    assert_eq!(
        run_once(&sandbox, &module("", flood), "plugin"),
        Ok(20_000),
        "the host sees the flood"
    );
    // An import nobody granted: refused at instantiation, before any code runs.
    let hostile = module(
        r#"(import "test:hostile/network" "connect" (func $connect))"#,
        "call $connect i32.const 16",
    );
    let result = run_once(&sandbox, &hostile, "hostile");
    assert!(matches!(&result, Err(PluginError::Import(_))), "{result:?}");
    // After all of that, the same sandbox still runs a good plug-in.
    assert_eq!(
        run_once(&sandbox, &module("", "i32.const 16"), "plugin"),
        Ok(0)
    );
}

#[test]
fn a_start_function_that_never_returns_times_out_at_instantiation() {
    let sandbox = Sandbox::new(None).unwrap();
    let spin = module_with(
        "",
        "(func $spin (loop $forever (br $forever))) (start $spin)",
        "i32.const 16",
    );
    let result = run_once(&sandbox, &spin, "plugin");
    assert!(matches!(result, Err(PluginError::Timeout(_))), "{result:?}");
}

#[test]
fn a_plugin_that_sleeps_is_stopped_at_its_time_limit() {
    let sandbox = Sandbox::new(None).unwrap();
    let sleep_a_minute = module(
        WASI_IMPORTS,
        "(loop $again i64.const 60_000_000_000 call $subscribe_duration call $block br $again) \
         i32.const 16",
    );
    let started = std::time::Instant::now();
    let result = run_once(&sandbox, &sleep_a_minute, "wasi-user");
    assert!(matches!(result, Err(PluginError::Timeout(_))), "{result:?}");
    // The limit is 20 ms: anywhere near the minute means the sleep outlasted it.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "slept past its time limit: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_plugin_gets_no_more_random_bytes_than_it_could_hold() {
    let sandbox = Sandbox::new(None).unwrap();
    // One byte more than its memory limit, refused before the host makes them.
    let body = format!(
        "i64.const {} i32.const 64 call $get_random_bytes i32.const 16",
        limits().memory_bytes + 1
    );
    let result = run_once(&sandbox, &module(WASI_IMPORTS, &body), "wasi-user");
    assert!(
        matches!(&result, Err(PluginError::Trap(m)) if m.contains("exceeds limit")),
        "{result:?}"
    );
    let body = "i64.const 64 i32.const 64 call $get_random_bytes i32.const 16";
    assert_eq!(
        run_once(&sandbox, &module(WASI_IMPORTS, body), "wasi-user"),
        Ok(0)
    );
}

#[test]
fn a_plugin_cannot_pile_up_wasi_resources() {
    let sandbox = Sandbox::new(None).unwrap();
    let timers = |count: u32| {
        let body = format!(
            "(local $i i32) \
             (loop $more \
               i64.const 0 call $subscribe_duration drop \
               local.get $i i32.const 1 i32.add local.tee $i \
               i32.const {count} i32.lt_u br_if $more) \
             i32.const 16"
        );
        // Time enough for thousands of calls, even on a busy machine.
        let limits = Limits {
            time: Duration::from_secs(10),
            ..limits()
        };
        run_once_within(&sandbox, &module(WASI_IMPORTS, &body), "wasi-user", limits)
    };
    assert_eq!(timers(100), Ok(0));
    let result = timers(2_000);
    assert!(
        matches!(&result, Err(PluginError::Trap(m)) if m.contains("resource table")),
        "{result:?}"
    );
}

#[test]
fn the_memory_limit_bounds_all_memories_together() {
    let sandbox = Sandbox::new(None).unwrap();
    // Grows each of three memories by a page, PAGES times over.
    let grow_each = "(local $i i32) \
        (loop $grow \
          i32.const 1 memory.grow $a drop \
          i32.const 1 memory.grow $b drop \
          i32.const 1 memory.grow $c drop \
          local.get $i i32.const 1 i32.add local.tee $i \
          i32.const PAGES i32.lt_u br_if $grow) \
        i32.const 16";
    type Expected = fn(&Result<usize, PluginError>) -> bool;
    let cases: [(&str, &str, String, Expected); 5] = [
        (
            "four memories (the most allowed) within the limit",
            "(memory $a 8) (memory $b 8) (memory $c 8)",
            "i32.const 16".into(),
            |r| r == &Ok(0),
        ),
        (
            // 1.5 MiB each, 4.5 MiB together, limit 4 MiB.
            "initial sizes that fit one by one but not together",
            "(memory $a 24) (memory $b 24) (memory $c 24)",
            "i32.const 16".into(),
            |r| matches!(r, Err(PluginError::OutOfMemory(_))),
        ),
        (
            "growing within the limit",
            "(memory $a 0) (memory $b 0) (memory $c 0)",
            grow_each.replace("PAGES", "16"),
            |r| r == &Ok(0),
        ),
        (
            // 2 MiB each, 6 MiB together.
            "growing several memories past the limit together",
            "(memory $a 0) (memory $b 0) (memory $c 0)",
            grow_each.replace("PAGES", "32"),
            |r| matches!(r, Err(PluginError::OutOfMemory(_))),
        ),
        (
            "more memories than allowed",
            "(memory $a 0) (memory $b 0) (memory $c 0) (memory $d 0)",
            "i32.const 16".into(),
            |r| matches!(r, Err(PluginError::Trap(m)) if m.contains("memory count")),
        ),
    ];
    for (case, memories, body, expected) in cases {
        let result = run_once(&sandbox, &module_with("", memories, &body), "plugin");
        assert!(expected(&result), "{case}: {result:?}");
    }
}

/// A plug-in whose `process` returns one derived reading with a name of
/// `name_bytes`, a unit of `unit_bytes` if any, and a text of `text_bytes`,
/// all of them cut from one run of letters in its memory.
fn one_derived(name_bytes: usize, unit_bytes: Option<usize>, text_bytes: usize) -> String {
    let letters = "a".repeat(2048);
    let unit = match unit_bytes {
        Some(bytes) => format!(
            "i32.const 536 i32.const 1 i32.store8 \
             i32.const 540 i32.const 1024 i32.store \
             i32.const 544 i32.const {bytes} i32.store"
        ),
        None => String::new(),
    };
    // The output record at 16 lists one `derived` at 512: its point at 512,
    // its value (case 4, text) at 520, its unit at 536, no timestamp.
    let body = format!(
        "i32.const 16 i32.const 512 i32.store \
         i32.const 20 i32.const 1 i32.store \
         i32.const 512 i32.const 1024 i32.store \
         i32.const 516 i32.const {name_bytes} i32.store \
         i32.const 520 i32.const 4 i32.store8 \
         i32.const 528 i32.const 1024 i32.store \
         i32.const 532 i32.const {text_bytes} i32.store \
         {unit} \
         i32.const 16"
    );
    module_with(
        "",
        &format!(r#"(data (i32.const 1024) "{letters}")"#),
        &body,
    )
}

#[test]
fn a_plugins_outputs_are_refused_past_their_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(None).unwrap();
    let max_message_bytes = 1024;
    // (what, name bytes, unit bytes, text bytes, accepted)
    let cases = [
        ("longest name", MAX_NAME_BYTES, None, 1, true),
        ("name too long", MAX_NAME_BYTES + 1, None, 1, false),
        ("empty name", 0, None, 1, false),
        ("longest unit", 1, Some(MAX_UNIT_BYTES), 1, true),
        ("unit too long", 1, Some(MAX_UNIT_BYTES + 1), 1, false),
        ("text within the message bound", 1, None, 800, true),
        ("text past the message bound", 1, None, 1000, false),
    ];
    for (what, name, unit, text, accepted) in cases {
        let spec = PluginSpec {
            max_message_bytes,
            ..spec(dir.path(), &one_derived(name, unit, text))
        };
        let component = sandbox
            .compile(&std::fs::read(&spec.wasm).unwrap())
            .unwrap();
        let mut instance = kite_plugins::start_instance(&sandbox, &component, &spec).unwrap();
        let batch = [reading()];
        let output = instance.process(&batch).unwrap();
        assert_eq!(output.readings.len(), 1, "{what}");
        let result = kite_plugins::runner::convert(&spec, output, &batch);
        match result {
            Ok(converted) if accepted => assert_eq!(converted.samples.len(), 1, "{what}"),
            Err(PluginError::OutputTooLarge(_)) if !accepted => {}
            other => panic!("{what}: {other:?}"),
        }
    }
}

fn sample(value: f64) -> Sample {
    Sample {
        device: "boiler-1".into(),
        ts_ms: 1,
        points: vec![PointSample {
            name: "temperature".into(),
            unit: None,
            reading: Reading::Good(Value::Float(value)),
        }],
    }
}

fn spec(dir: &Path, wat: &str) -> PluginSpec {
    let wasm = dir.join("p.wasm");
    std::fs::write(&wasm, component(wat, "plugin")).unwrap();
    PluginSpec {
        name: "p".into(),
        wasm,
        inputs: vec![Pattern::parse("boiler-*/temperature").unwrap()],
        limits: limits(),
        config_json: "{}".into(),
        state_path: dir.join("plugins.sqlite3"),
        trust: Default::default(),
        max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
    }
}

/// Waits (bounded) until `condition` holds.
fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn batches_waiting_for_a_blocked_plugin_are_counted_and_its_output_lost_at_shutdown() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(Sandbox::new(None).unwrap());
    // Room for one output, which nobody takes: the second blocks the plug-in's thread.
    let (outputs, receiver) = tokio::sync::mpsc::channel(1);
    let handle = spawn(sandbox, spec(dir.path(), &one_derived(1, None, 1)), outputs).unwrap();
    let counters = handle.counters.clone();
    handle.offer(&[sample(1.0)]);
    handle.offer(&[sample(2.0)]);
    eventually("the plug-in took both batches", || {
        load(&counters.calls) == 2 && load(&counters.queued) == 0
    });
    handle.offer(&[sample(3.0)]);
    handle.offer(&[sample(4.0)]);
    assert_eq!(load(&counters.queued), 2);
    assert_eq!(load(&counters.lost_batches), 0);
    // The gateway stops: the blocked output is lost, and counted.
    drop(receiver);
    eventually("the blocked output is counted lost", || {
        load(&counters.lost_batches) == 1
    });
    assert_eq!(load(&counters.failures), 0);
    assert_eq!(
        load(&counters.queued),
        2,
        "the waiting batches were never taken"
    );
}

#[test]
fn a_plugin_that_keeps_failing_is_disabled_and_outputs_are_counted_lost() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(Sandbox::new(None).unwrap());
    let (outputs, _receiver) = tokio::sync::mpsc::channel(16);
    let handle = spawn(
        sandbox,
        spec(dir.path(), &module("", "unreachable")),
        outputs,
    )
    .unwrap();
    let counters = handle.counters.clone();
    eventually("five failures disable the plug-in", || {
        handle.offer(&[sample(1.0)]);
        std::thread::sleep(Duration::from_millis(20));
        counters.state() == RunState::Disabled
    });
    assert_eq!(
        counters.failures.load(std::sync::atomic::Ordering::Relaxed),
        5
    );
    assert_eq!(
        counters
            .lost_batches
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
    let skipped = counters
        .skipped_batches
        .load(std::sync::atomic::Ordering::Relaxed);
    handle.offer(&[sample(2.0)]);
    assert_eq!(
        counters
            .skipped_batches
            .load(std::sync::atomic::Ordering::Relaxed),
        skipped + 1
    );
    // Readings nobody subscribed to are not offered at all.
    let other = Sample {
        device: "chiller-1".into(),
        ..sample(3.0)
    };
    handle.offer(&[other]);
    assert_eq!(
        counters
            .skipped_batches
            .load(std::sync::atomic::Ordering::Relaxed),
        skipped + 1
    );
}

/// How many outputs one batch through `wasm` gives, compiled by `sandbox`.
fn outputs_of(sandbox: &Sandbox, wasm: &[u8]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let component = sandbox.compile(wasm).unwrap();
    let state = StateStore::open(&dir.path().join("state.sqlite3"), "test", 1024).unwrap();
    let mut instance = sandbox
        .instantiate(&component, "test", limits(), state)
        .unwrap();
    instance.init("{}").unwrap();
    let output = instance.process(&[reading()]).unwrap();
    output.readings.len() + output.events.len()
}

fn cache_entries(dir: &Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

#[test]
fn compiled_code_in_the_cache_is_loaded_only_when_it_proves_authentic() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("plugin-cache");
    let quiet = component(&module("", "i32.const 16"), "plugin");
    let chatty = component(&one_derived(4, None, 4), "plugin");
    let sandbox = Sandbox::new(Some(&cache)).unwrap();
    assert_eq!(outputs_of(&sandbox, &quiet), 0);
    let quiet_entry = cache_entries(&cache).into_iter().next().expect("kept");
    assert_eq!(outputs_of(&sandbox, &chatty), 1);
    let mut entries = cache_entries(&cache);
    entries.remove(&quiet_entry);
    let chatty_entry = entries.into_iter().next().expect("kept");
    let key = std::fs::metadata(cache.join("key")).unwrap();
    assert_eq!(
        key.permissions().mode() & 0o777,
        0o600,
        "the key is the daemon's alone"
    );
    drop(sandbox);

    // An intact entry stays as it is.
    let kept = std::fs::read(&quiet_entry).unwrap();
    let sandbox = Sandbox::new(Some(&cache)).unwrap();
    assert_eq!(outputs_of(&sandbox, &quiet), 0);
    assert_eq!(std::fs::read(&quiet_entry).unwrap(), kept);

    // Whoever can write the cache puts other compiled code under the quiet
    // plug-in's name, then garbage, then a flipped byte: none of it runs;
    // the plug-in is compiled again and its entry replaced.
    let chatty_code = std::fs::read(&chatty_entry).unwrap();
    let mut flipped = kept.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    for tampered in [chatty_code.clone(), b"not code".to_vec(), flipped] {
        std::fs::write(&quiet_entry, &tampered).unwrap();
        let sandbox = Sandbox::new(Some(&cache)).unwrap();
        assert_eq!(
            outputs_of(&sandbox, &quiet),
            0,
            "the quiet plug-in's own code runs"
        );
        let replaced = std::fs::read(&quiet_entry).unwrap();
        assert_ne!(replaced, tampered, "compiled again and kept");
    }

    // A cache made under another gateway's key is compiled again too.
    std::fs::write(cache.join("key"), [7u8; 32]).unwrap();
    let sandbox = Sandbox::new(Some(&cache)).unwrap();
    assert_eq!(outputs_of(&sandbox, &chatty), 1);
    assert_ne!(std::fs::read(&chatty_entry).unwrap(), chatty_code);
}
