//! WebAssembly jobs: WASI preview 1 command modules (what
//! `clang --target=wasm32-wasi` and Rust's `wasm32-wasip1` build) in
//! wasmtime's sandbox.
//!
//! What a module sees: its arguments, only the environment it was given,
//! `/in` read-only and `/out` writable (no other file, no network), a
//! clock and random numbers. Its memory is capped by a resource limiter,
//! its time by epoch interruption (a thread ticks the engine's epoch every
//! [`TICK`]; each tick the store checks the job's deadline, its cancel flag
//! and, every tenth, the bytes under `/out`), and stdout and stderr by a
//! byte budget shared by both. Compiled modules are kept by module id, so
//! a second run of the same module only instantiates.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::Clock;

use shoal_overlay::Key;
use wasmtime::{Config, Engine, InstancePre, Linker, Module, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::{Cancel, JobDir, LogBudget, Outcome, Pause, Run, RunError, Sink, Stream, snapshot, trees_bytes};

/// How often the engine's epoch advances: the resolution of timeouts and
/// cancels.
pub const TICK: Duration = Duration::from_millis(10);

/// Compiled modules kept, at most (least recently used dropped first).
pub const CACHED_MODULES: usize = 64;

/// Ticks between two measurements of `/out`.
const OUT_CHECK_TICKS: u32 = 10;

/// What a store holds: the module's WASI state and its limiter.
struct Ctx {
    wasi: WasiP1Ctx,
    limiter: MemoryCap,
}

/// Caps a module's memories, and remembers that it asked for more.
struct MemoryCap {
    limit: u64,
    hit: Arc<AtomicBool>,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.limit {
            self.hit.store(true, Ordering::Relaxed);
            return Err(wasmtime::format_err!("memory limit reached"));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // A table of a million entries is far past what any real module asks.
        Ok(desired <= 1 << 20)
    }
}

/// A module compiled and linked, and whether it runs in steps.
#[derive(Clone)]
struct Prepared {
    pre: InstancePre<Ctx>,
    steps: bool,
}

/// A stepping module instantiated before its job is granted here, its
/// memory already holding an earlier snapshot of the job (a moved job's
/// pre-copy): going on from the job's last snapshot then reads only the
/// pages that changed since, not the whole memory. No code of the module
/// has run in it; the job's WASI state and limits are put in when it runs
/// ([`WasmEngine::run_warm`]).
pub struct Warm {
    id: Key,
    store: Store<Ctx>,
    instance: wasmtime::Instance,
    pages: Vec<snapshot::Page>,
    memory: u64,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm")
            .field("id", &self.id)
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

impl Warm {
    /// The module it is an instance of.
    pub fn module(&self) -> Key {
        self.id
    }

    /// Bytes of linear memory it holds.
    pub fn memory(&self) -> u64 {
        self.memory
    }
}

/// The WebAssembly engine of a peer: one wasmtime engine, its epoch
/// ticker, and the compiled modules.
pub struct WasmEngine {
    engine: Engine,
    linker: Linker<Ctx>,
    cache: Mutex<VecDeque<(Key, Prepared)>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine").finish_non_exhaustive()
    }
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl WasmEngine {
    /// An engine with epoch interruption and the WASI preview 1 imports,
    /// and a thread that ticks it until the engine is dropped.
    pub fn new() -> Result<Self, RunError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| RunError::Invalid(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |ctx: &mut Ctx| &mut ctx.wasi)
            .map_err(|e| RunError::Invalid(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.weak();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("shoal-wasm-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match ticker.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| RunError::Spawn(e.to_string()))?;
        Ok(WasmEngine {
            engine,
            linker,
            cache: Mutex::new(VecDeque::new()),
            stop,
        })
    }

    /// Compiles and links `bytes` (the module whose id is `id`), or finds
    /// it compiled already. Fails with a clear error for bytes that are not
    /// a module, do not validate, import what the sandbox lacks, or are not
    /// a command.
    fn prepare(&self, id: Key, bytes: &[u8]) -> Result<Prepared, RunError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = cache.iter().position(|(k, _)| *k == id) {
            let entry = cache.remove(at).expect("the position is in the cache");
            let pre = entry.1.clone();
            cache.push_front(entry);
            return Ok(pre);
        }
        drop(cache);
        let pre = self.compile(bytes)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.push_front((id, pre.clone()));
        cache.truncate(CACHED_MODULES);
        Ok(pre)
    }

    /// Whether module `id`, compiled here, runs in steps (and so can be
    /// paused and saved whole, [`snapshot`]); `false` for one not compiled.
    pub fn steps(&self, id: &Key) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.iter().any(|(k, prepared)| k == id && prepared.steps)
    }

    /// Checks that `bytes` are a WASI command module this engine can run,
    /// without running it (and keeps it compiled: a module checked once is
    /// not compiled again, here or for a run).
    pub fn check(&self, bytes: &[u8]) -> Result<(), RunError> {
        self.prepare(Key::of_content(bytes), bytes).map(|_| ())
    }

    fn compile(&self, bytes: &[u8]) -> Result<Prepared, RunError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(RunError::NotWasm);
        }
        let module = Module::new(&self.engine, bytes).map_err(|e| RunError::Invalid(format!("{e:#}")))?;
        if let Some(missing) = module.imports().find(|i| i.module() != "wasi_snapshot_preview1") {
            return Err(RunError::Import(format!("`{}::{}`", missing.module(), missing.name())));
        }
        let steps = snapshot::steppable(bytes);
        if module.get_export("_start").is_none() && !steps {
            return Err(RunError::NoStart);
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| RunError::Import(format!("{e:#}")))?;
        Ok(Prepared { pre, steps })
    }

    /// Makes a stepping module `id` ready to go on from the snapshot
    /// under `ckpt` (a `ckpt/` directory, its pages laid out there) before
    /// its job is granted here: instantiated, nothing of it run, its
    /// memory (at most `memory` bytes) holding the snapshot's pages.
    /// Blocks the calling thread.
    pub fn warm(&self, id: Key, bytes: &[u8], ckpt: &std::path::Path, memory: u64) -> Result<Warm, RunError> {
        let Prepared { pre, steps } = self.prepare(id, bytes)?;
        if !steps {
            return Err(RunError::Invalid("the module does not run in steps".into()));
        }
        let mut store = Store::new(
            &self.engine,
            Ctx {
                // The job's own is put in before any of its code runs.
                wasi: WasiCtxBuilder::new().build_p1(),
                limiter: MemoryCap {
                    limit: memory,
                    hit: Arc::default(),
                },
            },
        );
        store.limiter(|ctx| &mut ctx.limiter);
        // No start function (`steppable`): instantiating runs nothing.
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| RunError::Trap(format!("{e:?}")))?;
        let pages = snapshot::warm_memory(&mut store, &instance, ckpt)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .map_or(0, |m| m.data_size(&store) as u64);
        Ok(Warm {
            id,
            store,
            instance,
            pages,
            memory,
        })
    }

    /// Runs module `id` (its bytes: `bytes`) as `run` says until it exits,
    /// fails, times out or is cancelled. Blocks the calling thread.
    pub fn run(&self, id: Key, bytes: &[u8], run: Run<'_>) -> Outcome {
        self.run_warm(id, bytes, run, None)
    }

    /// [`run`](Self::run), in `warm` if it is an instance of this module
    /// made ready from an earlier snapshot than the one the job goes on
    /// from (else it is dropped and the run starts as any other).
    pub fn run_warm(&self, id: Key, bytes: &[u8], run: Run<'_>, warm: Option<Warm>) -> Outcome {
        let Run {
            args,
            env,
            dir,
            limits,
            sink,
            cancel,
            pause,
            clock,
        } = run;
        let Prepared { pre, steps } = match self.prepare(id, bytes) {
            Ok(prepared) => prepared,
            Err(e) => return Outcome::failed(e),
        };
        if !steps {
            // Only a stepping module can use a snapshot: any other job
            // must not see one in its /ckpt.
            let _ = std::fs::remove_dir_all(dir.checkpoints().join(snapshot::SNAPSHOT_DIR));
        }
        let budget = LogBudget::new(limits.log_bytes);
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(args)
            .envs(env)
            .stdout(SinkStream::new(sink.clone(), Stream::Stdout, budget.clone()))
            .stderr(SinkStream::new(sink, Stream::Stderr, budget.clone()));
        if let Err(e) = wasi.preopened_dir(dir.inputs(), "/in", FsPerms::ReadOnly) {
            return Outcome::failed(RunError::Io(format!("{e:#}")));
        }
        if let Err(e) = wasi.preopened_dir(dir.outputs(), "/out", FsPerms::ReadWrite) {
            return Outcome::failed(RunError::Io(format!("{e:#}")));
        }
        if let Err(e) = wasi.preopened_dir(dir.checkpoints(), "/ckpt", FsPerms::ReadWrite) {
            return Outcome::failed(RunError::Io(format!("{e:#}")));
        }
        let oom = Arc::new(AtomicBool::new(false));
        let ctx = Ctx {
            wasi: wasi.build_p1(),
            limiter: MemoryCap {
                limit: limits.memory,
                hit: oom.clone(),
            },
        };
        // A warm instance serves only a job that goes on from a snapshot
        // of its module at least as large, within this run's cap.
        let warm = warm.filter(|w| {
            steps
                && w.id == id
                && snapshot::memory_size(dir).is_some_and(|size| w.memory <= size && size <= limits.memory)
        });
        let (mut store, warm) = match warm {
            Some(Warm {
                mut store,
                instance,
                pages,
                ..
            }) => {
                *store.data_mut() = ctx;
                (store, Some((instance, pages)))
            }
            None => (Store::new(&self.engine, ctx), None),
        };
        store.limiter(|ctx| &mut ctx.limiter);
        let started = clock();
        let stopped_by = Arc::new(Mutex::new(None::<RunError>));
        let watch = Watch {
            deadline: started + limits.timeout,
            clock,
            timeout: limits.timeout,
            cancel: cancel.clone(),
            out: dir.capped(),
            out_cap: limits.out_bytes,
            ticks: 0,
            stopped_by: stopped_by.clone(),
        };
        let mut watch = watch;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| watch.tick());
        let result = match warm {
            Some((instance, pages)) => Ok((instance, pages)),
            None => pre.instantiate(&mut store).map(|instance| (instance, Vec::new())),
        };
        let result = result.and_then(|(instance, pages)| {
            if steps {
                return step(&mut store, &instance, dir, pause, pages);
            }
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call(&mut store, ()).map(|()| Ended::Exit(0))
        });
        drop(store);
        let stopped = stopped_by.lock().unwrap_or_else(|p| p.into_inner()).take();
        let outcome = match (result, stopped) {
            (_, Some(why)) => Outcome::failed(why),
            (Ok(Ended::Exit(code)), None) => Outcome::exited(code),
            (Ok(Ended::Failed(why)), None) => Outcome::failed(why),
            (Err(e), None) => {
                if let Some(exit) = e.downcast_ref::<I32Exit>() {
                    Outcome::exited(exit.0)
                } else if oom.load(Ordering::Relaxed) {
                    Outcome::failed(RunError::OutOfMemory { limit: limits.memory })
                } else if budget.is_over() {
                    Outcome::failed(RunError::LogOverCap { cap: limits.log_bytes })
                } else {
                    Outcome::failed(RunError::Trap(format!("{e:?}")))
                }
            }
        };
        // A snapshot is the engine's, not the job's: it does not count.
        let snapshot = dir.checkpoints().join(snapshot::SNAPSHOT_DIR);
        let theirs = trees_bytes(&dir.capped(), u64::MAX).saturating_sub(super::tree_bytes(&snapshot, u64::MAX));
        if theirs > limits.out_bytes {
            return Outcome::failed(RunError::OutputOverCap { cap: limits.out_bytes });
        }
        outcome
    }
}

/// How a run that did not trap ended.
enum Ended {
    Exit(i32),
    Failed(RunError),
}

/// Runs a stepping module: from its snapshot if `ckpt/` holds one, else
/// from `_initialize`; then `shoal_step` until it returns an exit code, or
/// until `pause` is set (then it is saved between two steps).
fn step(
    store: &mut Store<Ctx>,
    instance: &wasmtime::Instance,
    dir: &JobDir,
    pause: &Pause,
    known: Vec<snapshot::Page>,
) -> wasmtime::Result<Ended> {
    if snapshot::held(dir) {
        if let Err(e) = snapshot::restore_over(&mut *store, instance, dir, known) {
            return Ok(Ended::Failed(e));
        }
    } else {
        // Not a whole snapshot (a job may write under its own /ckpt): gone
        // before any of the job's code runs, since the executor may have
        // laid its pages out as links to its store (see `snapshot`).
        let _ = std::fs::remove_dir_all(dir.checkpoints().join(snapshot::SNAPSHOT_DIR));
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut *store, "_initialize") {
            init.call(&mut *store, ())?;
        }
    }
    let step = instance.get_typed_func::<(), i32>(&mut *store, snapshot::STEP)?;
    loop {
        if pause.is_stopping() {
            return Ok(match snapshot::save(&mut *store, instance, dir) {
                Ok(memory) => Ended::Failed(RunError::Paused { memory }),
                Err(e) => Ended::Failed(e),
            });
        }
        if pause.take_save() {
            pause.done_saving(snapshot::save(&mut *store, instance, dir).is_ok());
        }
        match step.call(&mut *store, ())? {
            -1 => continue,
            code => {
                // A pre-copy left behind is stale now: a run again (exit
                // 85) starts from what the job saved, not from it.
                let _ = std::fs::remove_dir_all(dir.checkpoints().join(snapshot::SNAPSHOT_DIR));
                return Ok(Ended::Exit(code));
            }
        }
    }
}

/// The error for `/out` and `/ckpt` holding more than `cap` bytes
/// together, if they do.
fn over_out_cap(dirs: &[std::path::PathBuf], cap: u64) -> Option<RunError> {
    (trees_bytes(dirs, cap) > cap).then_some(RunError::OutputOverCap { cap })
}

/// What the store checks at every tick.
struct Watch {
    deadline: Instant,
    clock: Clock,
    timeout: Duration,
    cancel: Cancel,
    out: [std::path::PathBuf; 2],
    out_cap: u64,
    ticks: u32,
    stopped_by: Arc<Mutex<Option<RunError>>>,
}

impl Watch {
    fn tick(&mut self) -> wasmtime::Result<UpdateDeadline> {
        self.ticks = self.ticks.wrapping_add(1);
        let why = if self.cancel.is_cancelled() {
            Some(RunError::Cancelled)
        } else if (self.clock)() >= self.deadline {
            Some(RunError::Timeout(self.timeout))
        } else if self.ticks.is_multiple_of(OUT_CHECK_TICKS) {
            over_out_cap(&self.out, self.out_cap)
        } else {
            None
        };
        match why {
            None => Ok(UpdateDeadline::Continue(1)),
            Some(why) => {
                *self.stopped_by.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                Ok(UpdateDeadline::Interrupt)
            }
        }
    }
}

/// A module's stdout or stderr: each write goes to the sink, within the
/// budget both streams share; a write past it fails (and the job with it).
#[derive(Clone)]
struct SinkStream {
    sink: Arc<dyn Sink>,
    stream: Stream,
    budget: Arc<LogBudget>,
}

impl SinkStream {
    fn new(sink: Arc<dyn Sink>, stream: Stream, budget: Arc<LogBudget>) -> Self {
        SinkStream { sink, stream, budget }
    }

    fn put(&self, bytes: &[u8]) -> usize {
        let n = self.budget.take(bytes.len());
        if n > 0 {
            self.sink.write(self.stream, &bytes[..n]);
        }
        n
    }
}

impl IsTerminal for SinkStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for SinkStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for SinkStream {
    async fn ready(&mut self) {}
}

impl OutputStream for SinkStream {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        if self.put(&bytes) < bytes.len() {
            return Err(StreamError::Trap(wasmtime::format_err!(
                "stdout and stderr are over their cap"
            )));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for SinkStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.put(buf) {
            0 if !buf.is_empty() => Poll::Ready(Err(std::io::Error::other("stdout and stderr are over their cap"))),
            n => Poll::Ready(Ok(n)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
