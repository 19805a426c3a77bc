//! Transparent snapshots of a WebAssembly job: its instance saved between
//! two steps, without the job's help, and resumed on another peer.
//!
//! # The mechanism: stepping modules
//!
//! A module that exports `shoal_step: () -> i32` is run in steps: the
//! engine calls its `_initialize` (if it has one) once, then `shoal_step`
//! again and again; `-1` means "call me again", any other value ends the
//! job with that exit code (and `proc_exit` ends it as for any job). Between
//! two calls the module's stack is empty, so its whole state is what the
//! engine can see from outside: its linear memory, its exported mutable
//! globals, and the files it wrote. A snapshot taken there is complete —
//! no stack to unwind, no compiler pass on the module (as binaryen's
//! asyncify would need), and nothing the module must do to allow it. With
//! clang: `clang --target=wasm32-wasi -mexec-model=reactor` and
//! `__attribute__((export_name("shoal_step"))) int shoal_step(void)`.
//!
//! What the module must keep to: it has no start function (that would
//! run before a restore, while the next executor's pages may be links to
//! its store's files; [`steppable`] refuses one); a step ends with no
//! file open that a later step uses (the WASI descriptor table is not saved; `/in`, `/out`,
//! `/ckpt` and stdout/stderr are there again after a resume), and a step
//! takes well under a second (a snapshot waits for the step under way).
//! The one mutable global a module may keep unexported is LLVM's stack
//! pointer, which is back at its first value whenever no call is under
//! way; a module with other unexported mutable globals runs, but not in
//! steps ([`steppable`] says which).
//!
//! # What a snapshot holds
//!
//! A directory [`SNAPSHOT_DIR`] under the job's `ckpt/`, so that it
//! travels as the job's checkpoint (a majority of the job's home keeps it;
//! the next executor restores `ckpt/` and resumes from it): `memory/NNNNN`
//! for each non-zero [`PAGE`] of linear memory, `state` (the memory's
//! size and the exported mutable globals, CBOR) and `out/` (a copy of what
//! the job wrote under `/out` so far). Every page is a file, and so a blob
//! of its own: a second snapshot of a job whose memory changed little
//! shares most pages with the first, and the home's members fetch only
//! the pages they do not hold already.

use std::path::Path;

use serde::{Deserialize, Serialize};
use wasmtime::{AsContextMut, Instance, Mutability, Val};

use super::{JobDir, RunError};

/// Where a snapshot is kept, under the job's `ckpt/`.
pub const SNAPSHOT_DIR: &str = ".shoal-snapshot";
/// Bytes of linear memory per page file.
pub const PAGE: usize = 1 << 20;
/// The export a stepping module has.
pub const STEP: &str = "shoal_step";

#[derive(Serialize, Deserialize)]
struct State {
    /// The memory's size, bytes.
    memory: u64,
    /// Exported mutable globals: name and value bits (i32, i64, f32, f64).
    globals: Vec<(String, u8, u64)>,
}

/// Whether `bytes` (a module that validates) can be run in steps: it
/// exports `shoal_step` and a memory named `memory`, and keeps at most one
/// mutable global unexported (the stack pointer).
pub fn steppable(bytes: &[u8]) -> bool {
    let mut mutable = Vec::new();
    let mut exported = std::collections::BTreeSet::new();
    let mut step = false;
    let mut memory = false;
    let mut imported_globals = 0u32;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(wasmparser::Payload::ImportSection(imports)) => {
                for import in imports.into_imports().flatten() {
                    if matches!(import.ty, wasmparser::TypeRef::Global(_)) {
                        imported_globals += 1;
                    }
                }
            }
            Ok(wasmparser::Payload::GlobalSection(globals)) => {
                for (i, global) in globals.into_iter().enumerate() {
                    let Ok(global) = global else { return false };
                    if global.ty.mutable {
                        mutable.push(imported_globals + i as u32);
                    }
                }
            }
            Ok(wasmparser::Payload::ExportSection(exports)) => {
                for export in exports.into_iter().flatten() {
                    match export.kind {
                        wasmparser::ExternalKind::Global => {
                            exported.insert(export.index);
                        }
                        wasmparser::ExternalKind::Func if export.name == STEP => step = true,
                        wasmparser::ExternalKind::Memory if export.name == "memory" => memory = true,
                        _ => {}
                    }
                }
            }
            // A start function would run before a restore puts the
            // memory back (and could reach the snapshot's files).
            Ok(wasmparser::Payload::StartSection { .. }) | Err(_) => return false,
            _ => {}
        }
    }
    step && memory && imported_globals == 0 && mutable.iter().filter(|g| !exported.contains(g)).count() <= 1
}

fn io(what: &str, e: impl std::fmt::Display) -> RunError {
    RunError::Io(format!("snapshot: {what}: {e}"))
}

/// Saves `instance` (between two steps) and the job's `/out` under
/// `dir`'s `ckpt/`, replacing any snapshot there. Returns the bytes of
/// memory saved (non-zero pages).
pub fn save(mut store: impl AsContextMut, instance: &Instance, dir: &JobDir) -> Result<u64, RunError> {
    let root = dir.checkpoints().join(SNAPSHOT_DIR);
    let fresh = dir.checkpoints().join(format!("{SNAPSHOT_DIR}.new"));
    let _ = std::fs::remove_dir_all(&fresh);
    std::fs::create_dir_all(fresh.join("memory")).map_err(|e| io("create", e))?;
    let memory = instance
        .get_memory(&mut store, "memory")
        .ok_or_else(|| io("memory", "the module exports no memory named `memory`"))?;
    let mut saved = 0u64;
    let data = memory.data(&store);
    let mut before = Vec::with_capacity(PAGE);
    for (i, page) in data.chunks(PAGE).enumerate() {
        if page.iter().all(|b| *b == 0) {
            continue;
        }
        let name = format!("{i:05}");
        let (old, new) = (root.join("memory").join(&name), fresh.join("memory").join(&name));
        saved += page.len() as u64;
        // A page as the last snapshot has it stays that file (linked, not
        // written): its blob is held already, and a share that knows the
        // file (see `store::Reuse`) does not hash it again.
        if same_bytes(&old, page, &mut before) && std::fs::hard_link(&old, &new).is_ok() {
            continue;
        }
        std::fs::write(&new, page).map_err(|e| io("write", e))?;
    }
    let size = data.len() as u64;
    let mut globals = Vec::new();
    let exports: Vec<(String, wasmtime::Global)> = instance
        .exports(&mut store)
        .filter_map(|e| {
            let name = e.name().to_string();
            e.into_global().map(|g| (name, g))
        })
        .collect();
    for (name, global) in exports {
        if global.ty(&store).mutability() != Mutability::Var {
            continue;
        }
        let (kind, bits) = match global.get(&mut store) {
            Val::I32(v) => (0, v as u32 as u64),
            Val::I64(v) => (1, v as u64),
            Val::F32(v) => (2, u64::from(v)),
            Val::F64(v) => (3, v),
            _ => return Err(io("globals", format!("`{name}` is not a number"))),
        };
        globals.push((name, kind, bits));
    }
    let mut state = Vec::new();
    ciborium::into_writer(&State { memory: size, globals }, &mut state).map_err(|e| io("state", e))?;
    std::fs::write(fresh.join("state"), state).map_err(|e| io("write", e))?;
    copy_tree(&dir.outputs(), &fresh.join("out")).map_err(|e| io("copy /out", e))?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&fresh, &root).map_err(|e| io("rename", e))?;
    Ok(saved)
}

/// Whether the file at `path` holds exactly `bytes` (`buf` is scratch).
fn same_bytes(path: &Path, bytes: &[u8], buf: &mut Vec<u8>) -> bool {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    if file.metadata().map(|m| m.len()).ok() != Some(bytes.len() as u64) {
        return false;
    }
    // One read into a buffer of the page's size (no growing it).
    buf.resize(bytes.len(), 0);
    file.read_exact(buf).is_ok() && buf.as_slice() == bytes
}

/// Whether `dir`'s `ckpt/` holds a snapshot to resume from.
pub fn held(dir: &JobDir) -> bool {
    dir.checkpoints().join(SNAPSHOT_DIR).join("state").is_file()
}

/// What an instance made ready before its job came (see
/// [`super::wasm::Warm`]) knows of one page of its memory.
#[derive(Debug)]
pub(crate) enum Page {
    /// Unknown: read it.
    Unknown,
    /// All zero.
    Zero,
    /// The bytes of this page file, held open so that no other file can
    /// take its inode: a page file of a later snapshot that is the same
    /// file (a link to the same blob in the store) holds the same bytes.
    File(std::fs::File),
}

/// The memory size the snapshot under `dir`'s `ckpt/` has, if it holds one.
pub(crate) fn memory_size(dir: &JobDir) -> Option<u64> {
    let state = std::fs::read(dir.checkpoints().join(SNAPSHOT_DIR).join("state")).ok()?;
    let state: State = ciborium::from_reader(&state[..]).ok()?;
    Some(state.memory)
}

/// Resumes `instance` (fresh, not initialized; or made ready from an
/// earlier snapshot of the same job, `known` saying what each page of its
/// memory holds) from the snapshot under `dir`'s `ckpt/`, puts back what
/// the job had written under `/out`, and removes the snapshot (the job
/// must not see it, nor count it against its cap).
pub fn restore(store: impl AsContextMut, instance: &Instance, dir: &JobDir) -> Result<(), RunError> {
    restore_over(store, instance, dir, Vec::new())
}

/// [`restore`] over memory whose pages `known` describes: only the pages
/// that differ are read.
pub(crate) fn restore_over(
    mut store: impl AsContextMut,
    instance: &Instance,
    dir: &JobDir,
    known: Vec<Page>,
) -> Result<(), RunError> {
    let root = dir.checkpoints().join(SNAPSHOT_DIR);
    let state = read_memory(&mut store, instance, &root, known, 0)?.0;
    for (name, kind, bits) in state.globals {
        let global = instance
            .get_global(&mut store, &name)
            .ok_or_else(|| io("globals", format!("the module exports no global `{name}`")))?;
        let value = match kind {
            0 => Val::I32(bits as u32 as i32),
            1 => Val::I64(bits as i64),
            2 => Val::F32(bits as u32),
            3 => Val::F64(bits),
            _ => return Err(io("globals", format!("`{name}` has an unknown type"))),
        };
        global.set(&mut store, value).map_err(|e| io("globals", e))?;
    }
    copy_tree(&root.join("out"), &dir.outputs()).map_err(|e| io("restore /out", e))?;
    std::fs::remove_dir_all(&root).map_err(|e| io("remove", e))?;
    Ok(())
}

/// Puts the memory of the snapshot under `ckpt` (a `ckpt/` directory)
/// into `instance`, which runs nothing meanwhile: what an instance made
/// ready for a moved job holds before the job's last snapshot arrives.
/// Returns what each page holds now.
pub(crate) fn warm_memory(store: impl AsContextMut, instance: &Instance, ckpt: &Path) -> Result<Vec<Page>, RunError> {
    Ok(read_memory(store, instance, &ckpt.join(SNAPSHOT_DIR), Vec::new(), HELD_PAGES)?.1)
}

/// Page files a warm instance holds open, at most (its first pages; the
/// rest are read again when the job goes on): bounded by the process's
/// open files, not by the job's memory.
const HELD_PAGES: usize = 256;

/// Grows `instance`'s memory to the snapshot's size at `root` and reads
/// its pages, but for those `known` says it holds already; returns what
/// each page holds, at most `hold` page files kept open.
fn read_memory(
    mut store: impl AsContextMut,
    instance: &Instance,
    root: &Path,
    mut known: Vec<Page>,
    hold: usize,
) -> Result<(State, Vec<Page>), RunError> {
    use std::os::unix::fs::MetadataExt;
    let state = std::fs::read(root.join("state")).map_err(|e| io("read", e))?;
    let state: State = ciborium::from_reader(&state[..]).map_err(|e| io("state", e))?;
    let memory = instance
        .get_memory(&mut store, "memory")
        .ok_or_else(|| io("memory", "the module exports no memory named `memory`"))?;
    let have = memory.data_size(&store) as u64;
    if state.memory > have {
        let pages = (state.memory - have).div_ceil(65_536);
        // The limiter refuses a snapshot larger than this slot allows.
        memory.grow(&mut store, pages).map_err(|e| {
            io(
                "memory",
                format!("{} bytes are more than this slot allows: {e}", state.memory),
            )
        })?;
    }
    let data = memory.data_mut(&mut store);
    if data.len() as u64 != state.memory {
        return Err(io(
            "memory",
            format!("{} bytes, the snapshot has {}", data.len(), state.memory),
        ));
    }
    let mut now = Vec::with_capacity(data.len().div_ceil(PAGE));
    for (i, page) in data.chunks_mut(PAGE).enumerate() {
        let before = known
            .get_mut(i)
            .map_or(Page::Unknown, |p| std::mem::replace(p, Page::Unknown));
        let mut file = match std::fs::File::open(root.join("memory").join(format!("{i:05}"))) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !matches!(before, Page::Zero) {
                    page.fill(0);
                }
                now.push(Page::Zero);
                continue;
            }
            Err(e) => return Err(io("read", e)),
        };
        let meta = file.metadata().map_err(|e| io("read", e))?;
        if meta.len() != page.len() as u64 {
            return Err(io("memory", format!("page {i} holds {} bytes", meta.len())));
        }
        if let Page::File(held) = &before
            && let Ok(was) = held.metadata()
            && (was.dev(), was.ino()) == (meta.dev(), meta.ino())
        {
            // The same file as the one read before: the same bytes.
            now.push(before);
            continue;
        }
        // Straight into the memory: no copy in between.
        std::io::Read::read_exact(&mut file, page).map_err(|e| io("read", e))?;
        now.push(if i < hold { Page::File(file) } else { Page::Unknown });
    }
    Ok((state, now))
}

/// Copies the files under `from` into `to` (created), keeping their
/// relative paths; a missing `from` copies nothing.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut stack = vec![from.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let rel = d.strip_prefix(from).unwrap_or(Path::new(""));
        std::fs::create_dir_all(to.join(rel))?;
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                std::fs::copy(entry.path(), to.join(rel).join(entry.file_name()))?;
            }
        }
    }
    Ok(())
}
