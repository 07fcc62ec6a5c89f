//! Assembly: the one place that turns a config into the parts of a federation — data and
//! its split, the model's spec, the strategy, and a party (its learner, data, noise source
//! and privacy floor). `federate run` (simulation), `serve` and `join` all build from here,
//! so a deployment's parties are the simulation's.

use std::path::PathBuf;

use anyhow::{Context, Result};
use federate_core::{LocalClient, NnLearner};
use federate_data::{Dataset, FetchOptions, TrainTest, default_cache_dir};
use federate_nn::{ModelSpec, Shape};

use crate::config::Config;
pub use crate::split::{PartyData, split};

/// The image folder at `path` as training and test sets: its `train/` and `test/`, else
/// `data.test_fraction` of its images held out (stratified, from the seed and `salt`).
pub fn image_folder(cfg: &Config, path: &std::path::Path, salt: u64) -> Result<TrainTest> {
    let spec = cfg.data.images.as_ref().context("[data.images] is needed for an image folder")?;
    let folder =
        federate_data::images::ImageFolder { root: path.into(), shape: spec.shape, classes: spec.classes.clone() };
    if let Some(tt) = folder.train_test()? {
        return Ok(tt);
    }
    let all = folder.read()?;
    let mut rng = federate_core::seed::stream(cfg.seed, federate_core::seed::Stream::Partition, &[4, salt]);
    let (tr, te) = crate::table_data::holdout(&all, cfg.data.test_fraction(), &mut rng);
    Ok(TrainTest { train: all.subset(&tr), test: all.subset(&te) })
}

/// Where datasets are fetched from and cached, as the config says.
pub fn fetch_options(cfg: &Config) -> FetchOptions {
    FetchOptions {
        cache_dir: cfg.data.cache_dir.clone().unwrap_or_else(default_cache_dir),
        data_dir: cfg.data.data_dir.clone().or_else(|| std::env::var_os("FEDERATE_DATA_DIR").map(PathBuf::from)),
        download_base: None,
        no_download: cfg.data.offline,
        no_npm: cfg.data.offline,
        no_apt: cfg.data.offline,
        no_system: false,
    }
}

/// Loads the configured dataset (fetching and verifying it if needed; generating it for
/// `synthetic`). Tables are read by [`federation_data`].
pub fn load_data(cfg: &Config) -> Result<TrainTest> {
    if cfg.data.dataset == "images" {
        let path = cfg.data.path.as_deref().context("data.dataset = \"images\" needs data.path (the folder)")?;
        return image_folder(cfg, path, 0);
    }
    if cfg.data.dataset == "synthetic" {
        return Ok(crate::split::synthetic(cfg)?.data);
    }
    Ok(federate_data::load(&cfg.data.dataset, &fetch_options(cfg))?)
}

/// The federation's data as a simulation holds it: every party's training and test sets,
/// their pooled test set (for central evaluation), and for tables the features every party
/// shares (the rows are as read: round 0 scales them).
pub type FederationData = (Vec<PartyData>, Dataset, Option<crate::table_data::TableLayout>);

/// Reads (fetching if needed) and splits the federation's data, and for tables runs round 0.
pub fn federation_data(cfg: &Config) -> Result<FederationData> {
    if cfg.data.is_table() {
        let (parties, layout) = crate::table_data::prepare(cfg, &fetch_options(cfg))?;
        let pooled = pooled(parties.iter().map(|p| &*p.test));
        return Ok((parties, pooled, Some(layout)));
    }
    if federate_data::DATASETS.contains(&cfg.data.dataset.as_str()) {
        // Pixels stay bytes until a party's images are taken: a quarter of the memory.
        let (train, test) = federate_data::load_images(&cfg.data.dataset, &fetch_options(cfg))?;
        let parties = crate::split::split_sets(cfg, &train, &test)?;
        drop(train);
        return Ok((parties, test.to_dataset(), None));
    }
    let data = load_data(cfg)?;
    let parties = split(cfg, &data)?;
    Ok((parties, data.test, None))
}

/// Several sets (of one shape) as one.
pub fn pooled<'a>(mut sets: impl Iterator<Item = &'a Dataset>) -> Dataset {
    let Some(first) = sets.next() else { return Dataset::classification(Vec::new(), Vec::new(), [1, 1, 1], 1) };
    let mut out = first.clone();
    for d in sets {
        out.x.extend_from_slice(&d.x);
        out.y.extend_from_slice(&d.y);
        out.values.extend_from_slice(&d.values);
    }
    out
}

/// The model description for the configured model and data.
pub fn model_spec(cfg: &Config, data: &Dataset) -> Result<ModelSpec> {
    let [h, w, c] = data.dims;
    spec_for_shape(cfg, Shape::image(h, w, c), data.classes)
}

/// The model description for the configured model, given the input shape and classes (0
/// for regression); the task's loss decides the outputs.
pub fn spec_for_shape(cfg: &Config, input: Shape, classes: usize) -> Result<ModelSpec> {
    let loss = cfg.loss()?;
    let outputs = loss.outputs(classes);
    let spec = match &cfg.model.layers {
        Some(layers) => ModelSpec { input, classes: outputs, layers: layers.clone(), loss },
        None => ModelSpec { loss, ..ModelSpec::builtin(&cfg.model.name, input, outputs)? },
    };
    spec.shapes().context("model.layers")?;
    check_fits(&spec, cfg.train.batch_size)?;
    Ok(spec)
}

/// Refuses a model that would not fit in this machine's memory before anything is
/// allocated (a linear layer with 10^8 outputs would otherwise abort on a 300 GB
/// allocation), naming what to change.
pub fn check_fits(spec: &ModelSpec, batch: usize) -> Result<()> {
    let params = spec.num_params().context("model.layers")?;
    let need = spec.memory_estimate(batch).context("model.layers")?;
    let gb = |b: u128| b as f64 / 1e9;
    if params > u32::MAX as u128 {
        anyhow::bail!("model.layers: {params} parameters is beyond what federate handles (2^32); use smaller layers");
    }
    if let Some(avail) = available_memory()
        && need > avail as u128
    {
        anyhow::bail!(
            "model.layers: training this model needs about {:.1} GB ({params} parameters, train.batch_size = {batch}) \
             and this machine has {:.1} GB available: use smaller layers or a smaller batch",
            gb(need),
            gb(avail as u128)
        );
    }
    Ok(())
}

/// Memory available to new allocations (Linux's MemAvailable), if the system says.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// What a party built from `cfg` agrees to (its privacy floor): the config's DP-SGD settings
/// and the sampling rate they give a party of `n` examples under the algorithm the config
/// chooses (its party half plans the rate: FedSGD's full-batch gradient takes q = 1).
pub fn privacy_floor(cfg: &Config, n: usize) -> Result<federate_core::PrivacyFloor> {
    Ok(privacy_floors(cfg)?(n)?)
}

/// [`privacy_floor`] for many parties: the algorithm's tasks are worked out once.
pub fn privacy_floors(
    cfg: &Config,
) -> Result<impl Fn(usize) -> Result<federate_core::PrivacyFloor, federate_core::ClientError>> {
    let own = cfg.privacy.dp_sgd();
    let plan = match own {
        None => None,
        Some(_) => {
            let training = party_training(cfg)?;
            let step = federate_core::algorithms::party_step(&training.local)?;
            Some((training, step))
        }
    };
    Ok(move |n| {
        let rate = match (&plan, &own) {
            (Some((training, step)), Some(dp)) => Some(step.dp_steps(training, dp, n)?.0),
            _ => None,
        };
        Ok(federate_core::PrivacyFloor::new(own, rate))
    })
}

/// The local training the server's first tasks carry, party half included.
fn party_training(cfg: &Config) -> Result<federate_core::LocalTraining> {
    let mut strategy = build_strategy(cfg, federate_core::NoiseSource::Seeded)?;
    let mut rng = federate_core::seed::stream(cfg.seed, federate_core::seed::Stream::ClientSampling, &[1]);
    let tasks = strategy.configure_fit(1, cfg.data.parties.max(1), cfg.seed, &mut rng);
    Ok(tasks.into_iter().next().map_or_else(|| cfg.local_training(), |(_, t)| t.training))
}

/// The server of a simulation or a deployment: `strategy` over `clients`, replies admitted by
/// `admission`, the model broadcast as `[compression] broadcast` says.
pub fn server(
    cfg: &Config,
    strategy: Box<dyn federate_core::Strategy>,
    clients: Vec<Box<dyn federate_core::ClientProxy>>,
    admission: federate_core::Admission,
) -> Result<federate_core::Server> {
    let server = federate_core::Server::new(strategy, clients).with_admission(admission);
    Ok(match cfg.compression.broadcast_compression() {
        Some(b) => server.with_broadcast(b)?,
        None => server,
    })
}

/// The server's strategy from the config: the registered algorithm `strategy.name` chooses,
/// or DP-FedAvg when client-level DP is on (its central noise from `noise`).
pub fn build_strategy(cfg: &Config, noise: federate_core::NoiseSource) -> Result<Box<dyn federate_core::Strategy>> {
    let s = &cfg.strategy;
    let base = cfg.fedavg_base()?;
    let expected = s.fraction_fit * cfg.data.parties as f64;
    if let Some(dp) = cfg.client_privacy.client_dp_for(expected) {
        return Ok(Box::new(federate_core::DpFedAvg::new(base, dp, noise)?));
    }
    Ok(s.algorithm()?.build(base, &s.algorithm_settings()?)?)
}

/// A table federation's features as the server knows them without rows: from the schema's
/// listed features, or a built-in table's header. `None` for images, or when not knowable.
pub fn table_layout(cfg: &Config) -> Option<crate::table_data::TableLayout> {
    let schema = cfg.data.table_schema()?;
    let header = federate_data::tables::header(&cfg.data.dataset);
    let columns = match (&schema.features, header) {
        (Some(f), _) => f.clone(),
        (None, Some(h)) => schema.feature_columns(&h, cfg.data.partition_column.as_deref()),
        (None, None) => return None,
    };
    let (features, numeric) = schema.encoded(&columns);
    Some(crate::table_data::TableLayout { features, numeric, scaling: schema.scaling })
}

/// Input shape and classes of the configured data, known without loading it (the server
/// holds no data): from the dataset's name, or a table's schema.
pub fn data_shape(cfg: &Config) -> Result<(Shape, usize)> {
    if let (Some(i), "images") = (&cfg.data.images, cfg.data.dataset.as_str()) {
        let classes = i.classes.as_ref().context(
            "data.images.classes: the server holds no folder, so it takes the class count from the config: list the \
             classes",
        )?;
        return Ok((Shape::image(i.shape[0], i.shape[1], i.shape[2]), classes.len()));
    }
    if !cfg.data.is_table() {
        return dataset_shape(&cfg.data.dataset);
    }
    let schema = cfg.data.table_schema().context("data.schema: a table needs a schema")?;
    let header = federate_data::tables::header(&cfg.data.dataset);
    let width = schema.width(header.as_deref()).context(
        "data.schema.features: the server holds no rows, so it takes the model's input from the schema: list the \
         feature columns",
    )?;
    Ok((Shape::flat(width), schema.class_names().map_or(0, |c| c.len())))
}

/// Input shape and classes of a named dataset, known without loading it (the server holds
/// no data).
pub fn dataset_shape(name: &str) -> Result<(Shape, usize)> {
    match name {
        "mnist" | "fashion-mnist" => Ok((Shape::image(28, 28, 1), 10)),
        "synthetic" => Ok((Shape::flat(60), 10)),
        other => {
            anyhow::bail!("data.dataset = '{other}' is unknown: use one of {}", federate_data::DATASETS.join(", "))
        }
    }
}

pub(crate) fn spec_for(cfg: &Config) -> Result<ModelSpec> {
    let (input, classes) = data_shape(cfg)?;
    spec_for_shape(cfg, input, classes)
}

/// Checks a party's data against the model before anything runs: examples of the model's
/// input size (the shape named in the error), labels within its classes, no empty set.
pub fn check_data(cfg: &Config, spec: &ModelSpec, train: &Dataset, test: &Dataset) -> Result<()> {
    let want = spec.input.size();
    for (what, d) in [("training", train), ("test", test)] {
        if d.is_empty() {
            anyhow::bail!("this party has no {what} examples: a party needs both training and test data");
        }
        if d.example_len() != want {
            let [h, w, c] = d.dims;
            anyhow::bail!(
                "the {what} data has examples of {h}×{w}×{c} = {} values, but the model takes {}×{}×{} = {want} (its \
                 input comes from data.dataset = \"{}\"): give data of that shape, or a dataset of this one",
                d.example_len(),
                spec.input.h,
                spec.input.w,
                spec.input.c,
                cfg.data.dataset
            );
        }
        let fits = match spec.loss {
            federate_nn::Loss::SoftmaxCrossEntropy => !d.is_regression() && d.classes <= spec.classes,
            federate_nn::Loss::BinaryCrossEntropy { .. } => d.classes == 2,
            _ => d.is_regression(),
        };
        if !fits {
            anyhow::bail!(
                "the {what} data has {} but the model has {} outputs for {:?} (data.dataset = \"{}\")",
                if d.is_regression() { "regression targets".to_string() } else { format!("{} classes", d.classes) },
                spec.classes,
                spec.loss,
                cfg.data.dataset
            );
        }
    }
    Ok(())
}

/// The threads each party trains with: `party_threads`, else every thread of the pool.
pub fn party_threads(cfg: &Config) -> usize {
    if cfg.party_threads > 0 { cfg.party_threads } else { rayon::current_num_threads() }
}

/// How many parties train side by side: as many as `party_threads` fit in the pool (1: one
/// after another).
pub fn party_workers(cfg: &Config) -> usize {
    (rayon::current_num_threads() / party_threads(cfg)).max(1)
}

/// A party holding `train` and `test` as the config builds one: a learner for `spec`, the
/// noise source, and the privacy floor of `floor` (from [`privacy_floors`]); parties of one
/// process that train in turn share `pool`'s workspaces.
pub fn party(
    cfg: &Config,
    spec: &ModelSpec,
    train: impl Into<std::sync::Arc<Dataset>>,
    test: impl Into<std::sync::Arc<Dataset>>,
    noise: federate_core::NoiseSource,
    floor: federate_core::PrivacyFloor,
    pool: Option<&std::sync::Arc<federate_core::WorkspacePool>>,
) -> Result<LocalClient<NnLearner>> {
    let (train, test) = (train.into(), test.into());
    check_data(cfg, spec, &train, &test)?;
    let mut learner = NnLearner::new(spec.clone(), cfg.train.batch_size, party_threads(cfg))?;
    if let Some(p) = pool {
        learner = learner.with_pool(p.clone());
    }
    Ok(LocalClient::new(learner, train, test).with_noise_source(noise).with_privacy_floor(floor))
}
