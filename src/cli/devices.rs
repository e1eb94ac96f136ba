//! `alignsam devices`: the V4L2 cameras on this machine, with their formats, frame sizes and
//! frame rates, so that `alignsam run --input` can be given one that works.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

/// Arguments of `alignsam devices`.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Show only this device (`/dev/video0`, a `/dev/v4l/by-id/...` link, or an index).
    pub device: Option<String>,
    /// Print JSON (an array of devices) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `alignsam devices`.
#[cfg(all(target_os = "linux", feature = "v4l2"))]
pub fn run(args: DevicesArgs) -> Result<ExitCode> {
    use crate::source::v4l2;

    let devices = match &args.device {
        Some(spec) => vec![v4l2::describe_device(spec)?],
        None => v4l2::list_devices(),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&devices)?);
        return Ok(ExitCode::SUCCESS);
    }
    if devices.is_empty() {
        outln!(
            "no V4L2 devices (/dev/video* does not exist): is a camera plugged in and its driver \
             loaded (lsmod | grep uvcvideo)?"
        );
        return Ok(ExitCode::SUCCESS);
    }
    for d in &devices {
        print_device(d)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(all(target_os = "linux", feature = "v4l2"))]
fn print_device(d: &crate::source::v4l2::DeviceInfo) -> Result<()> {
    let name = if d.card.is_empty() {
        String::new()
    } else {
        format!("  {} ({}, {})", d.card, d.driver, d.bus)
    };
    outln!("{}{name}", d.path);
    for link in &d.links {
        outln!("    also {link}");
    }
    if let Some(e) = &d.error {
        outln!("    cannot be used: {e}");
        return Ok(());
    }
    for f in &d.formats {
        let mut notes = vec![];
        if f.compressed {
            notes.push("compressed");
        }
        if f.emulated {
            notes.push("emulated");
        }
        if !f.supported {
            notes.push("not supported by alignsam");
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" [{}]", notes.join(", "))
        };
        outln!("    {:<4}  {}{notes}", f.fourcc, f.description);
        for s in &f.sizes {
            let mut rates: Vec<String> = s.fps.iter().map(|r| fmt_fps(*r)).collect();
            if let Some((lo, hi)) = s.fps_range {
                rates.push(format!("{}-{}", fmt_fps(lo), fmt_fps(hi)));
            }
            let rates = if rates.is_empty() {
                String::new()
            } else {
                format!(" @ {} fps", rates.join(", "))
            };
            outln!("          {}x{}{rates}", s.width, s.height);
        }
        if let Some(r) = &f.size_range {
            outln!(
                "          {}x{} to {}x{} in steps of {}x{}",
                r.width.0,
                r.height.0,
                r.width.1,
                r.height.1,
                r.width.2,
                r.height.2
            );
        }
    }
    Ok(())
}

/// 30 as "30", 7.5 as "7.5", 29.97 as "29.97".
#[cfg(all(target_os = "linux", feature = "v4l2"))]
fn fmt_fps(fps: f64) -> String {
    let s = format!("{fps:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Runs `alignsam devices` (built without V4L2 support).
#[cfg(not(all(target_os = "linux", feature = "v4l2")))]
pub fn run(args: DevicesArgs) -> Result<ExitCode> {
    let _ = args;
    if cfg!(target_os = "linux") {
        anyhow::bail!(
            "this alignsam was built without V4L2 camera support; rebuild with \
             `cargo build --release --features v4l2`"
        )
    } else {
        anyhow::bail!("V4L2 cameras are only supported on Linux")
    }
}

#[cfg(all(test, target_os = "linux", feature = "v4l2"))]
mod tests {
    use super::*;

    #[test]
    fn rates_print_short() {
        assert_eq!(fmt_fps(30.0), "30");
        assert_eq!(fmt_fps(7.5), "7.5");
        assert_eq!(fmt_fps(29.97), "29.97");
    }

    #[test]
    fn a_missing_device_is_an_error_and_none_is_fine() {
        let e = run(DevicesArgs {
            device: Some("/dev/video-none".into()),
            json: false,
        })
        .unwrap_err();
        assert_eq!(format!("{e:#}"), "/dev/video-none: no such device");
        assert!(
            run(DevicesArgs {
                device: None,
                json: true
            })
            .is_ok()
        );
    }
}
