//! FedAvg's weighting against hand-computed cases, refusal of bad updates, and the round
//! loop's handling of parties that fail.

use std::sync::Arc;

use federate_core::*;
use rand::SeedableRng;

fn layout(n: usize) -> Arc<Layout> {
    Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![n], offset: 0 }]))
}

fn reply(params: Vec<f32>, n: usize) -> FitReply {
    FitReply { params, num_examples: n, ..Default::default() }
}

fn fedavg() -> FedAvg {
    FedAvg::new(LocalTraining::sgd(1, 1, 0.1))
}

#[test]
fn weighted_by_example_count() {
    let global = Parameters::new(vec![0.0; 2], layout(2)).unwrap();
    // n = 100 + 300 + 600 = 1000; θ = 0.1·[1, 2] + 0.3·[3, -1] + 0.6·[-2, 4] = [-0.2, 2.3]
    let replies =
        vec![(0, reply(vec![1.0, 2.0], 100)), (1, reply(vec![3.0, -1.0], 300)), (2, reply(vec![-2.0, 4.0], 600))];
    let (p, rejected) = fedavg().aggregate_fit(1, &global, &replies).unwrap();
    assert!(rejected.is_empty());
    assert!((p.values[0] + 0.2).abs() < 1e-6 && (p.values[1] - 2.3).abs() < 1e-6, "{:?}", p.values);
}

#[test]
fn bad_updates_are_refused_with_a_reason() {
    let global = Parameters::new(vec![0.0; 2], layout(2)).unwrap();
    let replies = vec![
        (0, reply(vec![1.0, 1.0], 10)),
        (1, reply(vec![f32::NAN, 1.0], 10)),
        (2, reply(vec![1.0], 10)),
        (3, reply(vec![5.0, 5.0], 0)),
    ];
    let (p, rejected) = fedavg().aggregate_fit(1, &global, &replies).unwrap();
    assert_eq!(p.values, vec![1.0, 1.0]);
    let reasons: Vec<_> = rejected.iter().map(|r| (r.client, r.reason.clone())).collect();
    assert_eq!(reasons.len(), 3);
    assert!(
        reasons[0].1.contains("not finite")
            && reasons[1].1.contains("1 parameters")
            && reasons[2].1.contains("0 training")
    );
    let mut s = fedavg();
    s.min_replies = 2;
    assert!(matches!(s.aggregate_fit(1, &global, &replies), Err(StrategyError::TooFewReplies { got: 1, .. })));
}

#[test]
fn sampling_respects_fraction_and_minimum() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    assert_eq!(sample_clients(100, 0.1, 1, &mut rng).len(), 10);
    assert_eq!(sample_clients(100, 0.001, 5, &mut rng).len(), 5);
    assert_eq!(sample_clients(3, 1.0, 10, &mut rng), vec![0, 1, 2]);
}

/// A party that moves every parameter to `target` (or fails when `fail_round` comes).
struct Fixed {
    target: f32,
    n: usize,
    fail_round: Option<u32>,
}

impl Client for Fixed {
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        if Some(task.round) == self.fail_round {
            return Err(ClientError::Unavailable("killed".into()));
        }
        Ok(reply(vec![self.target; global.len()], self.n))
    }
    fn evaluate(&mut self, params: &Parameters, _t: &EvaluateTask) -> Result<EvaluateReply, ClientError> {
        let err = (params.values[0] - self.target).abs() as f64;
        Ok(EvaluateReply {
            num_examples: self.n,
            loss: err,
            accuracy: if err < 1.0 { 1.0 } else { 0.0 },
            ..Default::default()
        })
    }
}

#[test]
fn a_failing_party_is_recorded_and_the_round_completes() {
    let clients: Vec<Box<dyn ClientProxy>> = vec![
        Box::new(InProcess::new("a", Fixed { target: 1.0, n: 1, fail_round: None })),
        Box::new(InProcess::new("b", Fixed { target: 4.0, n: 2, fail_round: Some(2) })),
    ];
    let mut server = Server::new(Box::new(fedavg()), clients);
    let init = Parameters::new(vec![0.0; 3], layout(3)).unwrap();
    let mut events = 0;
    let (p, records) = server.run(init, &ServerConfig::new(2, 1), &mut |_| events += 1).unwrap();
    assert_eq!(records.len(), 2);
    // Round 1: (1·1 + 2·4) / 3 = 3; round 2: only "a" answers.
    assert_eq!(records[0].fit.len(), 2);
    assert_eq!(records[1].failures.len(), 1);
    assert_eq!(records[1].failures[0].id, "b");
    assert!(records[1].failures[0].reason.contains("killed"));
    assert_eq!(p.values, vec![1.0; 3]);
    assert!(records[1].accuracy.is_some());
    assert!(events >= 2 * 4);
}

#[test]
fn deployments_sample_parties_from_the_os_and_simulations_from_the_seed() {
    // 10 parties, 3 a round, 4 rounds: the parties chosen, round by round.
    let chosen = |sampling: PartySampling| {
        let clients: Vec<Box<dyn ClientProxy>> = (0..10)
            .map(|i| {
                Box::new(InProcess::new(format!("p{i}"), Fixed { target: i as f32, n: 1, fail_round: None }))
                    as Box<dyn ClientProxy>
            })
            .collect();
        let s = FedAvg { fraction_fit: 0.3, ..fedavg() };
        let mut server = Server::new(Box::new(s), clients);
        let init = Parameters::new(vec![0.0; 1], layout(1)).unwrap();
        let cfg = ServerConfig { sampling, ..ServerConfig::new(4, 9) };
        let (_, records) = server.run(init, &cfg, &mut |_| {}).unwrap();
        assert!(records.iter().all(|r| r.party_sampling == sampling && r.fit.len() == 3));
        let line = serde_json::to_string(&records[0]).unwrap();
        let want =
            if sampling == PartySampling::Os { "\"party_sampling\":\"os\"" } else { "\"party_sampling\":\"seeded\"" };
        assert!(line.contains(want), "{line}");
        records.iter().map(|r| r.fit.iter().map(|f| f.id.clone()).collect::<Vec<_>>()).collect::<Vec<_>>()
    };
    // The seed fixes who takes part; the OS does not repeat itself (two equal draws of four
    // rounds of 3 out of 10 have probability 120⁻⁴).
    assert_eq!(chosen(PartySampling::Seeded), chosen(PartySampling::Seeded));
    assert_ne!(chosen(PartySampling::Os), chosen(PartySampling::Os));
}

/// Replies folded one by one as they arrive (what the server does) give the very bits of the
/// mean over all replies at once, with the same refusals; folded replies keep no parameters.
/// A robust rule and an algorithm that reads the replies itself (SCAFFOLD) fold nothing.
#[test]
fn folding_replies_as_they_arrive_equals_averaging_them_at_once() {
    use rand::RngExt;
    let n = 1000;
    let global = Parameters::new(vec![0.5; n], layout(n)).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut replies: Vec<(usize, FitReply)> =
        (0..7).map(|c| (c, reply((0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(), 10 + 37 * c))).collect();
    replies[2].1.params[5] = f32::NAN; // refused
    replies[4].1.params.pop(); // refused
    for round in [1, 2] {
        let (whole, refused) = fedavg().aggregate_fit(round, &global, &replies).unwrap();
        let mut s = fedavg();
        let folded: Vec<(usize, FitReply)> =
            replies.iter().map(|(c, r)| (*c, s.fold_fit(round, &global, *c, r.clone()))).collect();
        let kept: Vec<usize> = folded.iter().filter(|(_, r)| !r.params.is_empty()).map(|(c, _)| *c).collect();
        assert_eq!(kept, vec![2, 4], "only the unusable replies keep their parameters");
        let (streamed, refused_too) = s.aggregate_fit(round, &global, &folded).unwrap();
        let bits = |p: &Parameters| p.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&streamed), bits(&whole));
        assert_eq!(refused, refused_too);
    }
    let mut median = FedAvg { aggregator: Aggregator::Median, ..fedavg() };
    assert_eq!(median.fold_fit(1, &global, 0, replies[0].1.clone()).params.len(), n);
    let mut scaffold: Box<dyn Strategy> = Box::new(Scaffold::new(fedavg(), 1.0).unwrap());
    assert_eq!(scaffold.fold_fit(1, &global, 0, replies[0].1.clone()).params.len(), n);
}
