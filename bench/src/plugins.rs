//! Plug-in costs, measured in-process with the real host.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use kite_plugins::bindings::kite::plugin::types::{Reading, Value};
use kite_plugins::sandbox::{Execution, Limits, Sandbox};
use kite_plugins::{start_instance, PluginSpec};

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn readings(n: usize) -> Vec<Reading> {
    (0..n)
        .map(|i| Reading {
            device: format!("boiler-{}", i % 10),
            point: "temperature".into(),
            value: Some(Value::Float(20.0 + (i % 7) as f64)),
            error: None,
            timestamp: i as i64,
            unit: Some("degC".into()),
        })
        .collect()
}

pub fn run(examples: &Path) -> anyhow::Result<()> {
    let wasm = std::fs::read(examples.join("kite_example_average.wasm")).with_context(|| {
        format!(
            "{}: build the examples first (cargo build --release --target wasm32-wasip2 --manifest-path plugins/examples/Cargo.toml)",
            examples.display()
        )
    })?;
    let dir = std::env::temp_dir().join(format!("kite-bench-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let spec = PluginSpec {
        name: "average".into(),
        wasm: examples.join("kite_example_average.wasm"),
        inputs: Vec::new(),
        limits: Limits {
            time: Duration::from_secs(1),
            ..Limits::default()
        },
        config_json: r#"{"window": 10, "every": 10}"#.into(),
        state_path: dir.join("state.sqlite3"),
        trust: Default::default(),
        max_message_bytes: kite_plugins::DEFAULT_MAX_MESSAGE_BYTES,
    };
    for execution in [Execution::Native, Execution::Interpreter] {
        let sandbox = Sandbox::with_execution(None, execution)?;
        let component = sandbox.compile(&wasm)?;
        let start = || start_instance(&sandbox, &component, &spec);
        let instantiation: Vec<f64> = (0..50)
            .map(|_| {
                let t = Instant::now();
                drop(start());
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        println!(
            "{execution:?}: instantiate + init: median {:.0} µs",
            median(instantiation)
        );
        let mut instance = start()?;
        for batch in [1usize, 10, 100, 1000] {
            let input = readings(batch);
            let rounds = (200_000 / batch).clamp(20, 20_000);
            let per_reading: Vec<f64> = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..rounds {
                        instance.process(&input).expect("process");
                    }
                    t.elapsed().as_secs_f64() * 1e9 / (rounds * batch) as f64
                })
                .collect();
            println!(
                "{execution:?}: batch {batch:>4}: median {:.0} ns per reading",
                median(per_reading)
            );
        }
    }
    interruption_overhead().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A tight loop in wasm under three engines: no time bound, epoch
/// interruption (Kite's choice) and fuel.
fn interruption_overhead() -> wasmtime::Result<()> {
    let wat = r#"(module (func (export "work") (param $n i64) (result i64)
        (local $acc i64)
        (loop $l
            local.get $acc local.get $n i64.xor i64.const 31 i64.mul local.set $acc
            local.get $n i64.const 1 i64.sub local.tee $n
            i64.const 0 i64.ne br_if $l)
        local.get $acc))"#;
    let module_bytes = wat::parse_str(wat).map_err(|e| wasmtime::format_err!("{e}"))?;
    let mut baseline = None;
    for mode in ["none", "epoch", "fuel"] {
        let mut config = wasmtime::Config::new();
        config
            .epoch_interruption(mode == "epoch")
            .consume_fuel(mode == "fuel");
        let engine = wasmtime::Engine::new(&config)?;
        let module = wasmtime::Module::new(&engine, &module_bytes)?;
        let mut store = wasmtime::Store::new(&engine, ());
        if mode == "fuel" {
            store.set_fuel(u64::MAX)?;
        }
        if mode == "epoch" {
            store.set_epoch_deadline(u64::MAX / 2);
        }
        let instance = wasmtime::Instance::new(&mut store, &module, &[])?;
        let work = instance.get_typed_func::<i64, i64>(&mut store, "work")?;
        let times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                work.call(&mut store, 200_000_000).expect("work");
                t.elapsed().as_secs_f64()
            })
            .collect();
        let time = median(times);
        let base = *baseline.get_or_insert(time);
        println!(
            "time bound {mode:>5}: median {:.3} s for 200M iterations, {:.2}x the unbounded loop",
            time,
            time / base
        );
    }
    Ok(())
}
