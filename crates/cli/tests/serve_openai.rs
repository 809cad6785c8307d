//! `moestream serve` driven by the official `openai` Python client (scripts/tests/
//! openai_client.py), whose answers must equal `moestream generate`'s. The client is
//! installed into a virtual environment under target/ by scripts/tests/openai-venv.sh; where
//! Python or the package registry is unavailable the test says so and is skipped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python_with_openai() -> Result<String, String> {
    let venv = repo().join("target/openai-venv");
    let out = Command::new(repo().join("scripts/tests/openai-venv.sh"))
        .arg(&venv)
        .output()
        .map_err(|e| format!("cannot run scripts/tests/openai-venv.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "could not set up the openai client: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn the_openai_client_gets_what_generate_gives() {
    let python = match python_with_openai() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let bin = env!("CARGO_BIN_EXE_moestream");
    let mut child = Command::new(bin)
        .args(["serve", "--port", "0", "--threads", "2"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the server starts");
    let stderr = child.stderr.take().unwrap();
    let _server = Server(child);
    let mut addr = None;
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("on http://").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
            break;
        }
    }
    let addr = addr.expect("the server prints its address");
    // The server logs client errors to stderr: keep reading it so a full pipe never blocks it.
    std::thread::spawn(move || lines.for_each(drop));
    let out = Command::new(python)
        .arg(repo().join("scripts/tests/openai_client.py"))
        .args([
            "--base-url",
            &format!("http://{addr}/v1"),
            "--moestream",
            bin,
        ])
        .output()
        .expect("the client script runs");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("all openai-client checks passed"));
}
