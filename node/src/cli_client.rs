//! The subcommands' side of the control API: find the daemon through
//! `control.json` and make one HTTP/1.1 request to it on loopback.
//!
//! A dozen lines of HTTP over a `TcpStream` serve here: one request per
//! process, to a server we wrote, on loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::control::{CONTROL_FILE, ControlInfo};

/// Largest answer read from the daemon.
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// Why a subcommand could not talk to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No `control.json`: no daemon was started with this data directory.
    #[error("no shoal daemon is running for {dir} (no {CONTROL_FILE}); start one with `shoal up --data-dir {dir}`")]
    NoDaemon {
        /// The data directory.
        dir: String,
    },
    /// `control.json` is unreadable or malformed.
    #[error("cannot read {path}: {reason}")]
    BadControlFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Nothing answers at the recorded address.
    #[error(
        "the daemon at {addr} does not answer ({reason}); it may have stopped without cleaning up — start it again with `shoal up`"
    )]
    Unreachable {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The daemon took the request but did not answer in time.
    #[error(
        "the daemon at {addr} did not answer within {secs} s; it may still be working on it (see its log, or `shoal status`)"
    )]
    Busy {
        /// The address.
        addr: String,
        /// How long the call waited.
        secs: u64,
    },
    /// The daemon answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The daemon's answer is not the type this CLI reads for that call.
    #[error("the daemon's answer to {path} is not what this shoal expects ({reason}); is the daemon another version?")]
    Malformed {
        /// The API path called.
        path: String,
        /// What did not parse.
        reason: String,
    },
}

/// Sends `method path` with an optional `body` to the daemon of `data_dir`
/// and reads the answer as a `T`, one of the response types of
/// [`crate::control`] (the ones the daemon writes).
pub fn ask<T: serde::de::DeserializeOwned>(
    data_dir: &Path,
    method: &str,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> Result<T, ControlError> {
    let malformed = |e: serde_json::Error| ControlError::Malformed {
        path: path.to_string(),
        reason: e.to_string(),
    };
    let body = body.map(serde_json::to_value).transpose().map_err(malformed)?;
    let value = call(data_dir, method, path, body.as_ref())?;
    serde_json::from_value(value).map_err(malformed)
}

/// How long to wait for the daemon's answer to any call, unless
/// `SHOAL_TIMEOUT` (seconds) says otherwise. Lookups can take a while on a
/// large swarm, and a minute is generous for them; shares and downloads,
/// which take as long as their size makes them take, run as jobs that the
/// CLI polls, each poll a short call.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// [`ANSWER_WITHIN`], or `SHOAL_TIMEOUT` seconds if that is set to a
/// whole number above 0.
fn answer_within() -> Duration {
    std::env::var("SHOAL_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|secs| *secs > 0)
        .map_or(ANSWER_WITHIN, Duration::from_secs)
}

/// Sends `method path` with an optional JSON `body` to the daemon of
/// `data_dir`; returns the JSON answer.
pub fn call(
    data_dir: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ControlError> {
    let file = data_dir.join(CONTROL_FILE);
    let shown = file.display().to_string();
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ControlError::NoDaemon {
                dir: data_dir.display().to_string(),
            });
        }
        Err(e) => {
            return Err(ControlError::BadControlFile {
                path: shown,
                reason: e.to_string(),
            });
        }
    };
    let info: ControlInfo = serde_json::from_str(&text).map_err(|e| ControlError::BadControlFile {
        path: shown,
        reason: e.to_string(),
    })?;
    let unreachable = |e: std::io::Error| ControlError::Unreachable {
        addr: info.addr.to_string(),
        reason: e.to_string(),
    };
    let mut stream = TcpStream::connect_timeout(&info.addr, Duration::from_secs(2)).map_err(unreachable)?;
    let wait = answer_within();
    stream.set_read_timeout(Some(wait)).map_err(unreachable)?;
    stream.set_write_timeout(Some(wait)).map_err(unreachable)?;
    // Connected: from here a silent daemon is a busy one, not a gone one.
    let unreachable = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ControlError::Busy {
            addr: info.addr.to_string(),
            secs: wait.as_secs(),
        },
        _ => unreachable(e),
    };
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        info.addr,
        info.token,
        payload.len()
    );
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut raw)
        .map_err(unreachable)?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    if !(200..300).contains(&status) {
        let message = value.get("error").and_then(|e| e.as_str()).map(str::to_owned);
        return Err(ControlError::Refused(
            message.unwrap_or_else(|| format!("the daemon answered HTTP {status}")),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot daemon on loopback that answers any request with
    /// `status` and `body`, and a data directory whose `control.json`
    /// points at it.
    fn fake_daemon(name: &str, status: &str, body: &'static str) -> std::path::PathBuf {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = std::env::temp_dir().join(format!("shoal-cli-client-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let info = ControlInfo {
            addr: listener.local_addr().unwrap(),
            token: "t".into(),
        };
        std::fs::write(dir.join(CONTROL_FILE), serde_json::to_vec(&info).unwrap()).unwrap();
        let status = status.to_string();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        });
        dir
    }

    #[test]
    fn an_answer_of_the_expected_type_is_read_typed() {
        let dir = fake_daemon("typed", "200 OK", r#"{"stored": 3}"#);
        let put: crate::control::PutView = ask(&dir, "POST", "/v1/pin", Some(&())).unwrap();
        assert_eq!(put.stored, 3);
    }

    #[test]
    fn an_answer_of_another_shape_is_refused_naming_the_call() {
        let dir = fake_daemon("malformed", "200 OK", r#"{"unexpected": true}"#);
        let err = ask::<crate::control::Status>(&dir, "GET", "/v1/status", None::<&()>).unwrap_err();
        assert!(
            matches!(&err, ControlError::Malformed { path, .. } if path == "/v1/status"),
            "{err}"
        );
    }

    #[test]
    fn an_error_answer_is_the_daemons_message() {
        let dir = fake_daemon("refused", "400 Bad Request", r#"{"error": "bad key"}"#);
        let err = ask::<crate::control::PutView>(&dir, "POST", "/v1/pin", None::<&()>).unwrap_err();
        assert_eq!(err.to_string(), "bad key");
    }
}
