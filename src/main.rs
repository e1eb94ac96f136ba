//! The `alignsam` command line: a thin layer over the library (see `alignsam --help`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`alignsam info ... | head`) like other Unix tools, instead of
    // panicking in println!.
    #[cfg(unix)]
    // SAFETY: called before any thread starts; SIG_DFL is a valid handler for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = alignsam::cli::Cli::parse();
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
