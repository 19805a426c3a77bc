//! The sandbox, driven directly: small modules written in WAT that try
//! what a job must not do. An integration test, outside `src/`: it drives
//! the engine as the node does, with real processes and the real clock,
//! which the crate itself never reads.

#![cfg(feature = "compute-engine")]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_overlay::Key;

use shoal_resources::compute::engine::*;

/// The tests drive the engine as the node does: real processes, real time.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> std::time::Instant {
    std::time::Instant::now()
}

#[derive(Default)]
struct Collect(Mutex<Vec<(Stream, Vec<u8>)>>);

impl Sink for Collect {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        self.0.lock().unwrap().push((stream, bytes.to_vec()));
    }
}

impl Collect {
    fn text(&self, which: Stream) -> String {
        let all = self.0.lock().unwrap();
        let bytes: Vec<u8> = all
            .iter()
            .filter(|(s, _)| *s == which)
            .flat_map(|(_, b)| b.clone())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn limits() -> Limits {
    Limits {
        memory: 16 << 20,
        timeout: Duration::from_secs(20),
        out_bytes: 1 << 20,
        log_bytes: 64 << 10,
    }
}

fn dir(name: &str) -> JobDir {
    let root = std::env::temp_dir().join(format!("shoal-engine-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    JobDir::create(&root).unwrap()
}

/// A WASI command whose `_start` is `body`, with memory, the imports
/// every test uses, and `data` at address 1024.
fn module(body: &str, data: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "{data}")
  (func (export "_start") {body}))"#
    );
    wat::parse_str(text).unwrap()
}

fn run(engine: &WasmEngine, bytes: &[u8], dir: &JobDir, limits: Limits, cancel: &Cancel) -> (Outcome, Arc<Collect>) {
    let sink = Arc::new(Collect::default());
    let id = Key::of_content(bytes);
    let args = ["job".to_string()];
    let run = Run {
        args: &args,
        env: &[],
        dir,
        limits,
        sink: sink.clone(),
        cancel,
        pause: &Pause::default(),
        clock: wall_clock,
    };
    let outcome = engine.run(id, bytes, run);
    (outcome, sink)
}

/// Writes the `len` bytes at 1024 to `fd`: an iovec at 0.
fn write(fd: u32, len: u32) -> String {
    format!(
        "(i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const {len}))
         (drop (call $fd_write (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 8)))"
    )
}

#[test]
fn a_module_writes_its_output_and_exit_code() {
    let engine = WasmEngine::new().unwrap();
    let body = format!("{} {} (call $proc_exit (i32.const 3))", write(1, 6), write(2, 6));
    let (outcome, sink) = run(
        &engine,
        &module(&body, "hello\\n"),
        &dir("hello"),
        limits(),
        &Cancel::default(),
    );
    assert_eq!(outcome, Outcome::exited(3));
    assert_eq!(sink.text(Stream::Stdout), "hello\n");
    assert_eq!(sink.text(Stream::Stderr), "hello\n");
}

#[test]
fn bytes_that_are_not_a_runnable_command_get_clear_errors() {
    let engine = WasmEngine::new().unwrap();
    assert_eq!(engine.check(b"#!/bin/sh\necho hi\n"), Err(RunError::NotWasm));
    assert!(matches!(
        engine.check(b"\0asm\x01\0\0\0\x99"),
        Err(RunError::Invalid(_))
    ));
    let imports_env = wat::parse_str(r#"(module (import "env" "socket" (func)) (func (export "_start")))"#).unwrap();
    assert_eq!(
        engine.check(&imports_env),
        Err(RunError::Import("`env::socket`".into()))
    );
    let library = wat::parse_str(r#"(module (func (export "f")))"#).unwrap();
    assert_eq!(engine.check(&library), Err(RunError::NoStart));
}

#[test]
fn a_trap_reports_where_it_happened() {
    let engine = WasmEngine::new().unwrap();
    let bytes = wat::parse_str(r#"(module (func $deep unreachable) (func (export "_start") call $deep))"#).unwrap();
    let (outcome, _) = run(&engine, &bytes, &dir("trap"), limits(), &Cancel::default());
    let Some(RunError::Trap(message)) = &outcome.error else {
        panic!("{outcome:?}")
    };
    assert!(message.contains("unreachable"), "{message}");
    assert!(message.contains("deep"), "the backtrace names the function: {message}");
    assert_eq!(outcome.exit_code, 134);
}

#[test]
fn a_module_cannot_open_files_outside_in_and_out_nor_write_to_in() {
    let engine = WasmEngine::new().unwrap();
    let dir = dir("escape");
    std::fs::write(dir.inputs().join("data"), b"input").unwrap();
    // path_open(fd, dirflags 0, path at 1024, len, oflags, rights, 0, 0, fd out at 16) -> errno, exited with.
    let open = |fd: u32, len: u32, oflags: u32, rights: u64| {
        format!(
            "(call $proc_exit (call $path_open (i32.const {fd}) (i32.const 0) (i32.const 1024) (i32.const {len})
               (i32.const {oflags}) (i64.const {rights}) (i64.const 0) (i32.const 0) (i32.const 16)))"
        )
    };
    // fd 3 is /in, fd 4 is /out.
    let cases = [
        ("reads its input", open(3, 4, 0, 2), "data", true),
        ("climbs out of /in", open(3, 9, 0, 2), "../../etc", false),
        ("absolute path through /in", open(3, 11, 0, 2), "/etc/passwd", false),
        ("creates a file in /in", open(3, 3, 1, 66), "new", false),
        ("writes its input", open(3, 4, 0, 66), "data", false),
        ("creates a file in /out", open(4, 3, 1, 66), "new", true),
        ("climbs out of /out", open(4, 12, 1, 66), "../../escape", false),
        ("a descriptor that is not open", open(9, 4, 0, 2), "data", false),
    ];
    for (what, body, path, allowed) in cases {
        let (outcome, _) = run(&engine, &module(&body, path), &dir, limits(), &Cancel::default());
        assert!(outcome.error.is_none(), "{what}: {outcome:?}");
        assert_eq!(outcome.exit_code == 0, allowed, "{what}: errno {}", outcome.exit_code);
    }
    assert!(dir.outputs().join("new").exists());
    assert!(!dir.inputs().join("new").exists());
    assert!(!dir.root().parent().unwrap().join("escape").exists());
}

#[test]
fn memory_past_the_limit_is_out_of_memory() {
    let engine = WasmEngine::new().unwrap();
    let body = "(loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))";
    let limits = Limits {
        memory: 4 << 20,
        ..limits()
    };
    let (outcome, _) = run(&engine, &module(body, ""), &dir("oom"), limits, &Cancel::default());
    assert_eq!(outcome.error, Some(RunError::OutOfMemory { limit: 4 << 20 }));
    assert_eq!(outcome.exit_code, 137);
    // A module whose initial memory is over the limit does not start.
    let big = wat::parse_str(r#"(module (memory 128) (func (export "_start")))"#).unwrap();
    let (outcome, _) = run(&engine, &big, &dir("oom-initial"), limits, &Cancel::default());
    assert_eq!(outcome.error, Some(RunError::OutOfMemory { limit: 4 << 20 }));
}

#[test]
fn a_module_is_stopped_at_its_timeout_and_on_cancel() {
    let engine = WasmEngine::new().unwrap();
    let spin = module("(loop $forever (br $forever))", "");
    let limits = Limits {
        timeout: Duration::from_millis(100),
        ..limits()
    };
    let (outcome, _) = run(&engine, &spin, &dir("timeout"), limits, &Cancel::default());
    assert_eq!(outcome.error, Some(RunError::Timeout(Duration::from_millis(100))));
    assert_eq!(outcome.exit_code, 124);

    let cancel = Cancel::default();
    let stop = cancel.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        stop.cancel();
    });
    let (outcome, _) = run(&engine, &spin, &dir("cancel"), self::limits(), &cancel);
    canceller.join().unwrap();
    assert_eq!(outcome.error, Some(RunError::Cancelled));
}

#[test]
fn a_module_cannot_fill_the_disk_through_out_nor_through_stdout() {
    let engine = WasmEngine::new().unwrap();
    // Opens /out/big and writes 1 KiB to it forever (fd at 16).
    let flood_out = "(drop (call $path_open (i32.const 4) (i32.const 0) (i32.const 1024) (i32.const 3) (i32.const 1)
            (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 16)))
         (i32.store (i32.const 0) (i32.const 2048)) (i32.store (i32.const 4) (i32.const 1024))
         (loop $more (drop (call $fd_write (i32.load (i32.const 16)) (i32.const 0) (i32.const 1) (i32.const 8))) (br $more))";
    let dir_out = dir("flood-out");
    let (outcome, _) = run(
        &engine,
        &module(flood_out, "big"),
        &dir_out,
        limits(),
        &Cancel::default(),
    );
    assert_eq!(outcome.error, Some(RunError::OutputOverCap { cap: 1 << 20 }));

    let flood_log = format!("(loop $more {} (br $more))", write(1, 4));
    let (outcome, sink) = run(
        &engine,
        &module(&flood_log, "spam"),
        &dir("flood-log"),
        limits(),
        &Cancel::default(),
    );
    assert_eq!(outcome.error, Some(RunError::LogOverCap { cap: 64 << 10 }));
    assert_eq!(
        sink.text(Stream::Stdout).len(),
        64 << 10,
        "exactly the cap reached the sink"
    );
}

static NO_PAUSE: std::sync::LazyLock<Pause> = std::sync::LazyLock::new(Pause::default);

fn native<'a>(
    args: &'a [String],
    env: &'a [(String, String)],
    dir: &'a JobDir,
    limits: Limits,
    sink: &Arc<Collect>,
    cancel: &'a Cancel,
) -> Run<'a> {
    Run {
        args,
        env,
        dir,
        limits,
        sink: sink.clone(),
        cancel,
        pause: &NO_PAUSE,
        clock: wall_clock,
    }
}

#[test]
fn native_commands_run_in_their_directory_with_limits_and_their_group_dies_on_cancel() {
    let runner = NativeRunner;
    let dir = dir("native");
    std::fs::write(dir.inputs().join("x"), b"42").unwrap();
    let sink = Arc::new(Collect::default());
    let script = "cat in/x; echo; echo err >&2; echo done > out/result; echo \"$GREETING\"; exit 7";
    let outcome = runner.run(
        "sh",
        native(
            &["-c".into(), script.into()],
            &[("GREETING".into(), "hi".into())],
            &dir,
            limits(),
            &sink,
            &Cancel::default(),
        ),
    );
    assert_eq!(outcome, Outcome::exited(7));
    assert_eq!(sink.text(Stream::Stdout), "42\nhi\n");
    assert_eq!(sink.text(Stream::Stderr), "err\n");
    assert_eq!(std::fs::read(dir.outputs().join("result")).unwrap(), b"done\n");

    let missing = runner.run(
        "no-such-command-here",
        native(&[], &[], &dir, limits(), &sink, &Cancel::default()),
    );
    assert!(matches!(missing.error, Some(RunError::Spawn(_))), "{missing:?}");

    // A tree of sleepers, cancelled: none is left.
    let marker = format!("shoal-sleeper-{}", std::process::id());
    let cancel = Cancel::default();
    let stop = cancel.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        stop.cancel();
    });
    let tree = format!("(sleep 30; : {marker}) & (sh -c 'sleep 30; : {marker}') & wait");
    let outcome = runner.run("sh", native(&["-c".into(), tree], &[], &dir, limits(), &sink, &cancel));
    canceller.join().unwrap();
    assert_eq!(outcome.error, Some(RunError::Cancelled));
    let left = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn a_native_command_is_stopped_at_its_timeout() {
    let sink = Arc::new(Collect::default());
    let limits = Limits {
        timeout: Duration::from_millis(200),
        ..limits()
    };
    let dir = dir("native-timeout");
    let outcome = NativeRunner.run(
        "sleep",
        native(&["30".into()], &[], &dir, limits, &sink, &Cancel::default()),
    );
    assert_eq!(outcome.error, Some(RunError::Timeout(Duration::from_millis(200))));
}

/// A stepping module (`shoal_step`): `_initialize` writes /out/start.txt;
/// each step adds to one of 4,096 words at 1 MiB (page 1 of the
/// snapshot) and counts itself in an exported global, with one more
/// mutable global left unexported (as LLVM's stack pointer is); every
/// 1,000th step writes a byte to stderr; the 100,000th folds the words
/// into 8 bytes on stdout and ends with 0.
fn stepper() -> Vec<u8> {
    wat::parse_str(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (memory (export "memory") 40)
  (data (i32.const 2048) "start.txt")
  (global $steps (export "steps") (mut i64) (i64.const 0))
  (global $sp (mut i32) (i32.const 65536))
  (func $write (param $fd i32) (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_initialize")
    (drop (call $path_open (i32.const 4) (i32.const 0) (i32.const 2048) (i32.const 9) (i32.const 1)
        (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 16)))
    (call $write (i32.load (i32.const 16)) (i32.const 2048) (i32.const 9))
    (drop (call $fd_close (i32.load (i32.const 16)))))
  (func (export "shoal_step") (result i32)
    (local $slot i32) (local $i i32) (local $sum i64)
    (global.set $steps (i64.add (global.get $steps) (i64.const 1)))
    (local.set $slot (i32.add (i32.const 1048576)
      (i32.shl (i32.wrap_i64 (i64.rem_u (global.get $steps) (i64.const 4096))) (i32.const 3))))
    (i64.store (local.get $slot)
      (i64.add (i64.load (local.get $slot)) (i64.mul (global.get $steps) (i64.const 2654435761))))
    (if (i64.eqz (i64.rem_u (global.get $steps) (i64.const 1000)))
      (then (call $write (i32.const 2) (i32.const 2048) (i32.const 1))))
    (if (i64.lt_u (global.get $steps) (i64.const 100000)) (then (return (i32.const -1))))
    (loop $fold
      (local.set $sum (i64.xor (i64.rotl (local.get $sum) (i64.const 7))
        (i64.load (i32.add (i32.const 1048576) (i32.shl (local.get $i) (i32.const 3))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fold (i32.lt_u (local.get $i) (i32.const 4096))))
    (i64.store (i32.const 1024) (local.get $sum))
    (call $write (i32.const 1) (i32.const 1024) (i32.const 8))
    (i32.const 0)))"#,
    )
    .unwrap()
}

/// Collects output, and pauses the run at its `after`-th write to stderr.
struct PauseAt {
    out: Collect,
    pause: Pause,
    writes: std::sync::atomic::AtomicU32,
    after: u32,
    /// Saves (and goes on) at this write to stderr.
    save_at: u32,
    /// At this write to stderr, the files in `look_in` and their inodes
    /// go into `seen`.
    look_at: u32,
    look_in: std::path::PathBuf,
    seen: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// The files in `dir` by name, with their inode numbers.
fn inodes(dir: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect()
}

impl Sink for PauseAt {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        self.out.write(stream, bytes);
        if stream != Stream::Stderr {
            return;
        }
        let n = self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n == self.look_at {
            *self.seen.lock().unwrap() = inodes(&self.look_in);
        }
        if n == self.after {
            self.pause.stop();
        }
        if n == self.save_at {
            self.pause.save();
        }
    }
}

/// Runs `bytes` in `dir`, pausing at the `after`-th write to stderr (0:
/// never); returns the outcome and stdout.
fn run_pausing(engine: &WasmEngine, bytes: &[u8], dir: &JobDir, after: u32) -> (Outcome, Vec<u8>) {
    run_saving(engine, bytes, dir, after, 0).0
}

/// The snapshot's memory pages under `dir`.
fn pages_dir(dir: &JobDir) -> std::path::PathBuf {
    dir.checkpoints().join(snapshot::SNAPSHOT_DIR).join("memory")
}

/// Runs `bytes` in `dir` as [`run_saving`] does, and returns what
/// [`inodes`] found in the snapshot's pages at the `look_at`-th write to
/// stderr.
fn run_looking(
    bytes: &[u8],
    dir: &JobDir,
    after: u32,
    save_at: u32,
    look_at: u32,
) -> (Outcome, std::collections::BTreeMap<String, u64>) {
    let sink = Arc::new(PauseAt {
        out: Collect::default(),
        pause: Pause::default(),
        writes: Default::default(),
        after,
        save_at,
        look_at,
        look_in: pages_dir(dir),
        seen: Default::default(),
    });
    let args = ["job".to_string()];
    let outcome = WasmEngine::new().unwrap().run(
        Key::of_content(bytes),
        bytes,
        Run {
            args: &args,
            env: &[],
            dir,
            limits: limits(),
            sink: sink.clone(),
            cancel: &Cancel::default(),
            pause: &sink.pause.clone(),
            clock: wall_clock,
        },
    );
    let seen = sink.seen.lock().unwrap().clone();
    (outcome, seen)
}

/// The same, asking for a save (and going on) at the `save_at`-th write
/// to stderr; also returns whether that save was done.
fn run_saving(
    engine: &WasmEngine,
    bytes: &[u8],
    dir: &JobDir,
    after: u32,
    save_at: u32,
) -> ((Outcome, Vec<u8>), Option<bool>) {
    run_saving_warm(engine, bytes, dir, after, save_at, None)
}

/// [`run_saving`] in `warm`, an instance made ready beforehand.
fn run_saving_warm(
    engine: &WasmEngine,
    bytes: &[u8],
    dir: &JobDir,
    after: u32,
    save_at: u32,
    warm: Option<Warm>,
) -> ((Outcome, Vec<u8>), Option<bool>) {
    let sink = Arc::new(PauseAt {
        out: Collect::default(),
        pause: Pause::default(),
        writes: Default::default(),
        after,
        save_at,
        look_at: 0,
        look_in: Default::default(),
        seen: Default::default(),
    });
    let args = ["job".to_string()];
    let outcome = engine.run_warm(
        Key::of_content(bytes),
        bytes,
        Run {
            args: &args,
            env: &[],
            dir,
            limits: limits(),
            sink: sink.clone(),
            cancel: &Cancel::default(),
            pause: &sink.pause.clone(),
            clock: wall_clock,
        },
        warm,
    );
    let stdout = sink
        .out
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .flat_map(|(_, b)| b.clone())
        .collect();
    ((outcome, stdout), sink.pause.saved())
}

fn copy_ckpt(from: &JobDir, to: &JobDir) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from.checkpoints().join("."))
        .arg(to.checkpoints())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_stepping_module_paused_between_steps_goes_on_elsewhere_to_the_same_end() {
    let bytes = stepper();
    assert!(snapshot::steppable(&bytes));
    // Uninterrupted.
    let whole = dir("steps-whole");
    let (outcome, expected) = run_pausing(&WasmEngine::new().unwrap(), &bytes, &whole, 0);
    assert_eq!(outcome, Outcome::exited(0));
    assert_eq!(expected.len(), 8);
    // Paused after step 1,000, on one "peer" ...
    let first = dir("steps-first");
    let (outcome, stdout) = run_pausing(&WasmEngine::new().unwrap(), &bytes, &first, 1);
    assert!(matches!(outcome.error, Some(RunError::Paused { .. })), "{outcome:?}");
    assert!(stdout.is_empty());
    assert!(snapshot::held(&first));
    // ... again after step 2,000 on a second, resumed from the first's
    // snapshot: only the pages the steps wrote differ ...
    let second = dir("steps-second");
    copy_ckpt(&first, &second);
    let (outcome, _) = run_pausing(&WasmEngine::new().unwrap(), &bytes, &second, 1);
    assert!(matches!(outcome.error, Some(RunError::Paused { .. })), "{outcome:?}");
    let pages = |d: &JobDir| -> std::collections::BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(d.checkpoints().join(snapshot::SNAPSHOT_DIR).join("memory"))
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    };
    let (a, b) = (pages(&first), pages(&second));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let changed: Vec<&String> = a.keys().filter(|k| a[*k] != b[*k]).collect();
    assert_eq!(changed, ["00001"], "only the words' page: 1 MiB of the 40 pages");
    assert!(a.len() <= 3, "zero pages are not saved: {:?}", a.keys());
    // ... and a third runs it to its end: the same 8 bytes, and the file
    // written before the first pause is in its /out.
    let third = dir("steps-third");
    copy_ckpt(&second, &third);
    let (outcome, stdout) = run_pausing(&WasmEngine::new().unwrap(), &bytes, &third, 0);
    assert_eq!(outcome, Outcome::exited(0));
    assert_eq!(stdout, expected);
    assert_eq!(std::fs::read(third.outputs().join("start.txt")).unwrap(), b"start.txt");
    assert!(!snapshot::held(&third), "the snapshot is gone once resumed");
    // Saved while it goes on (a pre-copy): the run is not disturbed, and
    // what it saved is gone once it ends.
    let copied = dir("steps-copied");
    let (ran, saved) = run_saving(&WasmEngine::new().unwrap(), &bytes, &copied, 0, 3);
    assert_eq!(ran, (Outcome::exited(0), expected.clone()));
    assert_eq!(saved, Some(true));
    assert!(!snapshot::held(&copied));
    // A module whose state is not all visible is run, but not in steps.
    let hidden = wat::parse_str(
        r#"(module (memory (export "memory") 1) (global $a (mut i32) (i32.const 0)) (global $b (mut i32) (i32.const 0))
            (func (export "shoal_step") (result i32) (i32.const 0)) (func (export "_start")))"#,
    )
    .unwrap();
    assert!(!snapshot::steppable(&hidden));
}

#[test]
fn a_pause_after_a_pre_copy_links_the_pages_that_did_not_change() {
    let bytes = stepper();
    // Saved (going on) at the first write to stderr, paused at the second:
    // the pause's snapshot keeps the pre-copy's file for each page the
    // steps between did not write (the same inode: not written again,
    // and a share knows it), and writes the one page they did.
    let at = dir("steps-linked");
    let (outcome, before) = run_looking(&bytes, &at, 2, 1, 2);
    assert!(matches!(outcome.error, Some(RunError::Paused { .. })), "{outcome:?}");
    let after = inodes(&pages_dir(&at));
    assert!(before.len() >= 2, "the pre-copy was there at the pause: {before:?}");
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    let written: Vec<&String> = after.keys().filter(|k| before[*k] != after[*k]).collect();
    assert_eq!(written, ["00001"], "only the words' page is written again");
}

/// Copies `from`'s `ckpt/` into `to`'s as links (as the node lays a
/// fetched checkpoint out from its store): the same files.
fn link_ckpt(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-al")
        .arg(from.join("."))
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn an_instance_made_ready_from_a_pre_copy_goes_on_from_the_last_snapshot() {
    let bytes = stepper();
    let id = Key::of_content(&bytes);
    let (_, expected) = run_pausing(&WasmEngine::new().unwrap(), &bytes, &dir("warm-whole"), 0);
    // A pre-copy (paused after step 1,000), which the next peer makes an
    // instance ready from while the job goes on ...
    let first = dir("warm-first");
    let (outcome, _) = run_pausing(&WasmEngine::new().unwrap(), &bytes, &first, 1);
    assert!(matches!(outcome.error, Some(RunError::Paused { .. })), "{outcome:?}");
    let ready = dir("warm-ready");
    link_ckpt(&first.checkpoints(), &ready.checkpoints());
    let next = WasmEngine::new().unwrap();
    let warm = next.warm(id, &bytes, &ready.checkpoints(), limits().memory).unwrap();
    assert_eq!(warm.module(), id);
    // ... the job goes on to step 2,000 and pauses: its last snapshot
    // links the pages that did not change and writes the one that did ...
    let second = dir("warm-second");
    link_ckpt(&first.checkpoints(), &second.checkpoints());
    let (outcome, _) = run_pausing(&WasmEngine::new().unwrap(), &bytes, &second, 1);
    assert!(matches!(outcome.error, Some(RunError::Paused { .. })), "{outcome:?}");
    // ... and the warm instance goes on from that last snapshot, not from
    // the pre-copy it holds: the same end as an uninterrupted run (a
    // changed page taken for an unchanged one would change the sum).
    let third = dir("warm-third");
    link_ckpt(&second.checkpoints(), &third.checkpoints());
    let ((outcome, stdout), _) = run_saving_warm(&next, &bytes, &third, 0, 0, Some(warm));
    assert_eq!(outcome, Outcome::exited(0));
    assert_eq!(stdout, expected);
    assert_eq!(std::fs::read(third.outputs().join("start.txt")).unwrap(), b"start.txt");
    // An instance of another module is not used: the run starts afresh.
    let other = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "shoal_step") (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let fourth = dir("warm-fourth");
    link_ckpt(&second.checkpoints(), &fourth.checkpoints());
    let stranger = next
        .warm(Key::of_content(&other), &other, &ready.checkpoints(), limits().memory)
        .unwrap();
    let ((outcome, stdout), _) = run_saving_warm(&next, &bytes, &fourth, 0, 0, Some(stranger));
    assert_eq!((outcome, stdout), (Outcome::exited(0), expected));
}

#[test]
fn a_stepping_module_never_runs_beside_a_snapshot_it_did_not_come_from() {
    let bytes = stepper();
    // Pages without a state (written by a job under its own /ckpt, or
    // left over): not a snapshot to resume, and gone before the module's
    // first code runs, since an executor may have laid pages out as
    // links to its store.
    let at = dir("steps-stray");
    std::fs::create_dir_all(pages_dir(&at)).unwrap();
    std::fs::write(pages_dir(&at).join("00000"), vec![7u8; snapshot::PAGE]).unwrap();
    let (outcome, seen) = run_looking(&bytes, &at, 0, 0, 1);
    assert_eq!(outcome, Outcome::exited(0));
    assert!(seen.is_empty(), "a stray page was there while the job ran: {seen:?}");
    // A start function would run before a restore: such a module does not
    // run in steps.
    let started = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func $s) (start $s)
            (func (export "shoal_step") (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    assert!(!snapshot::steppable(&started));
}
