//! A persistent thread pool tuned for a handful of cores.
//!
//! The thread that calls [`ThreadPool::run`] is worker 0 and does its share of the job; the pool
//! only owns `n_threads - 1` helper threads, so on a 2-vCPU machine no third thread ever competes
//! for a core. A job is published under a small mutex and announced by bumping an epoch counter;
//! helpers spin on the epoch for about [`SPIN_TIME`] (cheap hand-off between the ~200 matmuls of a
//! decode step) and then park, so an idle pool burns no CPU.
//!
//! Job indices are *claimed*, not assigned: every thread, the caller included, takes the next
//! unclaimed index until none is left. Normally each thread runs one index, but when a helper is
//! descheduled (a busy, oversubscribed host) the caller simply runs its index too instead of
//! waiting for the helper to be scheduled again.
//!
//! Panics inside the job are caught on every thread; once all indices are done the caller
//! re-raises its own panic or reports a helper's, so a panic never leaves the pool deadlocked.

use std::any::Any;
use std::cell::Cell;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long a waiting thread spins before it parks.
pub const SPIN_TIME: Duration = Duration::from_micros(100);

/// The job type shared with the helpers (lifetime erased, see [`ThreadPool::run`]).
type Job = dyn Fn(usize, usize) + Sync;

thread_local! {
    /// Set while this thread executes a pool job; nested `run` calls then execute inline.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

/// Keeps a hot atomic on its own cache line.
#[repr(align(64))]
struct CacheLine<T>(T);

/// The current job, guarded by [`Shared::job`].
struct JobState {
    /// The caller's closure; valid while an index below `n` is unclaimed or running.
    job: Option<*const Job>,
    /// Indices of the job (the pool's thread count).
    n: usize,
    /// Next unclaimed index.
    next: usize,
    /// Thread to unpark when the last index completes.
    caller: Option<Thread>,
}

// SAFETY: the raw pointer refers to a `Sync` closure and is dereferenced only by a thread that
// claimed an index of that job, while `run` is still waiting for the job to complete.
unsafe impl Send for JobState {}

/// State shared between the pool handle and its helper threads.
struct Shared {
    /// Bumped once per published job (and once at shutdown); helpers spin on it.
    epoch: CacheLine<AtomicUsize>,
    /// Indices of the current job that have completed.
    done: CacheLine<AtomicUsize>,
    job: Mutex<JobState>,
    /// Payload of the first panic in the current job.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    shutdown: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, JobState> {
        self.job.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims the next index of the current job: `(index, n, job, caller)`.
    fn claim(&self) -> Option<(usize, usize, *const Job, Option<Thread>)> {
        let mut st = self.state();
        let job = st.job?;
        if st.next >= st.n {
            return None;
        }
        st.next += 1;
        Some((st.next - 1, st.n, job, st.caller.clone()))
    }

    /// Runs claimed index `i` of `job`, recording a panic, and counts it as done.
    ///
    /// # Safety
    /// `job` must be the closure of the job `i` was claimed from, and that job's `run` call must
    /// still be waiting (guaranteed until this index is counted as done).
    unsafe fn execute(&self, job: *const Job, i: usize, n: usize, caller: Option<&Thread>) {
        let result = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: per the contract, the closure outlives this call; it is `Sync`.
            let f = unsafe { &*job };
            run_in_job(|| f(i, n));
        }));
        if let Err(payload) = result {
            self.panic
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(payload);
        }
        if self.done.0.fetch_add(1, Ordering::AcqRel) + 1 == n
            && let Some(c) = caller
        {
            c.unpark();
        }
    }
}

/// A persistent pool of compute threads; the caller of [`run`](ThreadPool::run) is worker 0.
pub struct ThreadPool {
    n_threads: usize,
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// Serialises concurrent callers of `run`.
    lock: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.n_threads)
            .finish()
    }
}

impl ThreadPool {
    /// Creates a pool of `n_threads` threads in total, the caller included (`n_threads - 1`
    /// helpers are spawned; `0` is treated as `1`, which runs every job inline). If the OS
    /// refuses to spawn a helper, the pool keeps the threads it got.
    pub fn new(n_threads: usize) -> ThreadPool {
        let shared = Arc::new(Shared {
            epoch: CacheLine(AtomicUsize::new(0)),
            done: CacheLine(AtomicUsize::new(0)),
            job: Mutex::new(JobState {
                job: None,
                n: 0,
                next: 0,
                caller: None,
            }),
            panic: Mutex::new(None),
            shutdown: AtomicBool::new(false),
        });
        let wanted = n_threads.max(1);
        let mut helpers = Vec::with_capacity(wanted - 1);
        for index in 1..wanted {
            let sh = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name(format!("veil-worker-{index}"))
                .spawn(move || helper_main(&sh));
            match spawned {
                Ok(handle) => helpers.push(handle),
                Err(_) => break,
            }
        }
        ThreadPool {
            n_threads: helpers.len() + 1,
            shared,
            helpers,
            lock: Mutex::new(()),
        }
    }

    /// The default thread count: `VEIL_THREADS` if set to a positive integer, otherwise
    /// [`std::thread::available_parallelism`] (1 if unknown).
    pub fn default_threads() -> usize {
        std::env::var("VEIL_THREADS")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Threads taking part in each job, the caller included.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Calls `f(index, n_threads)` exactly once for every `index` in `0..n_threads` and returns
    /// when all calls have finished. The calling thread runs index 0 and each helper normally
    /// runs one other index; an index a helper has not picked up by the time the caller is done
    /// is run by the caller, so `f` must not assume which OS thread runs which index.
    ///
    /// Concurrent callers are serialised. A call from inside a running job (of any pool) runs
    /// all indices inline on the current thread, so nesting cannot deadlock.
    ///
    /// # Panics
    /// Re-raises a panic of `f` once every index has finished.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        let n = self.n_threads;
        if n == 1 || IN_JOB.with(Cell::get) {
            for i in 0..n {
                f(i, n);
            }
            return;
        }
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let sh = &*self.shared;
        let job: &(dyn Fn(usize, usize) + Sync + '_) = &f;
        // SAFETY: only the lifetime bound of the trait object changes. The pointer is
        // dereferenced only by threads that claimed an index, and this function does not return
        // (or unwind) before every index is done, so `f` outlives every use. It is unpublished
        // before returning.
        let job: *const Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync + '_), &'static Job>(job) };
        sh.done.0.store(0, Ordering::Relaxed);
        {
            let mut st = sh.state();
            *st = JobState {
                job: Some(job),
                n,
                next: 1,
                caller: Some(thread::current()),
            };
        }
        sh.epoch.0.fetch_add(1, Ordering::Release);
        for h in &self.helpers {
            h.thread().unpark();
        }

        // SAFETY: index 0 was reserved for us (`next` starts at 1) and we wait below.
        unsafe { sh.execute(job, 0, n, None) };
        while let Some((i, _, _, _)) = sh.claim() {
            // SAFETY: `i` was claimed from this job, which we are still running.
            unsafe { sh.execute(job, i, n, None) };
        }
        wait_until(|| sh.done.0.load(Ordering::Acquire) == n);
        *sh.state() = JobState {
            job: None,
            n: 0,
            next: 0,
            caller: None,
        };
        if let Some(payload) = sh.panic.lock().unwrap_or_else(PoisonError::into_inner).take() {
            resume_unwind(payload);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.shared.shutdown.store(true, Ordering::Relaxed);
        self.shared.epoch.0.fetch_add(1, Ordering::Release);
        for h in &self.helpers {
            h.thread().unpark();
        }
        for h in self.helpers.drain(..) {
            // A helper never panics outside a job (jobs are caught), so ignoring is fine.
            let _ = h.join();
        }
    }
}

/// Runs `f` with the in-job flag set, restoring it afterwards (even on unwind).
fn run_in_job<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_JOB.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(IN_JOB.with(|c| c.replace(true)));
    f()
}

/// Spins on `done` for up to [`SPIN_TIME`], then parks until it holds. Callers must make sure
/// whoever makes `done` true unparks this thread afterwards.
fn wait_until(done: impl Fn() -> bool) {
    let start = Instant::now();
    let mut spins = 0u32;
    while !done() {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(64) && start.elapsed() > SPIN_TIME {
            // Park tokens make this race-free: an unpark issued before `park` makes it return
            // at once, and spurious wake-ups just re-check the condition.
            while !done() {
                thread::park();
            }
            return;
        }
    }
}

/// Body of a helper thread: wait for a new epoch, claim and run indices until none is left.
fn helper_main(sh: &Shared) {
    set_flush_denormals();
    let mut seen = 0usize;
    loop {
        wait_until(|| sh.epoch.0.load(Ordering::Acquire) != seen);
        seen = sh.epoch.0.load(Ordering::Acquire);
        if sh.shutdown.load(Ordering::Relaxed) {
            return;
        }
        while let Some((i, n, job, caller)) = sh.claim() {
            // SAFETY: `i` was claimed from the job `job` belongs to (read under the same lock),
            // and its `run` call waits until this index is counted as done.
            unsafe { sh.execute(job, i, n, caller.as_ref()) };
        }
    }
}

/// Sets flush-to-zero and denormals-are-zero (MXCSR bits 15 and 6) for the current thread, so
/// denormal weights or activations cannot slow the FMA kernels down ~30x. Helper threads of a
/// [`ThreadPool`] do this themselves; call it once on every thread that calls
/// [`ThreadPool::run`]. A no-op on other architectures.
pub fn set_flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: `stmxcsr` stores the 32-bit MXCSR register to a valid, writable u32.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &raw mut csr, options(nostack, preserves_flags));
        }
        csr |= 0x8040;
        // SAFETY: `ldmxcsr` loads MXCSR from a valid u32; only the FTZ and DAZ bits changed and
        // no reserved bit is set (they were zero in the value just read).
        unsafe {
            std::arch::asm!("ldmxcsr [{}]", in(reg) &raw const csr, options(nostack, preserves_flags));
        }
    }
}

/// Splits `0..len` into `parts` contiguous chunks and returns chunk `idx`.
///
/// Chunk boundaries are multiples of `align` (except the final end, which is `len`); the work
/// is balanced in units of `align` elements. Chunks may be empty when there are fewer units
/// than parts. `parts == 0` or `align == 0` are treated as 1; `idx >= parts` yields an empty
/// range at `len`.
pub fn split_range(len: usize, parts: usize, idx: usize, align: usize) -> Range<usize> {
    let parts = parts.max(1);
    let align = align.max(1);
    if idx >= parts {
        return len..len;
    }
    let units = len.div_ceil(align);
    let (base, extra) = (units / parts, units % parts);
    let start_unit = idx * base + idx.min(extra);
    let end_unit = start_unit + base + usize::from(idx < extra);
    (start_unit * align).min(len)..(end_unit * align).min(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn split_range_covers_exactly() {
        for len in [0usize, 1, 2, 15, 16, 17, 100, 1000, 3072] {
            for parts in 1..=7 {
                for align in [1usize, 2, 4, 16, 64] {
                    let mut next = 0;
                    for idx in 0..parts {
                        let r = split_range(len, parts, idx, align);
                        assert_eq!(r.start, next, "len {len} parts {parts} align {align}");
                        assert!(r.start <= r.end);
                        if r.end != len {
                            assert_eq!(r.end % align, 0);
                        }
                        next = r.end;
                    }
                    assert_eq!(next, len);
                    // Balanced: chunk sizes in units differ by at most one.
                    let sizes: Vec<usize> = (0..parts)
                        .map(|i| split_range(len, parts, i, align).len().div_ceil(align))
                        .collect();
                    let (mn, mx) = (sizes.iter().min().copied(), sizes.iter().max().copied());
                    assert!(mx.unwrap_or(0) - mn.unwrap_or(0) <= 1);
                }
            }
        }
        assert_eq!(split_range(10, 2, 5, 1), 10..10);
    }

    fn check_pool(n: usize, runs: usize) {
        let pool = ThreadPool::new(n);
        assert_eq!(pool.n_threads(), n.max(1));
        let counts: Vec<AtomicU64> = (0..pool.n_threads()).map(|_| AtomicU64::new(0)).collect();
        for _ in 0..runs {
            pool.run(|i, nt| {
                assert_eq!(nt, pool.n_threads());
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        for c in &counts {
            assert_eq!(c.load(Ordering::Relaxed), runs as u64);
        }
    }

    #[test]
    fn pool_runs_every_index_once() {
        for n in [0usize, 1, 2, 3, 4, 8] {
            check_pool(n, 1);
            check_pool(n, 2000);
        }
    }

    #[test]
    fn pool_survives_idle_parking() {
        let pool = ThreadPool::new(3);
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(2));
            let sum = AtomicUsize::new(0);
            pool.run(|i, _| {
                sum.fetch_add(i + 1, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 6);
        }
    }

    #[test]
    fn pool_writes_disjoint_chunks() {
        let pool = ThreadPool::new(3);
        let data: Vec<AtomicUsize> = (0..1001).map(|_| AtomicUsize::new(0)).collect();
        pool.run(|i, n| {
            for j in split_range(data.len(), n, i, 8) {
                data[j].fetch_add(j + 1, Ordering::Relaxed);
            }
        });
        for (j, d) in data.iter().enumerate() {
            assert_eq!(d.load(Ordering::Relaxed), j + 1);
        }
    }

    #[test]
    fn nested_run_executes_inline() {
        let outer = ThreadPool::new(2);
        let inner = ThreadPool::new(3);
        let hits = AtomicUsize::new(0);
        outer.run(|_, _| {
            outer.run(|_, _| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
            inner.run(|_, _| {
                hits.fetch_add(10, Ordering::Relaxed);
            });
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2 * (2 + 30));
    }

    #[test]
    fn concurrent_callers_are_serialised() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..200 {
                        pool.run(|_, _| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 200 * 2);
    }

    #[test]
    fn worker_panic_propagates_and_pool_recovers() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|i, _| {
                if i == 1 {
                    panic!("boom in helper");
                }
            })
        }));
        let payload = r.expect_err("must panic");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in helper"));
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|i, _| {
                if i == 0 {
                    panic!("boom in caller");
                }
            })
        }));
        assert!(r.is_err());
        check_pool(2, 10);
        let hits = AtomicUsize::new(0);
        pool.run(|_, _| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn default_threads_is_positive() {
        assert!(ThreadPool::default_threads() >= 1);
    }

    #[test]
    fn flush_denormals_flushes() {
        std::thread::spawn(|| {
            set_flush_denormals();
            let tiny = std::hint::black_box(f32::MIN_POSITIVE);
            let r = std::hint::black_box(tiny * 0.5);
            #[cfg(target_arch = "x86_64")]
            assert_eq!(r, 0.0);
            #[cfg(not(target_arch = "x86_64"))]
            let _ = r;
        })
        .join()
        .expect("thread");
    }
}
