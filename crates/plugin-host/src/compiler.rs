//! Where plugins compile: a thread pool of its own, at the lowest CPU priority.
//!
//! Compiling a Python or JavaScript component takes seconds of CPU on every core cranelift is
//! given. At normal priority that time comes straight out of the workers serving requests
//! (measured: another route's p99 went 4.2× up while an 18 MB component compiled). So each
//! compile thread is lowered to nice 19 with the `SCHED_BATCH` policy: a worker that wakes up
//! preempts it at once, and while the workers are busy it gets a small share of the CPU; when
//! they are idle (at start, between bursts) it compiles at full speed on every core.
//! cranelift's parallel compilation uses rayon; running the compile inside this pool makes it
//! use these threads, not rayon's global pool (whose threads run at normal priority).
//!
//! The price: while the machine is saturated, a cold compile takes longer. A restart or a
//! reload of known bytes is served from the compile cache and takes milliseconds anyway.

use thread_priority::{
    NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
    set_thread_priority_and_policy, thread_native_id,
};

/// The compile threads.
pub struct CompilePool {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl std::fmt::Debug for CompilePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompilePool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl CompilePool {
    /// A pool with a thread per core the `workers` leave free, at least one.
    pub fn new(workers: usize) -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = compile_threads(cores, workers);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("sluice-compile-{i}"))
            .start_handler(|_| lower_priority())
            .build()?;
        Ok(Self { pool, threads })
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job` on the pool; `None` if it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.pool.spawn(move || {
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

    #[tokio::test]
    async fn jobs_run_at_the_lowest_priority() {
        let pool = CompilePool::new(1).unwrap();
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(pool.threads(), compile_threads(cores, 1));
        let (_, policy) = pool.run(own_nice_and_policy).await.unwrap();
        assert_eq!(policy, 5, "SCHED_IDLE");
        // Nested parallel work (cranelift's) stays on the pool's threads.
        let names = pool
            .run(|| {
                use rayon::prelude::*;
                (0..64)
                    .into_par_iter()
                    .map(|_| std::thread::current().name().unwrap_or("").to_owned())
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap();
        assert!(
            names.iter().all(|n| n.starts_with("sluice-compile-")),
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
