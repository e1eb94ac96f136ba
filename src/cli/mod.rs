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
use clap::{Parser, Subcommand};

use crate::source::InputLimits;

pub use crate::exit::{EXIT_ERROR, EXIT_PARTIAL};
pub use args::{EngineArgs, LoopArgs, PrecisionChoice, ReuseArgs};

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
    /// The input limits from `--max-pixels` and `--max-file-mb` (the defaults where not given).
    pub fn input_limits(&self) -> InputLimits {
        let defaults = InputLimits::default();
        InputLimits {
            max_pixels: self.max_pixels.unwrap_or(defaults.max_pixels),
            max_file_bytes: self
                .max_file_mb
                .map_or(defaults.max_file_bytes, |mb| mb.saturating_mul(1 << 20)),
        }
    }

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

/// Runs a parsed command line. A refusal the command line offers a way around (a precision
/// without a passing gate record, an output no earlier run wrote) says which flag it is.
pub fn run(cli: Cli) -> Result<ExitCode> {
    dispatch(cli).map_err(output::with_flag_hint)
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    output::set_quiet(cli.quiet);
    let limits = cli.input_limits();
    match cli.command {
        Command::Info(args) => info::run(args),
        Command::Bundle(args) => bundle_cmd::run(args),
        Command::Decode(args) => decode::run(args, limits),
        Command::Segment(args) => segment::run(args, limits),
        Command::Bench(args) => bench::run(args, limits),
        Command::Run(args) => run::run(args, limits),
        Command::Devices(args) => devices::run(args),
        Command::BenchModels(args) => bench_models::run(args, limits),
        Command::BenchReuse(args) => bench_reuse::run(args, limits),
        Command::Profile(args) => profile::run(args, limits),
        Command::Gate(args) => gate::run(args, limits),
        #[cfg(feature = "train")]
        Command::Train(args) => train::run(args, limits),
        Command::Eval(args) => eval::run(args, limits),
    }
}
