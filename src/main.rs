//! The `alignsam` command line: a thin layer over the library (see `alignsam --help`).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match alignsam::cli::Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed; a wrong command line is a usage
        // error with its own exit code.
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                alignsam::exit::EXIT_USAGE
            } else {
                alignsam::exit::EXIT_OK
            });
        }
    };
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
            // Not eprintln!: a full or closed stderr must not turn an error into a panic.
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            ExitCode::from(alignsam::cli::EXIT_ERROR)
        }
    }
}
