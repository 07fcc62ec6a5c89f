//! federate-core: the federated round loop.
//!
//! `Parameters` (flat values + layout), the model-side `Learner`, parties (`Client`) and the
//! server's handle on them (`ClientProxy`), `Strategy`, the federated algorithms (one module
//! each under `algorithms/`, both halves, registered by name), and the `Server` loop that
//! records every round. It knows nothing about sockets: a remote party is just another
//! `ClientProxy`. The messages of a round (tasks, replies, training and DP settings, errors)
//! are plain data in `messages`, which depends on no other module of the crate, so the
//! modules form no import cycle (`scripts/module_cycles.py`).

pub mod admission;
pub mod algorithms;
pub mod broadcast;
pub mod client;
pub mod client_dp;
pub mod compress;
mod dispatch;
pub mod dp;
pub mod learner;
pub mod messages;
pub mod metrics;
pub mod nn_learner;
pub mod noise;
pub mod optim;
pub mod params;
pub mod record;
pub mod robust;
pub mod scaling;
pub mod seed;
pub mod server;
pub mod strategy;
pub mod train;

pub use admission::{Admission, Declared, Weighting};
pub use algorithms::{
    ALGORITHMS, Admm, Algorithm, FedAvg, FedOpt, FedOptConfig, FedSgd, Federated, PartyStep, Scaffold, ServerHalf,
    ServerOptimizer,
};
pub use broadcast::BroadcastCompression;
pub use client::{
    Client, ClientError, ClientProxy, EvaluateReply, EvaluateTask, FitReply, FitTask, InProcess, LocalClient,
    LocalSummary, PartyState, Transport, TransportDone, release,
};
pub use client_dp::{AdaptiveClip, ClientDp, ClientDpMode, DpFedAvg, UpdateDp};
pub use dp::{DpSgd, Mechanism, NoiseSource, PrivacyFloor, Sampling};
pub use learner::{BatchStats, ClipNorm, Learner, LearnerError};
pub use messages::OptimizerSpec;
pub use messages::{AlgorithmReply, AlgorithmState, Codec, PrivacyReport, TrainSummary, UpdateCompression};
pub use nn_learner::{NnLearner, WorkspacePool};
pub use optim::Optimizer;
pub use params::{Layout, Parameters, TensorSpec};
pub use robust::Aggregator;
pub use server::{
    CentralEval, CentralEvaluator, ClientEval, ClientFit, Event, Failure, Parties, PartySampling, RoundRecord, Server,
    ServerConfig, ServerError,
};
pub use strategy::{
    Rejection, Strategy, StrategyError, StrategyState, sample_clients, weighted_average, weighted_evaluation,
};
pub use train::{Correction, LocalAlgorithm, LocalTraining, TrainStats, gradient, train_local, train_local_with};
