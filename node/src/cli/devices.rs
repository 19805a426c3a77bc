//! The `shoal device` subcommands: `share`, `unshare`, `ls`, `use`. They
//! call the daemon's `/v1/devices` routes; the daemon serves the devices
//! it shares and forwards a local port to a device it uses (see
//! `shoal_node::devices`).

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use shoal_node::cli_client::ask;
use shoal_node::control::{
    DeviceView, ReleasedView, ShareDeviceRequest, UnshareRequest, UseRequest, UseState, UseView,
};
use shoal_node::settings;

use super::Talk;

/// `shoal device ...`
#[derive(clap::Subcommand, Debug)]
pub(crate) enum DeviceCommand {
    /// Share a device of this machine with the swarm, through one adapter.
    /// Others take it with `shoal device use`: one holder at a time (or
    /// several with --shared), in the order they asked; this peer checks
    /// the holder's token on every connection and every frame.
    Share {
        /// The device's name (letters, digits, - _ . / :).
        name: String,
        /// Its class: `shoal device use --class CLASS` takes any free
        /// device of it, and moves to another if this one's peer fails.
        #[arg(long)]
        class: String,
        /// A local service the device is: HOST:PORT (a printer's IPP port,
        /// a GPU box's API, a database).
        #[arg(long, value_name = "HOST:PORT", group = "adapter")]
        tcp: Option<String>,
        /// A command whose stdin and stdout are the device, run by `sh -c`
        /// for each connection (a serial console through picocom).
        #[arg(long, value_name = "COMMAND", group = "adapter")]
        cmd: Option<String>,
        /// A character device or FIFO, read and written as a stream.
        #[arg(long, value_name = "PATH", group = "adapter")]
        path: Option<String>,
        #[command(flatten)]
        talk: Talk,
    },
    /// Stop sharing a device: its holder loses it at once.
    Unshare {
        /// The device's name.
        name: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Every device in the swarm: name, class, provider, adapter, holders
    /// and how many wait.
    Ls {
        /// Only devices of this class.
        #[arg(long)]
        class: Option<String>,
        #[command(flatten)]
        talk: Talk,
    },
    /// Take a device and reach it: forward a local port to it (--listen,
    /// the default), attach this terminal's stdin/stdout (--stdio), or run
    /// COMMAND with SHOAL_DEVICE_ADDR (the forwarded address) and
    /// SHOAL_DEVICE_TOKEN in its environment. Waits in line while it is
    /// busy; holds the lease until this command ends.
    Use {
        /// The device's name (or --class).
        #[arg(required_unless_present = "class")]
        name: Option<String>,
        /// Any free device of this class; if its peer fails, another.
        #[arg(long, conflicts_with = "name")]
        class: Option<String>,
        /// Share it with other shared holders.
        #[arg(long)]
        shared: bool,
        /// Wait at most this long for it (0: fail at once, naming the
        /// holder). Default: as long as it takes.
        #[arg(long, value_name = "DURATION", value_parser = settings::parse_wait)]
        wait: Option<Duration>,
        /// Forward this local address to the device (default: 127.0.0.1
        /// and a free port, printed).
        #[arg(long, value_name = "127.0.0.1:PORT", conflicts_with = "stdio")]
        listen: Option<String>,
        /// Attach stdin and stdout to the device.
        #[arg(long)]
        stdio: bool,
        #[command(flatten)]
        talk: Talk,
        /// A command to run while the device is held.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

/// The exit code when the device was busy past `--wait` or its lease was
/// lost (EX_TEMPFAIL).
const NOT_NOW: i32 = 75;

/// Runs a `shoal device` subcommand; its exit code.
pub(crate) fn device(command: DeviceCommand) -> anyhow::Result<i32> {
    match command {
        DeviceCommand::Share {
            name,
            class,
            tcp,
            cmd,
            path,
            talk,
        } => {
            if tcp.is_none() && cmd.is_none() && path.is_none() {
                bail!("a device needs one adapter: --tcp HOST:PORT, --cmd COMMAND or --path PATH");
            }
            let body = ShareDeviceRequest {
                name: name.clone(),
                class,
                tcp,
                cmd,
                path,
            };
            let _: ReleasedView = ask(&talk.data_dir, "POST", "/v1/devices", Some(&body))?;
            eprintln!("sharing device {name:?}");
            Ok(0)
        }
        DeviceCommand::Unshare { name, talk } => {
            let _: ReleasedView = ask(
                &talk.data_dir,
                "POST",
                "/v1/devices/unshare",
                Some(&UnshareRequest { name: name.clone() }),
            )?;
            eprintln!("no longer sharing device {name:?}");
            Ok(0)
        }
        DeviceCommand::Ls { class, talk } => {
            let path = match &class {
                Some(c) => format!("/v1/devices?class={c}"),
                None => "/v1/devices".to_string(),
            };
            let devices: Vec<DeviceView> = ask(&talk.data_dir, "GET", &path, None::<&()>)?;
            if talk.json {
                println!("{}", serde_json::to_string(&devices)?);
                return Ok(0);
            }
            if devices.is_empty() {
                println!("no devices shared");
            }
            for d in &devices {
                let holders = if d.holders.is_empty() {
                    "free".to_string()
                } else {
                    d.holders
                        .iter()
                        .map(|h| {
                            format!(
                                "{} (token {}{})",
                                h.peer,
                                h.token,
                                if h.shared { ", shared" } else { "" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!(
                    "{:<24} {:<12} {:<5} {}  {holders}; {} waiting",
                    d.name, d.class, d.adapter, d.provider, d.waiting
                );
            }
            Ok(0)
        }
        DeviceCommand::Use {
            name,
            class,
            shared,
            wait,
            listen,
            stdio,
            talk,
            command,
        } => use_device(&talk, name, class, shared, wait, listen, stdio, &command),
    }
}

fn describe(state: &UseState) -> String {
    match state {
        UseState::Finding => "finding it".into(),
        UseState::Waiting { device, ahead, holders } => format!(
            "waiting for {device:?}, {ahead} ahead; held by {}",
            holders
                .iter()
                .map(|h| format!("{} (token {})", h.peer, h.token))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        UseState::Held { device, token, .. } => format!("holding {device:?} (token {token})"),
        UseState::Lost { reason } => format!("lost: {reason}"),
        UseState::Released => "released".into(),
        UseState::Failed { error } => error.clone(),
    }
}

fn follow(talk: &Talk, n: u64, after: u64, wait_ms: u64) -> anyhow::Result<UseView> {
    Ok(ask(
        &talk.data_dir,
        "GET",
        &format!("/v1/devices/use/{n}?after={after}&wait_ms={wait_ms}"),
        None::<&()>,
    )?)
}

fn stop(talk: &Talk, n: u64) {
    let _: Result<ReleasedView, _> = ask(&talk.data_dir, "DELETE", &format!("/v1/devices/use/{n}"), None::<&()>);
}

#[allow(clippy::too_many_arguments)]
fn use_device(
    talk: &Talk,
    name: Option<String>,
    class: Option<String>,
    shared: bool,
    wait: Option<Duration>,
    listen: Option<String>,
    stdio: bool,
    command: &[String],
) -> anyhow::Result<i32> {
    let body = UseRequest {
        name,
        class,
        shared,
        wait_ms: wait.map(|w| w.as_millis() as u64),
        listen,
    };
    let mut view: UseView = ask(&talk.data_dir, "POST", "/v1/devices/use", Some(&body))?;
    let n = view.session;
    let interrupted = super::on_ctrl_c();
    let mut shown = String::new();
    // Until held.
    let (device, token) = loop {
        let line = describe(&view.state);
        if !talk.json && line != shown {
            eprintln!("{line}");
            shown = line;
        }
        match &view.state {
            UseState::Held { device, token, .. } => break (device.clone(), *token),
            UseState::Failed { .. } | UseState::Lost { .. } | UseState::Released => {
                stop(talk, n);
                return Ok(NOT_NOW);
            }
            _ => {}
        }
        if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
            stop(talk, n);
            return Ok(130);
        }
        view = follow(talk, n, view.version, 1000)?;
    };
    let addr = view.listen.clone();
    if talk.json {
        println!("{}", serde_json::to_string(&view)?);
    } else {
        eprintln!("{addr} reaches device {device:?} (token {token}) until this command ends");
    }
    // A watcher keeps the session alive and says when it is over.
    let over = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    {
        let (data_dir, over) = (talk.data_dir.clone(), over.clone());
        let mut version = view.version;
        std::thread::spawn(move || {
            let talk = Talk { data_dir, json: false };
            loop {
                match follow(&talk, n, version, 1000) {
                    Ok(v) if matches!(v.state, UseState::Held { .. }) => {
                        version = v.version;
                        if let UseState::Held {
                            problem: Some(problem), ..
                        } = &v.state
                        {
                            eprintln!("{problem}");
                        }
                    }
                    Ok(v) => {
                        *over.lock().unwrap_or_else(|p| p.into_inner()) = Some(describe(&v.state));
                        return;
                    }
                    Err(e) => {
                        *over.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(format!("the daemon does not answer: {e}"));
                        return;
                    }
                }
            }
        });
    }
    let is_over = || over.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let code = if !command.is_empty() {
        let (program, args) = command.split_first().context("no command")?;
        let mut child = std::process::Command::new(program)
            .args(args)
            .env("SHOAL_DEVICE_ADDR", &addr)
            .env("SHOAL_DEVICE_TOKEN", token.to_string())
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        // This thread waits for the command (its end is seen at once); a
        // watcher kills it if the session ends first.
        let pid = rustix::process::Pid::from_child(&child);
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (ended, killed, over) = (ended.clone(), killed.clone(), over.clone());
            std::thread::spawn(move || {
                while !ended.load(std::sync::atomic::Ordering::Relaxed) {
                    if over.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                        killed.store(true, std::sync::atomic::Ordering::Relaxed);
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        let status = child.wait()?;
        ended.store(true, std::sync::atomic::Ordering::Relaxed);
        if killed.load(std::sync::atomic::Ordering::Relaxed) {
            let why = is_over().unwrap_or_default();
            eprintln!("device {device:?} {why}: the command was stopped");
            return Ok(NOT_NOW);
        }
        status.code().unwrap_or(128)
    } else if stdio {
        let mut conn = std::net::TcpStream::connect(&addr).with_context(|| format!("cannot reach {addr}"))?;
        let mut reader = conn.try_clone()?;
        std::thread::spawn(move || {
            let mut out = std::io::stdout();
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
            std::process::exit(0);
        });
        let mut input = std::io::stdin();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                let _ = conn.shutdown(std::net::Shutdown::Write);
                // The device's answer may still come: wait for the reader.
                loop {
                    if let Some(why) = is_over() {
                        eprintln!("device {device:?}: {why}");
                        return Ok(NOT_NOW);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            conn.write_all(&buf[..n])?;
        }
    } else {
        loop {
            if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
                break 130;
            }
            if let Some(why) = is_over() {
                eprintln!("device {device:?}: {why}");
                return Ok(NOT_NOW);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    stop(talk, n);
    Ok(code)
}
