//! `kite demo`, as a new user runs it: simulated devices, plug-ins, the
//! write round trip, a clean stop without a warning, and a private scratch
//! directory that is gone afterwards.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_shows_everything_and_stops_cleanly() {
    let mut demo = tokio::process::Command::new(kite_bin())
        .args(["demo", "--duration", "25s", "--mqtt-port"])
        .arg(free_port().to_string())
        .arg("--http-port")
        .arg(free_port().to_string())
        // The default log filter, as a new user has it.
        .env_remove("KITE_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start kite demo");
    let stderr = demo.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
        all
    });
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut output = Vec::new();
    let mut scratch: Option<PathBuf> = None;
    while let Some(line) = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("the demo keeps printing")
        .unwrap()
    {
        if let Some(buffer) = line.trim().strip_prefix("buffer:") {
            // <scratch>/data/buffer.sqlite3, while the demo runs.
            let dir = PathBuf::from(buffer.trim())
                .ancestors()
                .nth(2)
                .unwrap()
                .to_path_buf();
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with("kite-demo-"), "{name}");
            assert_ne!(
                name,
                format!("kite-demo-{}", demo.id().unwrap()),
                "not named after the pid"
            );
            scratch = Some(dir);
        }
        output.push(line);
    }
    let status = demo.wait().await.unwrap();
    let log = log.await.unwrap();
    assert!(status.success(), "{}", log.join("\n"));
    let text = output.join("\n");
    for topic in [
        "kite/demo-gw/boiler-1 ",
        "kite/demo-gw/boiler-2 ",
        "kite/demo-gw/chiller-1 ",
        "kite/demo-gw/averages ",
        "kite/demo-gw/events ",
    ] {
        assert!(text.contains(topic), "no message on {topic}:\n{text}");
    }
    assert!(
        output
            .iter()
            .any(|l| l.starts_with("kite/demo-gw/boiler-1/set/result ")
                && l.contains(r#""ok":true"#)),
        "{text}"
    );
    let noisy: Vec<&String> = log
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(noisy.is_empty(), "warnings or errors:\n{}", log.join("\n"));
    let scratch = scratch.expect("the demo printed where its buffer is");
    assert!(!scratch.exists(), "{} is left behind", scratch.display());
}
