//! The sandbox: one wasmtime engine for all plug-ins, a linker that offers
//! only Kite's host interface and a locked-down WASI (no files, no
//! environment, no sockets, clocks at 1 ms), and instances that each run
//! under a memory cap (all their linear memories together) and a time limit
//! on every entry into their code, instantiation included.
//!
//! Time is bounded with epoch interruption: a ticker thread advances the
//! engine's epoch every [`EPOCH_TICK`] while any plug-in call is running, and
//! each call traps once its deadline in ticks has passed. (Fuel would count
//! instructions instead; it costs more per instruction and does not bound
//! time spent in host calls. The benchmark in bench/RESULTS.md measures both.)

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, StoreContextMut, Trap};
use wasmtime_wasi::clocks::WasiClocksCtxView;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::codec::Codec as CodecWorld;
use crate::bindings::kite::plugin::host;
use crate::bindings::kite::plugin::types::{Decoded, Output, Reading};
use crate::bindings::Plugin;
use crate::bounds::{one_line, MAX_LOG_LINE_BYTES, MAX_REASON_BYTES};
use crate::clocks::{CoarseMonotonicClock, CoarseWallClock};
use crate::state::StateStore;

/// Granularity of the time limit.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Wasm stack per call; deeper recursion is a stack overflow, an ordinary error.
const MAX_WASM_STACK: usize = 256 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    #[error("cannot load the plug-in: {0}")]
    Load(String),
    #[error("{0}")]
    Signature(#[from] crate::signing::SigningError),
    #[error("the plug-in needs an import Kite does not grant: {0}")]
    Import(String),
    #[error("init refused the configuration: {0}")]
    Init(String),
    #[error("exceeded its time limit of {0:?}")]
    Timeout(Duration),
    #[error("exceeded its memory limit of {0} bytes")]
    OutOfMemory(usize),
    #[error("stack overflow")]
    StackOverflow,
    #[error("trapped: {0}")]
    Trap(String),
    #[error("output too large: {0}")]
    OutputTooLarge(String),
    #[error("state store: {0}")]
    State(String),
}

impl From<crate::bounds::TooLarge> for PluginError {
    fn from(e: crate::bounds::TooLarge) -> Self {
        PluginError::OutputTooLarge(e.0)
    }
}

/// What each instance may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// All the instance's linear memories together.
    pub memory_bytes: usize,
    /// Per entry into the plug-in's code: instantiation (start functions),
    /// `init`, `process`, `decode`.
    pub time: Duration,
    /// Keys plus values in the plug-in's state.
    pub state_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 16 << 20,
            time: Duration::from_millis(5),
            state_bytes: 64 << 10,
        }
    }
}

/// How plug-in code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// Compiled to machine code by Cranelift.
    Native,
    /// Compiled to Pulley bytecode and interpreted: for hosts Cranelift has
    /// no backend for, such as 32-bit ARM.
    Interpreter,
}

impl Execution {
    /// Native where Cranelift can generate code for this machine, else the interpreter.
    pub fn for_host() -> Self {
        if cfg!(any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "riscv64",
            target_arch = "s390x"
        )) {
            Execution::Native
        } else {
            Execution::Interpreter
        }
    }
}

/// The Pulley target matching this machine's pointer width.
fn interpreter_target() -> &'static str {
    if cfg!(target_pointer_width = "64") {
        "pulley64"
    } else {
        "pulley32"
    }
}

/// Engine settings; precompiled plug-ins must be built with the same ones.
fn engine_config(target: Option<&str>) -> Result<Config, PluginError> {
    let mut config = Config::new();
    if let Some(target) = target {
        config
            .target(target)
            .map_err(|e| PluginError::Load(format!("target {target}: {e}")))?;
    }
    config
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK);
    Ok(config)
}

/// Compiles a component ahead of time for `target` (`pulley32`, `pulley64`
/// or a native triple such as `aarch64-unknown-linux-gnu`), for gateways
/// that should not compile plug-ins themselves. Kite loads the result only
/// when a trusted key signed it.
#[cfg(feature = "compiler")]
pub fn precompile(bytes: &[u8], target: &str) -> Result<Vec<u8>, PluginError> {
    let engine = Engine::new(&engine_config(Some(target))?)
        .map_err(|e| PluginError::Load(format!("{e:#}")))?;
    engine
        .precompile_component(bytes)
        .map_err(|e| PluginError::Load(format!("{e:#}")))
}

#[cfg(not(feature = "compiler"))]
pub fn precompile(_bytes: &[u8], _target: &str) -> Result<Vec<u8>, PluginError> {
    Err(PluginError::Load(NO_COMPILER.into()))
}

#[cfg(not(feature = "compiler"))]
const NO_COMPILER: &str =
    "this Kite is a runtime-only build: ship plug-ins precompiled (kite plugin compile) and signed";

/// The engine and linker shared by every plug-in.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    ticker: Arc<TickerHandle>,
    #[cfg(feature = "compiler")]
    cache: Option<crate::cache::CompileCache>,
}

#[derive(Default)]
struct Ticker {
    active_calls: AtomicUsize,
    stopped: AtomicBool,
}

/// Held by the sandbox and every instance; the ticker thread ends when the
/// last of them is gone.
struct TickerHandle {
    ticker: Arc<Ticker>,
    thread: thread::Thread,
}

impl Drop for TickerHandle {
    fn drop(&mut self) {
        self.ticker.stopped.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

impl Sandbox {
    /// `cache_dir` keeps compiled code between runs, keyed by the hash of the
    /// plug-in file and the engine's settings, so a changed file is compiled
    /// again and an unchanged one is not; each entry is authenticated before
    /// it is loaded (see [`crate::cache`]). Only builds with a compiler
    /// compile, so only they keep a cache.
    pub fn new(cache_dir: Option<&Path>) -> Result<Self, PluginError> {
        Self::with_execution(cache_dir, Execution::for_host())
    }

    pub fn with_execution(
        cache_dir: Option<&Path>,
        execution: Execution,
    ) -> Result<Self, PluginError> {
        let target = match execution {
            Execution::Native => None,
            Execution::Interpreter => Some(interpreter_target()),
        };
        let config = engine_config(target)?;
        #[cfg(feature = "compiler")]
        let cache = cache_dir
            .map(crate::cache::CompileCache::open)
            .transpose()?;
        #[cfg(not(feature = "compiler"))]
        let _ = cache_dir;
        let engine = Engine::new(&config).map_err(|e| PluginError::Load(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .and_then(|()| cut_timers_at_the_deadline(&mut linker))
            .map_err(|e| PluginError::Load(e.to_string()))?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| PluginError::Load(e.to_string()))?;
        let ticker = Arc::new(Ticker::default());
        let thread = {
            let (ticker, engine) = (ticker.clone(), engine.clone());
            thread::Builder::new()
                .name("kite-plugin-epoch".into())
                .spawn(move || tick(&ticker, &engine))
                .map_err(|e| PluginError::Load(format!("epoch ticker: {e}")))?
                .thread()
                .clone()
        };
        Ok(Self {
            engine,
            linker,
            ticker: Arc::new(TickerHandle { ticker, thread }),
            #[cfg(feature = "compiler")]
            cache,
        })
    }

    /// Whether `bytes` are a component precompiled by [`precompile`] rather than WebAssembly.
    pub fn is_precompiled(bytes: &[u8]) -> bool {
        Engine::detect_precompiled(bytes).is_some()
    }

    /// Loads a precompiled component. Precompiled code is machine code (or
    /// Pulley bytecode) that wasmtime runs without validating it again, so
    /// the caller must have checked that a trusted key signed `bytes`.
    pub fn load_signed_precompiled(&self, bytes: &[u8]) -> Result<Component, PluginError> {
        #[allow(unsafe_code)]
        // SAFETY: wasmtime requires that deserialized bytes come from
        // `precompile_component` of a compatible engine and were not altered.
        // The only caller, `runner::load`, passes bytes whose ed25519
        // signature it verified against a key the operator trusts, and
        // wasmtime itself rejects artifacts of an incompatible engine.
        let component = unsafe { Component::deserialize(&self.engine, bytes) };
        component.map_err(|e| PluginError::Load(format!("{e:#}")))
    }

    /// Compiles a component, or loads what the cache holds for it once it
    /// has proved authentic.
    #[cfg(feature = "compiler")]
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, PluginError> {
        let failed = |e: wasmtime::Error| PluginError::Load(format!("{e:#}"));
        let Some(cache) = &self.cache else {
            return Component::new(&self.engine, bytes).map_err(failed);
        };
        if let Some(artifact) = cache.load(&self.engine, bytes) {
            #[allow(unsafe_code)]
            // SAFETY: wasmtime requires that deserialized bytes come from
            // serializing a component of a compatible engine and were not
            // altered. This entry's HMAC under this gateway's key checked
            // out, so this gateway stored it, from `serialize` below, and
            // nobody changed it since; its name covers the engine's settings,
            // and wasmtime itself rejects artifacts of an incompatible engine.
            match unsafe { Component::deserialize(&self.engine, &artifact) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(error = %e, "a compile cache entry would not load; compiling the plug-in again")
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(failed)?;
        match component.serialize() {
            Ok(artifact) => cache.store(&self.engine, bytes, &artifact),
            Err(e) => tracing::warn!(error = %e, "compiled plug-in code cannot be kept"),
        }
        Ok(component)
    }

    #[cfg(not(feature = "compiler"))]
    pub fn compile(&self, _bytes: &[u8]) -> Result<Component, PluginError> {
        Err(PluginError::Load(NO_COMPILER.into()))
    }

    /// Instantiates `component` for the plug-in `name` with its own store.
    /// Instantiation runs guest code (start functions), under the time limit.
    pub fn instantiate(
        &self,
        component: &Component,
        name: &str,
        limits: Limits,
        state: StateStore,
    ) -> Result<Instance, PluginError> {
        let mut store = self.store(name, limits, state);
        let bindings = self
            .ticker
            .bounded(&mut store, limits.time, |store| {
                Plugin::instantiate(store, component, &self.linker)
            })
            .map_err(|e| instantiation_error(e, limits))?;
        Ok(self.instance(store, bindings, limits))
    }

    /// Instantiates a codec plug-in (the `codec` world) for the device `name`.
    pub fn instantiate_codec(
        &self,
        component: &Component,
        name: &str,
        limits: Limits,
        state: StateStore,
    ) -> Result<Instance<CodecWorld>, PluginError> {
        let mut store = self.store(name, limits, state);
        let bindings = self
            .ticker
            .bounded(&mut store, limits.time, |store| {
                CodecWorld::instantiate(store, component, &self.linker)
            })
            .map_err(|e| instantiation_error(e, limits))?;
        Ok(self.instance(store, bindings, limits))
    }

    /// A store of its own, with nothing granted and the limits set.
    fn store(&self, name: &str, limits: Limits, state: StateStore) -> Store<HostState> {
        let host = HostState {
            wasi: WasiCtx::builder()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .wall_clock(CoarseWallClock)
                .monotonic_clock(CoarseMonotonicClock::default())
                // Random bytes are made on the host before the plug-in gets
                // them: ask for no more than the plug-in could hold.
                .max_random_size(u64::try_from(limits.memory_bytes).unwrap_or(u64::MAX))
                .build(),
            table: host_resources(),
            limiter: PluginLimiter::new(limits.memory_bytes),
            call_deadline: Some(Instant::now()),
            name: name.to_string(),
            state,
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limiter);
        // Guest code runs only inside `TickerHandle::bounded`, which sets the
        // deadline; anywhere else it would trap at once.
        store.set_epoch_deadline(0);
        store
    }

    fn instance<B>(&self, store: Store<HostState>, bindings: B, limits: Limits) -> Instance<B> {
        Instance {
            store,
            bindings,
            limits,
            ticker: self.ticker.clone(),
        }
    }
}

/// The WASI interface whose timers [`cut_timers_at_the_deadline`] replaces,
/// as `wasmtime_wasi` names it.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A plug-in that waits on a WASI timer (a sleep) blocks in host code,
/// where epoch interruption cannot stop it, so its time limit would not
/// hold. Its timers are therefore cut at the deadline of the call that set
/// them; once past it, the plug-in traps at its next loop or call.
fn cut_timers_at_the_deadline(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: StoreContextMut<'_, HostState>, (nanos,): (u64,)| {
            Ok((store.data_mut().timer(Duration::from_nanos(nanos))?,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: StoreContextMut<'_, HostState>, (when,): (u64,)| {
            let host = store.data_mut();
            let now = monotonic_clock::Host::now(&mut host.clocks())?;
            Ok((host.timer(Duration::from_nanos(when.saturating_sub(now)))?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

impl TickerHandle {
    /// Runs `call`, which enters guest code in `store`, under the time
    /// limit `time`: the ticker advances the epoch while it runs, and the
    /// guest traps once `time` has passed.
    fn bounded<T>(
        &self,
        store: &mut Store<HostState>,
        time: Duration,
        call: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> wasmtime::Result<T> {
        let ticks = time.as_nanos().div_ceil(EPOCH_TICK.as_nanos()).max(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.data_mut().call_deadline = Instant::now().checked_add(time);
        let _running = ActiveCall::start(self);
        call(store)
    }
}

/// One call in progress: keeps the ticker ticking until it is dropped,
/// however the call ends.
struct ActiveCall<'a>(&'a Ticker);

impl<'a> ActiveCall<'a> {
    fn start(handle: &'a TickerHandle) -> Self {
        handle.ticker.active_calls.fetch_add(1, Ordering::AcqRel);
        handle.thread.unpark();
        Self(&handle.ticker)
    }
}

impl Drop for ActiveCall<'_> {
    fn drop(&mut self) {
        self.0.active_calls.fetch_sub(1, Ordering::AcqRel);
    }
}

fn instantiation_error(error: wasmtime::Error, limits: Limits) -> PluginError {
    match classify(error, limits) {
        PluginError::Trap(message) if message.contains("import") => PluginError::Import(message),
        other => other,
    }
}

fn tick(ticker: &Ticker, engine: &Engine) {
    while !ticker.stopped.load(Ordering::Acquire) {
        if ticker.active_calls.load(Ordering::Acquire) > 0 {
            thread::sleep(EPOCH_TICK);
            engine.increment_epoch();
        } else {
            // Idle gateways do not wake every millisecond; a call unparks the ticker.
            thread::park_timeout(Duration::from_secs(1));
        }
    }
}

/// Turns a wasmtime error into what happened, in the plug-in's terms.
fn classify(error: wasmtime::Error, limits: Limits) -> PluginError {
    if let Some(exceeded) = error.downcast_ref::<LimitExceeded>() {
        return match exceeded {
            LimitExceeded::Memory => PluginError::OutOfMemory(limits.memory_bytes),
            LimitExceeded::TableElements(_) => PluginError::Trap(exceeded.to_string()),
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Timeout(limits.time),
        Some(Trap::StackOverflow) => PluginError::StackOverflow,
        Some(trap) => PluginError::Trap(trap.to_string()),
        // Its context and backtrace may carry the plug-in's text (function names).
        None => PluginError::Trap(one_line(&format!("{error:#}"), MAX_LOG_LINE_BYTES)),
    }
}

/// Most WASI resources (streams, timers) a plug-in may hold at once. Each
/// lives in the gateway's memory, outside the plug-in's limit; a plug-in
/// needs a handful (its standard streams, a timer while it sleeps).
const MAX_HOST_RESOURCES: usize = 1024;

fn host_resources() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_HOST_RESOURCES);
    table
}

/// A store limit the plug-in ran into; growing past it traps.
#[derive(Debug, thiserror::Error)]
enum LimitExceeded {
    #[error("its memories together would exceed its memory limit")]
    Memory,
    #[error("a table of {0} elements, more than {MAX_TABLE_ELEMENTS}")]
    TableElements(usize),
}

/// Most core instances in one plug-in's store.
const MAX_INSTANCES: usize = 16;
/// Most tables in one plug-in's store.
const MAX_TABLES: usize = 16;
/// Most elements of one table.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Most linear memories in one plug-in's store. A component made from one
/// language's code has one (its WASI adapter shares it); four leave room
/// for a few more, while each costs the gateway address space (wasmtime
/// reserves gigabytes of virtual memory per linear memory) and bookkeeping
/// whatever its size.
const MAX_MEMORIES: usize = 4;

/// The store's resource limiter: `memory_limit` bounds the bytes of all the
/// plug-in's linear memories together (`StoreLimits` would bound each one,
/// and a plug-in may define several), and the counts above bound the rest.
#[derive(Debug)]
struct PluginLimiter {
    memory_limit: usize,
    /// Bytes of all linear memories, including their initial sizes.
    memory_bytes: usize,
    /// The growth last granted, taken back if wasmtime then fails to grow.
    granted: usize,
}

impl PluginLimiter {
    fn new(memory_limit: usize) -> Self {
        Self {
            memory_limit,
            memory_bytes: 0,
            granted: 0,
        }
    }
}

impl ResourceLimiter for PluginLimiter {
    /// Also called with `current` 0 when a memory is created.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|maximum| desired > maximum) {
            // Past the memory's own maximum: `memory.grow` returns -1, as in any runtime.
            return Ok(false);
        }
        let growth = desired.saturating_sub(current);
        let total = self.memory_bytes.saturating_add(growth);
        if total > self.memory_limit {
            return Err(wasmtime::Error::new(LimitExceeded::Memory));
        }
        self.memory_bytes = total;
        self.granted = growth;
        Ok(true)
    }

    /// The growth granted just before could not be made (the system is out
    /// of memory). With 64 KiB pages (this engine does not enable custom
    /// page sizes) every failure follows a grant.
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_bytes -= std::mem::take(&mut self.granted);
        Err(error.context(LimitExceeded::Memory))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        if desired > MAX_TABLE_ELEMENTS {
            return Err(wasmtime::Error::new(LimitExceeded::TableElements(desired)));
        }
        Ok(true)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// One running plug-in: its store and the exports of its world.
pub struct Instance<B = Plugin> {
    store: Store<HostState>,
    bindings: B,
    limits: Limits,
    ticker: Arc<TickerHandle>,
}

impl<B> Instance<B> {
    /// Runs `call` under the time limit.
    fn bounded<T>(
        &mut self,
        call: impl FnOnce(&B, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, PluginError> {
        let bindings = &self.bindings;
        self.ticker
            .bounded(&mut self.store, self.limits.time, |store| {
                call(bindings, store)
            })
            .map_err(|e| classify(e, self.limits))
    }
}

impl Instance<Plugin> {
    pub fn init(&mut self, config_json: &str) -> Result<(), PluginError> {
        self.bounded(|plugin, store| plugin.call_init(store, config_json))?
            .map_err(init_refused)
    }

    pub fn process(&mut self, batch: &[Reading]) -> Result<Output, PluginError> {
        self.bounded(|plugin, store| plugin.call_process(store, batch))
    }
}

impl Instance<CodecWorld> {
    pub fn init(&mut self, config_json: &str) -> Result<(), PluginError> {
        self.bounded(|codec, store| codec.call_init(store, config_json))?
            .map_err(init_refused)
    }

    /// The frame's points, or the codec's reason for refusing the frame.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Result<Vec<Decoded>, String>, PluginError> {
        self.bounded(|codec, store| codec.call_decode(store, frame))
    }
}

/// `init`'s reason for refusing its configuration, as one bounded line.
fn init_refused(reason: String) -> PluginError {
    PluginError::Init(one_line(&reason, MAX_REASON_BYTES))
}

/// What the host functions see: the WASI context (with nothing granted),
/// the resource limiter, the running call's deadline, and the plug-in's state.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: PluginLimiter,
    /// When the running call must end; `None` when its limit is too far
    /// away to represent.
    call_deadline: Option<Instant>,
    name: String,
    state: StateStore,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    fn clocks(&mut self) -> WasiClocksCtxView<'_> {
        WasiClocksCtxView {
            ctx: self.wasi.clocks(),
            table: &mut self.table,
        }
    }

    /// A WASI timer for `wait`, cut at the running call's deadline.
    fn timer(&mut self, wait: Duration) -> wasmtime::Result<Resource<DynPollable>> {
        let wait = match self.call_deadline {
            Some(deadline) => wait.min(deadline.saturating_duration_since(Instant::now())),
            None => wait,
        };
        let nanos = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        monotonic_clock::Host::subscribe_duration(&mut self.clocks(), nanos)
    }
}

impl crate::bindings::kite::plugin::types::Host for HostState {}

impl host::Host for HostState {
    /// One call is one line of Kite's log, tagged with the plug-in's name.
    fn log(&mut self, level: host::Level, message: String) {
        let message = one_line(&message, MAX_LOG_LINE_BYTES);
        let plugin = self.name.as_str();
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{message}"),
            host::Level::Debug => tracing::debug!(plugin, "{message}"),
            host::Level::Info => tracing::info!(plugin, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, "{message}"),
            host::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> i64 {
        kite_core::now_ms()
    }

    fn state_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.state.get(&key).unwrap_or_else(|e| {
            tracing::error!(plugin = %self.name, error = %e, "plug-in state read failed");
            None
        })
    }

    fn state_set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.state.set(&key, &value)
    }

    fn state_delete(&mut self, key: String) {
        if let Err(e) = self.state.delete(&key) {
            tracing::error!(plugin = %self.name, error = %e, "plug-in state delete failed");
        }
    }
}
