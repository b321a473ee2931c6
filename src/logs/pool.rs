//! A small pool for the CPU work of a scan (decompressing blocks, running a regex over
//! them): jobs are made on the calling thread (which owns the read transaction), run on
//! up to as many threads as there are cores, and their results handed back in the order
//! the jobs were made. Only a few jobs are in flight at once, so a scan that stops early
//! (a head that is full) does little work past its end.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, mpsc};

/// Threads a scan uses: the machine's cores, at most four, or `BPM_SCAN_THREADS` (1 to
/// 4) where searches should leave the cores to the processes. Found once: asking reads
/// cgroup files on Linux, which would cost a search more than skipping a whole instance.
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        let asked = std::env::var("BPM_SCAN_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok());
        asked
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, 4)
    })
}

/// Run `work` over the jobs `next` makes (until it returns `None`), and hand each result
/// to `consume` in job order, until it breaks. With one thread, everything runs here.
pub fn ordered<J: Send, R: Send>(
    threads: usize,
    mut next: impl FnMut() -> Option<J>,
    work: &(impl Fn(J) -> R + Sync),
    mut consume: impl FnMut(R) -> ControlFlow<()>,
) {
    // No thread is started for a scan with nothing to read (a rare literal skips most
    // instances whole), nor for one with a single job.
    let Some(first) = next() else { return };
    if threads <= 1 {
        for job in std::iter::once(first).chain(std::iter::from_fn(next)) {
            if consume(work(job)).is_break() {
                return;
            }
        }
        return;
    }
    let Some(second) = next() else {
        let _ = consume(work(first));
        return;
    };
    let mut made = [Some(first), Some(second)].into_iter().flatten();
    let mut next = || made.next().or_else(&mut next);
    let window = threads * 2;
    let (job_tx, job_rx) = mpsc::channel::<(usize, J)>();
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|s| {
        // Owned here, so that it is dropped (and the workers end) however this closure
        // ends: a panic in `next` or `consume` (redb on a damaged page, under the caller's
        // `no_panic`) must not leave the scope waiting for workers that wait for jobs.
        let job_tx = job_tx;
        let (res_tx, res_rx) = mpsc::channel::<(usize, std::thread::Result<R>)>();
        for _ in 0..threads {
            let res_tx = res_tx.clone();
            let job_rx = &job_rx;
            s.spawn(move || {
                loop {
                    let job = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((i, job)) = job else { return };
                    // A panic goes back to the calling thread with the job's result.
                    let r = std::panic::catch_unwind(AssertUnwindSafe(|| work(job)));
                    if res_tx.send((i, r)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(res_tx);
        let (mut sent, mut done) = (0usize, 0usize);
        let mut exhausted = false;
        let mut ready: BTreeMap<usize, std::thread::Result<R>> = BTreeMap::new();
        loop {
            while !exhausted && sent - done < window {
                match next() {
                    Some(job) => {
                        if job_tx.send((sent, job)).is_err() {
                            return;
                        }
                        sent += 1;
                    }
                    None => exhausted = true,
                }
            }
            if done == sent {
                break;
            }
            let r = loop {
                if let Some(r) = ready.remove(&done) {
                    break r;
                }
                match res_rx.recv() {
                    Ok((i, r)) => {
                        ready.insert(i, r);
                    }
                    // Every worker is gone (they only end once the jobs do).
                    Err(_) => return,
                }
            };
            done += 1;
            // Unwinding drops `job_tx`, which ends the workers.
            let r = r.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            if consume(r).is_break() {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_in_order_and_stop_early() {
        for threads in [1, 2, 4] {
            let mut i = 0;
            let mut made = 0;
            let mut got = Vec::new();
            ordered(
                threads,
                || {
                    i += 1;
                    made += 1;
                    (i <= 1000).then_some(i)
                },
                &|j: u32| {
                    // Uneven work, so that results come back out of order.
                    std::thread::sleep(std::time::Duration::from_micros(u64::from(j % 7) * 50));
                    j * 2
                },
                |r| {
                    got.push(r);
                    if got.len() == 100 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            );
            assert_eq!(got, (1..=100).map(|j| j * 2).collect::<Vec<_>>());
            assert!(made <= 100 + threads * 2 + 1, "{made}");
        }
    }

    /// A panic while making jobs, in a job, or while taking results reaches the caller
    /// (as a panic it can catch), instead of leaving the pool waiting forever.
    #[test]
    fn a_panic_anywhere_reaches_the_caller() {
        for threads in [1, 2, 4] {
            for at in ["next", "work", "consume"] {
                let r = std::panic::catch_unwind(|| {
                    let mut i = 0u32;
                    ordered(
                        threads,
                        || {
                            i += 1;
                            assert!(!(at == "next" && i == 50), "next");
                            (i <= 1000).then_some(i)
                        },
                        &|j: u32| {
                            assert!(!(at == "work" && j == 50), "work");
                            j
                        },
                        |j| {
                            assert!(!(at == "consume" && j == 50), "consume");
                            ControlFlow::Continue(())
                        },
                    );
                });
                assert!(r.is_err(), "{threads} threads, panic in {at}");
            }
        }
    }
}
