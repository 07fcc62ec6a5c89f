//! The server's parties as the core round loop sees them: `RemoteParty` and the
//! `HubTransport` that runs a round's tasks for all of them as tasks on the runtime.

use std::sync::Arc;

use federate_core::{
    ClientError, ClientProxy, EvaluateReply, EvaluateTask, FitReply, FitTask, Parameters, TransportDone,
};

use super::*;

/// A party across the network, as the core round loop sees it.
pub struct RemoteParty {
    id: String,
    hub: Hub,
    rt: tokio::runtime::Handle,
    transport: Arc<HubTransport>,
}

impl RemoteParty {
    /// The proxy for identity `id`, calling through `hub` on runtime `rt`.
    pub fn new(id: impl Into<String>, hub: Hub, rt: tokio::runtime::Handle) -> Self {
        let transport = hub.transport(&rt);
        RemoteParty { id: id.into(), hub, rt, transport }
    }
}

impl Hub {
    /// The transport shared by every live `RemoteParty` of this hub (made when there is
    /// none). The hub keeps only a weak reference: the transport holds the hub, so a strong
    /// one would keep both alive forever.
    fn transport(&self, rt: &tokio::runtime::Handle) -> Arc<HubTransport> {
        let mut t = match self.inner.transport.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(live) = t.upgrade() {
            return live;
        }
        let fresh = Arc::new(HubTransport { hub: self.clone(), rt: rt.clone() });
        *t = Arc::downgrade(&fresh);
        fresh
    }
}

/// A round's tasks for many remote parties, run as tasks on the runtime (no thread per
/// party): the server holds 10,000 connected parties in bounded memory.
pub struct HubTransport {
    hub: Hub,
    rt: tokio::runtime::Handle,
}

impl HubTransport {
    /// Runs `call` for every job as a task on the runtime and hands each outcome to `done` as
    /// it finishes.
    fn run_all<T, R, F, Fut>(&self, jobs: &[(&str, &T)], call: F, done: impl Fn(usize, Result<R, ClientError>, f64))
    where
        T: Clone + Send + 'static,
        R: Send + 'static,
        F: Fn(usize, Hub, String, T) -> Fut,
        Fut: std::future::Future<Output = Result<R, ClientError>> + Send + 'static,
    {
        self.rt.block_on(async {
            let start = tokio::time::Instant::now();
            let mut set = tokio::task::JoinSet::new();
            let mut answered = vec![false; jobs.len()];
            for (i, (id, task)) in jobs.iter().enumerate() {
                let fut = call(i, self.hub.clone(), id.to_string(), (*task).clone());
                set.spawn(async move { (i, fut.await, start.elapsed().as_secs_f64()) });
            }
            while let Some(finished) = set.join_next().await {
                if let Ok((i, r, secs)) = finished {
                    answered[i] = true;
                    done(i, r, secs);
                }
            }
            for (i, _) in answered.iter().enumerate().filter(|(_, a)| !**a) {
                done(i, Err(ClientError::Unavailable("the party's task panicked".into())), 0.0);
            }
        })
    }
}

impl federate_core::Transport for HubTransport {
    fn fit_all(&self, global: &Parameters, jobs: &[(&str, &FitTask)], done: &TransportDone<'_, FitReply>) {
        // One encoding of the model and one of each distinct vector the tasks share (SCAFFOLD's
        // c), not one per party.
        // Tasks of one round name one model (and its change), so the first task's serves all.
        let first = jobs.first().map(|(_, t)| *t);
        let model = self.hub.model_payload(global, first.and_then(|t| t.model), first.map_or(&[][..], |t| &t.changes));
        let mut vectors: Vec<(*const Vec<f32>, Arc<Encoded>)> = Vec::new();
        let mut per_job = Vec::with_capacity(jobs.len());
        for (_, task) in jobs {
            let vector = task.vector.as_ref().map(|v| {
                let key = Arc::as_ptr(v);
                match vectors.iter().find(|(k, _)| *k == key) {
                    Some((_, e)) => e.clone(),
                    None => {
                        let e = self.hub.encode(v);
                        vectors.push((key, e.clone()));
                        e
                    }
                }
            });
            per_job.push(FitPayload { model: model.clone(), vector });
        }
        let per_job = Arc::new(per_job);
        // Each update is decoded as it arrives, and handed on.
        let call = move |i, hub: Hub, id: String, task: FitTask| {
            let payloads = per_job.clone();
            async move { hub.fit_encoded(&id, &payloads[i], &task).await }
        };
        self.run_all(jobs, call, |i, r, secs| done(i, super::decode_upload(r, global, jobs[i].1), secs));
    }

    fn evaluate_all(
        &self,
        params: &Parameters,
        jobs: &[(&str, &EvaluateTask)],
        done: &TransportDone<'_, EvaluateReply>,
    ) {
        let first = jobs.first().map(|(_, t)| *t);
        let payload =
            self.hub.model_payload(params, first.and_then(|t| t.model), first.map_or(&[][..], |t| &t.changes));
        let call = move |_, hub: Hub, id: String, task: EvaluateTask| {
            let payload = payload.clone();
            async move { hub.evaluate_encoded(&id, &payload, &task).await }
        };
        self.run_all(jobs, call, done);
    }
}

impl ClientProxy for RemoteParty {
    fn id(&self) -> &str {
        &self.id
    }
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        self.rt.block_on(self.hub.fit(&self.id, global, task))
    }
    fn evaluate(&mut self, params: &Parameters, task: &EvaluateTask) -> Result<EvaluateReply, ClientError> {
        self.rt.block_on(self.hub.evaluate(&self.id, params, task))
    }
    fn concurrent(&self) -> bool {
        true
    }
    fn statistics(&mut self) -> Result<Option<federate_core::messages::Moments>, ClientError> {
        self.rt.block_on(self.hub.statistics(&self.id))
    }
    fn transport(&self) -> Option<Arc<dyn federate_core::Transport>> {
        Some(self.transport.clone())
    }
}
