//! How the server reaches a round's parties: all at once where it can, answers back in
//! task order whatever order they came in.

use std::time::Instant;

use crate::client::{ClientProxy, TransportDone};

/// An outcome of one task: the party's index, its answer, the wall-clock seconds it took.
pub(crate) type Outcome<R> = (usize, Result<R, crate::ClientError>, f64);

/// How a round's tasks go to one transport's parties: (transport, jobs, where each outcome
/// goes).
pub(crate) trait Batch<T, R>: Fn(&dyn crate::Transport, &[(&str, &T)], &TransportDone<'_, R>) + Sync {}
impl<T, R, F: Fn(&dyn crate::Transport, &[(&str, &T)], &TransportDone<'_, R>) + Sync> Batch<T, R> for F {}

/// [`dispatch_each`], with the outcomes collected in task order.
pub(crate) fn dispatch<T: Sync, R: Send>(
    clients: &mut [Box<dyn ClientProxy>],
    tasks: &[(usize, T)],
    call: impl Fn(&mut dyn ClientProxy, &T) -> Result<R, crate::ClientError> + Sync,
    batch: impl Batch<T, R>,
    workers: usize,
) -> Vec<Outcome<R>> {
    let mut out = Vec::with_capacity(tasks.len());
    dispatch_each(clients, tasks, call, batch, workers, |o| out.push(o));
    out
}

/// Runs every (client, task): parties behind a [`crate::Transport`] in one batch per
/// transport (no thread per party), other `concurrent` proxies on at most `workers` threads
/// (each party's outcome does not depend on which), the rest one after another on this
/// thread. Each outcome goes to `each` in task order, as soon as every task before it has
/// one (a party running one after another, or a remote one answering in turn, hands its reply
/// on at once, so a round of many parties need not hold every reply), whatever order they
/// finished in, so aggregation is deterministic.
pub(crate) fn dispatch_each<T: Sync, R: Send>(
    clients: &mut [Box<dyn ClientProxy>],
    tasks: &[(usize, T)],
    call: impl Fn(&mut dyn ClientProxy, &T) -> Result<R, crate::ClientError> + Sync,
    batch: impl Batch<T, R>,
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
        // Every outcome not taken on this thread comes back on one channel, as it finishes.
        let (tx, rx) = std::sync::mpsc::channel();
        for (t, members) in &groups {
            let jobs: Vec<(&str, &T)> = members.iter().map(|&i| (ids[&tasks[i].0].as_str(), &tasks[i].1)).collect();
            let tx = tx.clone();
            scope.spawn(move || {
                let done = |j: usize, r: Result<R, crate::ClientError>, seconds: f64| {
                    if let Some(&i) = members.get(j) {
                        let _ = tx.send((i, (r, seconds)));
                    }
                };
                batch(t.as_ref(), &jobs, &done);
            });
        }
        // Concurrent parties go round-robin to at most `workers` threads, each running its
        // share one after another and sending each outcome back as it finishes.
        let (shares, sequential) = shares(clients, &wanted, &batched, workers);
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
        // Until every thread has finished (a transport that gave no answer for a task leaves
        // its slot empty: "not dispatched" below).
        for (i, r) in rx.iter() {
            if slots[i].is_none() {
                slots[i] = Some(r);
            }
            flush(tasks, &mut slots, &mut next, &mut each, false);
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::{ClientError, EvaluateReply, EvaluateTask, FitReply, FitTask, Parameters, Transport, TransportDone};

    /// A transport that answers its jobs in `order` and leaves out the jobs in `silent`. When
    /// it answers in task order with none left out, each job only once the round loop has
    /// handed on as many outcomes as the job's index (after a timeout: as a failure).
    struct Relay {
        order: Vec<usize>,
        silent: Vec<usize>,
        handed: Arc<(Mutex<usize>, Condvar)>,
    }

    impl Transport for Relay {
        fn fit_all(&self, _: &Parameters, _: &[(&str, &FitTask)], _: &TransportDone<'_, FitReply>) {}
        fn evaluate_all(
            &self,
            _: &Parameters,
            jobs: &[(&str, &EvaluateTask)],
            done: &TransportDone<'_, EvaluateReply>,
        ) {
            for &j in self.order.iter().filter(|j| **j < jobs.len() && !self.silent.contains(j)) {
                let (count, cv) = &*self.handed;
                let in_order = self.order.windows(2).all(|w| w[0] < w[1]) && self.silent.is_empty();
                let waited =
                    cv.wait_timeout_while(count.lock().unwrap(), Duration::from_secs(5), |n| in_order && *n < j);
                let streamed = !waited.unwrap().1.timed_out();
                let r = if streamed {
                    Ok(EvaluateReply { num_examples: j, ..Default::default() })
                } else {
                    Err(ClientError::Unavailable("held back".into()))
                };
                done(j, r, 0.0);
            }
        }
    }

    struct Remote(String, Arc<Relay>);

    impl ClientProxy for Remote {
        fn id(&self) -> &str {
            &self.0
        }
        fn fit(&mut self, _: &Parameters, _: &FitTask) -> Result<FitReply, ClientError> {
            Err(ClientError::Unavailable("called one by one".into()))
        }
        fn evaluate(&mut self, _: &Parameters, _: &EvaluateTask) -> Result<EvaluateReply, ClientError> {
            Err(ClientError::Unavailable("called one by one".into()))
        }
        fn transport(&self) -> Option<Arc<dyn Transport>> {
            Some(self.1.clone())
        }
    }

    /// (party, examples or the error) of every outcome, in the order `each` got them.
    fn run(order: Vec<usize>, silent: Vec<usize>) -> Vec<(usize, Result<usize, String>)> {
        let handed = Arc::new((Mutex::new(0), Condvar::new()));
        let relay = Arc::new(Relay { order, silent, handed: handed.clone() });
        let mut clients: Vec<Box<dyn ClientProxy>> =
            (0..4).map(|i| Box::new(Remote(format!("p{i}"), relay.clone())) as _).collect();
        let tasks: Vec<(usize, EvaluateTask)> =
            (0..4).map(|c| (c, EvaluateTask { round: 1, scaling: None, model: None, changes: Vec::new() })).collect();
        let mut got = Vec::new();
        let empty = Parameters::new(Vec::new(), Arc::new(crate::Layout::new(Vec::new()))).unwrap();
        let batch = |t: &dyn Transport, jobs: &[(&str, &EvaluateTask)], done: &TransportDone<'_, EvaluateReply>| {
            t.evaluate_all(&empty, jobs, done)
        };
        dispatch_each(
            &mut clients,
            &tasks,
            |c, t| c.evaluate(&empty, t),
            batch,
            4,
            |(c, r, _)| {
                got.push((c, r.map(|e| e.num_examples).map_err(|e| e.to_string())));
                let (count, cv) = &*handed;
                *count.lock().unwrap() += 1;
                cv.notify_all();
            },
        );
        got
    }

    #[test]
    fn a_transports_replies_are_handed_on_as_they_arrive_in_task_order() {
        // Job j is answered only after j outcomes were handed on: it deadlocks (and fails
        // "held back") unless each reply is handed on before the transport returns.
        let got = run(vec![0, 1, 2, 3], vec![]);
        assert_eq!(got, (0..4).map(|i| (i, Ok(i))).collect::<Vec<_>>());
        // Answers in reverse order still reach the loop in task order.
        let got = run(vec![3, 2, 1, 0], vec![]);
        assert_eq!(got, (0..4).map(|i| (i, Ok(i))).collect::<Vec<_>>());
        // A job the transport never answers is "not dispatched", the others as they came.
        let got = run(vec![0, 1, 2, 3], vec![2]);
        assert_eq!(got[2].1, Err("party unavailable: not dispatched".to_string()));
        assert_eq!(got.iter().filter(|(_, r)| r.is_ok()).count(), 3);
    }
}
