//! How the server reaches a round's parties: all at once where it can, answers back in
//! task order whatever order they came in.

use std::time::Instant;

use crate::client::ClientProxy;

/// An outcome of one task: the party's index, its answer, the wall-clock seconds it took.
pub(crate) type Outcome<R> = (usize, Result<R, crate::ClientError>, f64);

/// [`dispatch_each`], with the outcomes collected in task order.
pub(crate) fn dispatch<T: Sync, R: Send>(
    clients: &mut [Box<dyn ClientProxy>],
    tasks: &[(usize, T)],
    call: impl Fn(&mut dyn ClientProxy, &T) -> Result<R, crate::ClientError> + Sync,
    batch: impl Fn(&dyn crate::Transport, &[(&str, &T)]) -> Vec<(Result<R, crate::ClientError>, f64)> + Sync,
    workers: usize,
) -> Vec<Outcome<R>> {
    let mut out = Vec::with_capacity(tasks.len());
    dispatch_each(clients, tasks, call, batch, workers, |o| out.push(o));
    out
}

/// Runs every (client, task): parties behind a [`crate::Transport`] in one batch per
/// transport (no thread per party), other `concurrent` proxies on at most `workers` threads
/// (each party's outcome does not depend on which), the rest one after another on this
/// thread. Each outcome goes to `each` in task order, as soon as every task
/// before it has one (a party running one after another hands its reply on at once, so a
/// round of many such parties need not hold every reply), whatever order they finished in,
/// so aggregation is deterministic.
pub(crate) fn dispatch_each<T: Sync, R: Send>(
    clients: &mut [Box<dyn ClientProxy>],
    tasks: &[(usize, T)],
    call: impl Fn(&mut dyn ClientProxy, &T) -> Result<R, crate::ClientError> + Sync,
    batch: impl Fn(&dyn crate::Transport, &[(&str, &T)]) -> Vec<(Result<R, crate::ClientError>, f64)> + Sync,
    workers: usize,
    mut each: impl FnMut(Outcome<R>),
) {
    let timed = |client: &mut dyn ClientProxy, task: &T| {
        let t = Instant::now();
        let r = call(client, task);
        (r, t.elapsed().as_secs_f64())
    };
    let wanted: std::collections::HashMap<usize, usize> = tasks.iter().enumerate().map(|(i, (c, _))| (*c, i)).collect();
    let mut slots: Vec<Option<(Result<R, crate::ClientError>, f64)>> = tasks.iter().map(|_| None).collect();
    let mut next = 0;
    let groups = transport_groups(clients, tasks);
    let batched: std::collections::HashSet<usize> = groups.iter().flat_map(|(_, m)| m.iter().copied()).collect();
    // Identities of the parties behind a transport only (a simulation may hold 10,000).
    let ids: std::collections::HashMap<usize, String> =
        batched.iter().map(|&i| (tasks[i].0, clients[tasks[i].0].id().to_string())).collect();
    std::thread::scope(|scope| {
        let batch = &batch;
        let group_handles: Vec<_> = groups
            .iter()
            .map(|(t, members)| {
                let jobs: Vec<(&str, &T)> = members.iter().map(|&i| (ids[&tasks[i].0].as_str(), &tasks[i].1)).collect();
                (members, scope.spawn(move || batch(t.as_ref(), &jobs)))
            })
            .collect();
        // Concurrent parties go round-robin to at most `workers` threads, each running its
        // share one after another and sending each outcome back as it finishes.
        let (tx, rx) = std::sync::mpsc::channel();
        let (shares, sequential) = shares(clients, &wanted, &batched, workers);
        let spawned: usize = shares.iter().map(Vec::len).sum();
        for share in shares {
            let (timed, tx) = (&timed, tx.clone());
            scope.spawn(move || {
                for (i, client) in share {
                    // A panicking party is reported as such, not lost with the worker.
                    let r =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| timed(client.as_mut(), &tasks[i].1)))
                            .unwrap_or_else(|_| {
                                (Err(crate::ClientError::Unavailable("the party panicked".into())), 0.0)
                            });
                    if tx.send((i, r)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for (i, client) in sequential {
            slots[i] = Some(timed(client.as_mut(), &tasks[i].1));
            flush(tasks, &mut slots, &mut next, &mut each, false);
        }
        for (i, r) in rx.iter().take(spawned) {
            slots[i] = Some(r);
            flush(tasks, &mut slots, &mut next, &mut each, false);
        }
        for (members, h) in group_handles {
            let outcomes = h.join().unwrap_or_default();
            let mut outcomes = outcomes.into_iter();
            for &i in members {
                slots[i] = Some(outcomes.next().unwrap_or_else(|| {
                    (Err(crate::ClientError::Unavailable("the transport gave no answer for this party".into())), 0.0)
                }));
            }
        }
    });
    flush(tasks, &mut slots, &mut next, &mut each, true);
}

/// A task's party, by task index.
type Job<'a> = (usize, &'a mut Box<dyn ClientProxy>);

/// The parties with a task and no transport: the `concurrent` ones dealt round-robin into at
/// most `workers` shares, and the others, in party order.
fn shares<'a>(
    clients: &'a mut [Box<dyn ClientProxy>],
    wanted: &std::collections::HashMap<usize, usize>,
    batched: &std::collections::HashSet<usize>,
    workers: usize,
) -> (Vec<Vec<Job<'a>>>, Vec<Job<'a>>) {
    let mut shares: Vec<Vec<Job<'a>>> = Vec::new();
    let mut sequential = Vec::new();
    let mut dealt = 0;
    for (c, client) in clients.iter_mut().enumerate() {
        let Some(&i) = wanted.get(&c) else { continue };
        if batched.contains(&i) {
            continue;
        }
        if client.concurrent() {
            let w = dealt % workers.max(1);
            dealt += 1;
            if w == shares.len() {
                shares.push(Vec::new());
            }
            shares[w].push((i, client));
        } else {
            sequential.push((i, client));
        }
    }
    (shares, sequential)
}

/// The tasks of parties behind a transport, grouped by transport (task indices).
fn transport_groups<T>(
    clients: &[Box<dyn ClientProxy>],
    tasks: &[(usize, T)],
) -> Vec<(std::sync::Arc<dyn crate::Transport>, Vec<usize>)> {
    let mut groups: Vec<(std::sync::Arc<dyn crate::Transport>, Vec<usize>)> = Vec::new();
    for (i, (c, _)) in tasks.iter().enumerate() {
        let Some(t) = clients.get(*c).and_then(|client| client.transport()) else { continue };
        match groups.iter_mut().find(|(g, _)| std::sync::Arc::ptr_eq(g, &t)) {
            Some((_, members)) => members.push(i),
            None => groups.push((t, vec![i])),
        }
    }
    groups
}

/// Hands on the outcomes from task `next` on while they are in (all of them when `done`,
/// a task without one as "not dispatched").
fn flush<T, R>(
    tasks: &[(usize, T)],
    slots: &mut [Option<(Result<R, crate::ClientError>, f64)>],
    next: &mut usize,
    each: &mut impl FnMut(Outcome<R>),
    done: bool,
) {
    while *next < slots.len() {
        let outcome = match slots[*next].take() {
            Some(o) => o,
            None if done => (Err(crate::ClientError::Unavailable("not dispatched".into())), 0.0),
            None => return,
        };
        each((tasks[*next].0, outcome.0, outcome.1));
        *next += 1;
    }
}
