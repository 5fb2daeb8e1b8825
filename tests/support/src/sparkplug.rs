//! A Sparkplug B host application: `tests/peers/sparkplug_host.py`, which
//! decodes every message of a group with pysparkplug 0.6.1 (in the
//! `.venv-sparkplug` venv), checks the session's rules (births before data,
//! seq in order) and can send STATE, NCMD and DCMD messages.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::{repo_root, PATIENCE};

fn sparkplug_python() -> PathBuf {
    crate::venv_python(
        "KITE_SPARKPLUG_PYTHON",
        ".venv-sparkplug",
        "pysparkplug==0.6.1",
    )
}

/// The host application, killed when dropped.
pub struct SparkplugHost {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
}

impl SparkplugHost {
    /// Starts the host on the broker at `port` for `group`; with `host_id`
    /// it can publish its STATE. Returns once it is subscribed.
    pub async fn start(port: u16, group: &str, host_id: Option<&str>) -> Self {
        let mut command = Command::new(sparkplug_python());
        command
            .arg(repo_root().join("tests/peers/sparkplug_host.py"))
            .arg(port.to_string())
            .arg(group)
            .args(host_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("start the Sparkplug host");
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("the Sparkplug host printed {line:?}: {e}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut host = Self {
            child,
            stdin,
            lines,
        };
        host.next("the host to subscribe", |m| m["type"] == "ready")
            .await;
        host
    }

    /// The next message the host decoded that `accept` takes, skipping
    /// others; panics on a violation of the session's rules, or after
    /// [`PATIENCE`].
    pub async fn next(&mut self, what: &str, mut accept: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let message = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap_or_else(|| panic!("the Sparkplug host stopped before {what}"));
            assert_ne!(message["type"], "violation", "{message}");
            if accept(&message) {
                return message;
            }
        }
    }

    /// Every message decoded until `accept` takes one, that one included.
    pub async fn until(
        &mut self,
        what: &str,
        mut accept: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let mut seen = Vec::new();
        self.next(what, |m| {
            seen.push(m.clone());
            accept(m)
        })
        .await;
        seen
    }

    /// Sends a command (see the script's header).
    pub fn send(&mut self, command: Value) {
        writeln!(self.stdin, "{command}").expect("the Sparkplug host reads its commands");
        self.stdin.flush().unwrap();
    }
}

impl Drop for SparkplugHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the metric `name` in a decoded message, if it has it.
pub fn metric<'a>(message: &'a Value, name: &str) -> Option<&'a Value> {
    message["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}
