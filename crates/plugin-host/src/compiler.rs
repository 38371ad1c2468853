//! Where plugins compile: a thread pool of its own, at the lowest CPU priority while the
//! gateway serves.
//!
//! Compiling a Python or JavaScript component takes seconds of CPU on every core cranelift is
//! given. At normal priority that time comes straight out of the workers serving requests
//! (measured: another route's p99 went 4.2× up while an 18 MB component compiled). So once
//! the gateway serves, compiles run on the cores the workers leave free (at least one thread)
//! under `SCHED_IDLE`: the thread runs only when no worker wants the core.
//! cranelift's parallel compilation uses rayon; running the compile inside this pool makes it
//! use these threads, not rayon's global pool (whose threads run at normal priority).
//!
//! Before it serves (the first load at start, `sluice plugin check`) there is nothing to
//! protect, and `SCHED_IDLE` would be a hazard: on a machine busy with other work a start-up
//! compile would get almost no CPU and the gateway would not come up. So until
//! [`CompilePool::begin_serving`], compiles run at normal priority on every core.
//!
//! The price: while the machine is saturated, a cold compile of a plugin added at run time
//! takes longer. A restart or a reload of known bytes is served from the compile cache and
//! takes milliseconds anyway.

use std::sync::atomic::{AtomicBool, Ordering};

use thread_priority::{
    NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
    set_thread_priority_and_policy, thread_native_id,
};

/// The compile threads.
pub struct CompilePool {
    /// Until the gateway serves: normal priority, a thread per core.
    startup: rayon::ThreadPool,
    /// While it serves: `SCHED_IDLE`, on the cores the workers leave free.
    serving: rayon::ThreadPool,
    threads: usize,
    is_serving: AtomicBool,
}

impl std::fmt::Debug for CompilePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompilePool")
            .field("threads", &self.threads)
            .field("serving", &self.is_serving.load(Ordering::Relaxed))
            .finish()
    }
}

impl CompilePool {
    /// A pool for `workers` data-plane threads (see the module's doc for the two phases).
    pub fn new(workers: usize) -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = compile_threads(cores, workers);
        let startup = rayon::ThreadPoolBuilder::new()
            .num_threads(cores)
            .thread_name(|i| format!("sluice-compile-start-{i}"))
            .build()?;
        let serving = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("sluice-compile-{i}"))
            .start_handler(|_| lower_priority())
            .build()?;
        Ok(Self {
            startup,
            serving,
            threads,
            is_serving: AtomicBool::new(false),
        })
    }

    /// Threads compiling while the gateway serves.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The gateway serves from now on: compiles started later run at the lowest priority.
    pub fn begin_serving(&self) {
        self.is_serving.store(true, Ordering::Release);
    }

    /// Runs `job` on the pool; `None` if it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let pool = if self.is_serving.load(Ordering::Acquire) {
            &self.serving
        } else {
            &self.startup
        };
        pool.spawn(move || {
            // rayon aborts the process when a spawned job panics: catch it here, and the
            // dropped sender tells the caller.
            if let Ok(output) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                let _ = done.send(output);
            }
        });
        result.await.ok()
    }
}

/// Compile threads for `workers` data-plane threads on `cores` cores (`workers = 0`: one per
/// core): the cores left over, at least one.
fn compile_threads(cores: usize, workers: usize) -> usize {
    let workers = if workers == 0 { cores } else { workers };
    cores.saturating_sub(workers).max(1)
}

/// `SCHED_IDLE` for the calling thread. Lowering one's own priority needs no privilege; if
/// the system refuses anyway, the compile still runs, at normal priority.
fn lower_priority() {
    let lowered = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    if let Err(e) = lowered {
        tracing::warn!(target: crate::LOG_TARGET, "plugin compile thread keeps normal priority: {e:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compile_threads_use_the_cores_the_workers_leave() {
        assert_eq!(compile_threads(8, 2), 6);
        assert_eq!(compile_threads(2, 1), 1);
        assert_eq!(compile_threads(2, 2), 1, "at least one");
        assert_eq!(compile_threads(4, 16), 1, "more workers than cores");
        assert_eq!(compile_threads(4, 0), 1, "workers = 0 is one per core");
        assert_eq!(compile_threads(1, 1), 1);
    }

    /// The nice value and scheduling policy of the calling thread, from procfs.
    fn own_nice_and_policy() -> (i64, u64) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command (which may contain spaces) start at `)`.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        // stat(5): field 19 is nice, field 41 is policy; `fields[0]` is field 3.
        (
            fields[19 - 3].parse().unwrap(),
            fields[41 - 3].parse().unwrap(),
        )
    }

    /// Nested parallel work (cranelift's) stays on the pool's threads.
    async fn nested_work_threads(pool: &CompilePool) -> Vec<String> {
        pool.run(|| {
            use rayon::prelude::*;
            (0..64)
                .into_par_iter()
                .map(|_| std::thread::current().name().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn before_the_gateway_serves_jobs_run_at_normal_priority() {
        let pool = CompilePool::new(1).unwrap();
        let caller = own_nice_and_policy();
        assert_eq!(pool.run(own_nice_and_policy).await.unwrap(), caller);
        let names = nested_work_threads(&pool).await;
        assert!(
            names.iter().all(|n| n.starts_with("sluice-compile-start-")),
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn while_the_gateway_serves_jobs_run_at_the_lowest_priority() {
        let pool = CompilePool::new(1).unwrap();
        pool.begin_serving();
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(pool.threads(), compile_threads(cores, 1));
        let (_, policy) = pool.run(own_nice_and_policy).await.unwrap();
        assert_eq!(policy, 5, "SCHED_IDLE");
        let names = nested_work_threads(&pool).await;
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("sluice-compile-") && !n.contains("start")),
            "{names:?}"
        );
        assert_eq!(own_nice_and_policy().0, 0, "the caller keeps its priority");
    }

    #[tokio::test]
    async fn a_panicking_job_is_reported_not_propagated() {
        let pool = CompilePool::new(1).unwrap();
        assert!(pool.run(|| panic!("boom")).await.is_none());
        assert_eq!(pool.run(|| 7).await, Some(7), "the pool still serves");
    }
}
