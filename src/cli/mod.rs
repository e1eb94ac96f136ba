//! Command-line interface: argument definitions and one function per subcommand. Each
//! subcommand module turns arguments into library calls and prints results; no model logic
//! lives here.

/// `println!` that never panics: a failed write to stdout (a full disk behind `> file`, a closed
/// descriptor) returns an error naming stdout from the enclosing function, which must return an
/// `anyhow::Result`. A closed pipe never gets here: these commands die quietly of SIGPIPE
/// (main.rs), and `segment` and `run` handle it themselves.
macro_rules! outln {
    () => {
        outln!("")
    };
    ($($arg:tt)*) => {
        if let Err(e) = $crate::cli::output::write_stdout_line(&format!($($arg)*)) {
            return Err(e.into());
        }
    };
}

pub mod args;
pub mod bench;
mod bench_compare;
mod bench_models;
mod bench_reuse;
mod bundle_cmd;
mod decode;
mod devices;
pub mod eval;
mod gate;
mod info;
pub mod output;
mod profile;
pub mod run;
pub mod segment;
#[cfg(feature = "train")]
pub mod train;
mod validate;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::bundle::{Bundle, OpenOptions};
use crate::engine::{Backend, BackendKind, EngineOptions, Precision};

pub use crate::exit::{EXIT_ERROR, EXIT_PARTIAL};

/// AlignSAM on the edge: a learned prompting agent drives a frozen Segment Anything Model.
#[derive(Debug, Parser)]
#[command(name = "alignsam", version, about, long_about = None)]
pub struct Cli {
    /// Less output: no progress bars, warnings and errors only (RUST_LOG overrides).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Largest input image or frame, in pixels: larger ones are refused from their header,
    /// before any decoding (default 128 megapixels).
    #[arg(long, global = true, env = "ALIGNSAM_MAX_PIXELS", value_parser = validate::count64(1, 10_000_000_000))]
    pub max_pixels: Option<u64>,
    /// Largest input image, mask or split file, in megabytes (default 1024).
    #[arg(long, global = true, env = "ALIGNSAM_MAX_FILE_MB", value_parser = validate::count64(1, 1_000_000))]
    pub max_file_mb: Option<u64>,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Sets up `env_logger`: RUST_LOG wins, else the level from -q/-v.
    pub fn init_logging(&self) {
        let level = match (self.quiet, self.verbose) {
            (true, _) => "warn",
            (false, 0) => "warn",
            (false, 1) => "info",
            (false, _) => "debug",
        };
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
            .format_timestamp_millis()
            .init();
    }
}

/// Options shared by every command that runs models.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Inference backend.
    #[arg(long, default_value_t, env = "ALIGNSAM_BACKEND", value_parser = backend_parser())]
    pub backend: BackendKind,
    /// Threads per model run (0: all cores).
    #[arg(long, default_value_t = 0, env = "ALIGNSAM_THREADS", value_parser = validate::count(0, 1024))]
    pub threads: usize,
    /// Skip verifying the bundle's sha256 checksums (saves seconds on big encoders).
    #[arg(long)]
    pub no_verify: bool,
    /// Precision of the SAM encoder and decoder: fp32, int8 or int8-qdq (variant files named in
    /// bundle.toml), f16 (tract converts the fp32 files at load), or auto: the fastest variant
    /// that passed the accuracy gate on this backend and CPU architecture (fp32 when none did).
    #[arg(long, default_value = "auto", env = "ALIGNSAM_PRECISION", value_parser = precision_choice_parser())]
    pub precision: PrecisionChoice,
    /// Use a precision variant that has no passing accuracy-gate record (`alignsam gate`).
    #[arg(long)]
    pub allow_ungated: bool,
}

/// `--precision`: a fixed precision, or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionChoice {
    /// The fastest variant that passed the gate here ([`Bundle::fastest_gated`]).
    Auto,
    /// This precision.
    Fixed(Precision),
}

/// `auto` or a precision name.
pub fn precision_choice_parser() -> impl clap::builder::TypedValueParser<Value = PrecisionChoice> {
    use clap::builder::TypedValueParser;
    let names: Vec<&'static str> = std::iter::once("auto")
        .chain(Precision::ALL.iter().map(|p| p.name()))
        .collect();
    clap::builder::PossibleValuesParser::new(names).map(|s| match s.as_str() {
        "auto" => PrecisionChoice::Auto,
        name => PrecisionChoice::Fixed(name.parse().expect("a possible value")),
    })
}

/// The precision names as clap's possible values, parsed into the library's [`Precision`].
pub fn precision_parser() -> impl clap::builder::TypedValueParser<Value = Precision> {
    use clap::builder::TypedValueParser;
    let names: Vec<&'static str> = Precision::ALL.iter().map(|p| p.name()).collect();
    clap::builder::PossibleValuesParser::new(names)
        .map(|s| s.parse::<Precision>().expect("a possible value"))
}

/// The backend names as clap's possible values (listed in `--help`), parsed into the library's
/// [`BackendKind`]: the library knows nothing of clap.
pub fn backend_parser() -> impl clap::builder::TypedValueParser<Value = BackendKind> {
    use clap::builder::TypedValueParser;
    let names: Vec<&'static str> = BackendKind::ALL.iter().map(|b| b.name()).collect();
    clap::builder::PossibleValuesParser::new(names)
        .map(|s| s.parse::<BackendKind>().expect("a possible value"))
}

impl EngineArgs {
    /// Creates the backend these options ask for.
    /// The backend, with at most as many threads as the machine has cores (more only wait on
    /// each other: 1024 threads on 2 cores made one image take minutes); a warning says so.
    pub fn backend(&self) -> Result<Box<dyn Backend>> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = if self.threads > cores {
            log::warn!(
                "--threads {} is more than the {cores} cores here: using {cores}",
                self.threads
            );
            cores
        } else {
            self.threads
        };
        self.backend.create(&EngineOptions { threads })
    }

    /// Opens a bundle with these options, resolving `--precision auto` for this backend.
    pub fn open_bundle(&self, dir: &std::path::Path) -> Result<Bundle> {
        let bundle = Bundle::open(
            dir,
            OpenOptions {
                verify_checksums: !self.no_verify,
                precision: match self.precision {
                    PrecisionChoice::Fixed(p) => p,
                    PrecisionChoice::Auto => Precision::Fp32,
                },
                allow_ungated: self.allow_ungated,
            },
        )?;
        match self.precision {
            PrecisionChoice::Fixed(_) => Ok(bundle),
            PrecisionChoice::Auto => {
                let p = bundle.fastest_gated(self.backend.name());
                if p != Precision::Fp32 {
                    log::info!(
                        "precision auto: {p} (passed the accuracy gate on {} here, fastest)",
                        self.backend
                    );
                }
                bundle.with_precision(p)
            }
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a bundle's manifest and each model's inputs, outputs, size and load time.
    Info(info::InfoArgs),
    /// Write bundle.toml for a directory of ONNX models (checksums, shapes, decoder form).
    Bundle(bundle_cmd::BundleArgs),
    /// Segment one image from points you give (no agent): SAM as a library call.
    Decode(decode::DecodeArgs),
    /// Segment images with the prompting loop: masks, overlays and one JSON line per image.
    Segment(segment::SegmentArgs),
    /// Per-stage latency (p50/p90/p99), frames per second and peak memory of the prompting loop.
    Bench(bench::BenchArgs),
    /// The prompting loop over a camera, a Y4M stream or an image sequence: a JSON line per frame.
    Run(run::RunArgs),
    /// V4L2 capture devices with their formats, sizes and frame rates.
    Devices(devices::DevicesArgs),
    /// Temporal reuse on video: steps and frame time cold and warm-started, in one run.
    BenchReuse(bench_reuse::BenchReuseArgs),
    /// Load and run times of the encoder and decoder on each backend, measured together.
    BenchModels(bench_models::BenchModelsArgs),
    /// Where a model's time goes: tract node by node and by operator, rten by operator and shape.
    Profile(profile::ProfileArgs),
    /// Precision variants, backends or CPUs against the fp32 reference, after the whole loop.
    Gate(gate::GateArgs),
    /// Train a policy (PPO) and an SRM (Dice + BCE) on a dataset split, on cached embeddings.
    #[cfg(feature = "train")]
    Train(train::TrainArgs),
    /// Evaluate the prompting loop on a dataset split beside baselines: metrics, CSV, montage.
    Eval(eval::EvalArgs),
}

impl Command {
    /// Whether the command handles a closed stdout itself (it writes stdout only through
    /// [`output::JsonLines`] and [`output::print_line`]).
    pub fn handles_closed_stdout(&self) -> bool {
        matches!(self, Command::Segment(_) | Command::Run(_))
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let quiet = cli.quiet;
    let defaults = crate::source::InputLimits::default();
    crate::source::limits::set_limits(crate::source::InputLimits {
        max_pixels: cli.max_pixels.unwrap_or(defaults.max_pixels),
        max_file_bytes: cli
            .max_file_mb
            .map_or(defaults.max_file_bytes, |mb| mb.saturating_mul(1 << 20)),
    });
    match cli.command {
        Command::Info(args) => info::run(args),
        Command::Bundle(args) => bundle_cmd::run(args),
        Command::Decode(args) => decode::run(args),
        Command::Segment(args) => segment::run(args, quiet),
        Command::Bench(args) => bench::run(args),
        Command::Run(args) => run::run(args),
        Command::Devices(args) => devices::run(args),
        Command::BenchModels(args) => bench_models::run(args),
        Command::BenchReuse(args) => bench_reuse::run(args),
        Command::Profile(args) => profile::run(args),
        Command::Gate(args) => gate::run(args),
        #[cfg(feature = "train")]
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
    }
}
