//! The `alignsam` command line: a thin layer over the library (see `alignsam --help`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = alignsam::cli::Cli::parse();
    // `segment` and `run` notice a closed stdout (`alignsam run ... | head -1`) themselves and
    // wind down cleanly (the summary of `run` is still written), as ripgrep does. The other
    // commands die quietly on a closed pipe like other Unix tools, instead of panicking in
    // println!.
    #[cfg(unix)]
    if !cli.command.handles_closed_stdout() {
        // SAFETY: called before any thread starts; SIG_DFL is a valid handler for SIGPIPE.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    cli.init_logging();
    match alignsam::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` joins the context chain on one line: "file: what is wrong: cause".
            eprintln!("error: {err:#}");
            ExitCode::from(alignsam::cli::EXIT_ERROR)
        }
    }
}
