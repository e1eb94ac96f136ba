//! The process exit codes of every `alignsam` command, for scripts and supervisors such as
//! systemd (`Restart=on-failure` restarts on 1, 2 and 3; add `SuccessExitStatus=130` so that
//! `systemctl stop`, a clean shutdown by SIGTERM, is not counted as a failure).
//!
//! | code | constant               | meaning                                                   |
//! |------|------------------------|-----------------------------------------------------------|
//! | 0    | [`EXIT_OK`]            | done; every input fine (a stream: its end or a requested stop) |
//! | 1    | [`EXIT_ERROR`]         | an error stopped the command (could not start, sink failed) |
//! | 2    | [`EXIT_PARTIAL`]       | finished, but some inputs or frames failed (reported on stderr) |
//! | 3    | [`EXIT_SOURCE_FAILED`] | the source failed or disappeared for good mid-run         |
//! | 64   | [`EXIT_USAGE`]         | the command line is wrong (an unknown flag, a bad value)  |
//! | 130  | [`EXIT_INTERRUPTED`]   | stopped by SIGINT, SIGTERM or SIGHUP (128 + SIGINT)       |

/// Done, and every input (every frame of a stream) was fine.
pub const EXIT_OK: u8 = 0;
/// An error stopped the command.
pub const EXIT_ERROR: u8 = 1;
/// The command finished but some inputs failed (reported on stderr).
pub const EXIT_PARTIAL: u8 = 2;
/// The source failed mid-run (a truncated stream, a camera that did not come back).
pub const EXIT_SOURCE_FAILED: u8 = 3;
/// The command line is wrong: an unknown option, a missing or malformed value (BSD's EX_USAGE;
/// distinct from [`EXIT_PARTIAL`], which clap's own default would collide with).
pub const EXIT_USAGE: u8 = 64;
/// Stopped by SIGINT, SIGTERM or SIGHUP (the shell's 128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct() {
        let mut codes = [
            EXIT_OK,
            EXIT_ERROR,
            EXIT_PARTIAL,
            EXIT_SOURCE_FAILED,
            EXIT_USAGE,
            EXIT_INTERRUPTED,
        ];
        codes.sort();
        assert!(codes.windows(2).all(|w| w[0] < w[1]));
    }
}
