//! Frame sources and the pipeline over real data: Y4M written from DAVIS frames and read back,
//! Y4M through a pipe, image sequences with a corrupt file, the pipeline's counts, a real
//! SIGTERM, and the errors for things that are not cameras.
//!
//! The DAVIS frames live in `../shared` beside the checkout; tests that need them print a line
//! and pass when it is absent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alignsam::pipeline::{
    EXIT_INTERRUPTED, EXIT_OK, EXIT_SOURCE_FAILED, Overflow, Pipeline, PipelineOptions, RunEnd,
    StopCause, install_ctrlc,
};
use alignsam::source::pixel::{Chroma, Range};
use alignsam::source::y4m::{Y4mHeader, Y4mSource, Y4mWriter};
use alignsam::source::{FrameSource, SourceOptions, load_rgb, open_source, paths};
use image::RgbImage;

/// The first `n` frames of a DAVIS sequence, or `None` (with a message) without `../shared`.
fn davis_frames(n: usize) -> Option<Vec<PathBuf>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/video/DAVIS2016-train/images/blackswan");
    if !dir.is_dir() {
        eprintln!("skipped: {} is absent", dir.display());
        return None;
    }
    let mut files = paths::list_dir(&dir).unwrap();
    files.truncate(n);
    assert_eq!(
        files.len(),
        n,
        "{} has fewer than {n} frames",
        dir.display()
    );
    Some(files)
}

fn mean_abs_error(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (x as i64 - y as i64).unsigned_abs())
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

fn write_y4m(path: &Path, frames: &[RgbImage], chroma: Chroma, range: Range) {
    let (w, h) = frames[0].dimensions();
    let mut header = Y4mHeader::new(w, h, (24, 1), chroma);
    header.range = range;
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut writer = Y4mWriter::new(file, header).unwrap();
    for f in frames {
        writer.write_rgb(f).unwrap();
    }
    writer.into_inner().unwrap().flush().unwrap();
}

#[test]
fn y4m_round_trip_of_real_frames() {
    let Some(files) = davis_frames(4) else { return };
    let originals: Vec<RgbImage> = files.iter().map(|p| load_rgb(p).unwrap()).collect();
    let (w, h) = originals[0].dimensions();
    let tmp = tempfile::tempdir().unwrap();
    // 4:2:0 halves the chroma resolution, 4:4:4 only rounds; full range rounds least.
    for (chroma, range, max_error) in [
        (Chroma::C420, Range::Limited, 1.0),
        (Chroma::C422, Range::Limited, 0.8),
        (Chroma::C444, Range::Limited, 0.5),
        (Chroma::C444, Range::Full, 0.05),
    ] {
        let path = tmp.path().join(format!("blackswan-{}.y4m", chroma.name()));
        write_y4m(&path, &originals, chroma, range);
        let expected_len = 40 + originals.len() * (6 + chroma.frame_len(w, h));
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(len.abs_diff(expected_len) < 40, "{len} vs {expected_len}");

        let mut source = open_source(&path.to_string_lossy(), &SourceOptions::default()).unwrap();
        assert!(!source.is_live());
        for (i, original) in originals.iter().enumerate() {
            let frame = source.next_frame().unwrap().unwrap();
            assert_eq!(frame.index, i as u64);
            assert_eq!(frame.image.dimensions(), (w, h));
            let err = mean_abs_error(original, &frame.image);
            eprintln!("{chroma:?} {range:?} frame {i}: mean abs error {err:.3}");
            assert!(
                err < max_error,
                "{chroma:?} {range:?} frame {i}: mean abs error {err:.3}"
            );
        }
        assert!(source.next_frame().unwrap().is_none());
    }
}

#[test]
fn y4m_through_a_pipe_in_small_writes() {
    let Some(files) = davis_frames(3) else { return };
    let originals: Vec<RgbImage> = files.iter().map(|p| load_rgb(p).unwrap()).collect();
    let mut bytes = vec![];
    {
        let (w, h) = originals[0].dimensions();
        let mut writer =
            Y4mWriter::new(&mut bytes, Y4mHeader::new(w, h, (25, 1), Chroma::C420)).unwrap();
        for f in &originals {
            writer.write_rgb(f).unwrap();
        }
    }
    // As from ffmpeg: a pipe that delivers the stream in arbitrary pieces.
    let (reader, mut writer) = std::io::pipe().unwrap();
    let feeder = std::thread::spawn(move || {
        for chunk in bytes.chunks(7_777) {
            writer.write_all(chunk).unwrap();
        }
    });
    let mut source =
        Y4mSource::from_reader(Box::new(reader), "stdin", &SourceOptions::default()).unwrap();
    assert!(
        source.describe().starts_with("Y4M stdin (854x480 4:2:0"),
        "{}",
        source.describe()
    );
    let mut n = 0;
    while let Some(frame) = source.next_frame().unwrap() {
        assert!(mean_abs_error(&originals[n], &frame.image) < 1.0);
        n += 1;
    }
    assert_eq!(n, 3);
    feeder.join().unwrap();
}

#[test]
fn truncated_y4m_file_ends_with_an_error_after_its_whole_frames() {
    let frames: Vec<RgbImage> = (0..3)
        .map(|i| RgbImage::from_pixel(16, 8, image::Rgb([i * 80, 100, 200])))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cut.y4m");
    write_y4m(&path, &frames, Chroma::C420, Range::Limited);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 50]).unwrap();

    // Through the pipeline: the two whole frames are processed, then the run ends with the
    // source's error and the exit code for a failed source.
    let source = open_source(&path.to_string_lossy(), &SourceOptions::default()).unwrap();
    let pipeline = Pipeline::new(PipelineOptions::for_source(source.as_ref()));
    let mut processed = vec![];
    let summary = pipeline.run(
        source,
        |f| f.index,
        |r| {
            processed.push(r.result);
            Ok(())
        },
    );
    assert_eq!(processed, [0, 1]);
    assert_eq!(summary.stop, RunEnd::SourceFailed);
    assert_eq!(summary.exit_code(), EXIT_SOURCE_FAILED);
    let e = summary.source_error.unwrap();
    assert!(
        e.contains("cut.y4m: stream truncated in frame 2") && e.contains("2 frames before it"),
        "{e}"
    );
}

#[test]
fn image_sequence_with_a_corrupt_file_in_the_middle() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let images: Vec<RgbImage> = match davis_frames(5) {
        Some(files) => files.iter().map(|p| load_rgb(p).unwrap()).collect(),
        None => (0..5)
            .map(|i| RgbImage::from_pixel(32, 24, image::Rgb([i * 50, 0, 0])))
            .collect(),
    };
    for (i, img) in images.iter().enumerate() {
        img.save(d.join(format!("frame{i}.png"))).unwrap();
    }
    // frame2 is corrupt: a truncated PNG.
    let good = std::fs::read(d.join("frame2.png")).unwrap();
    std::fs::write(d.join("frame2.png"), &good[..good.len() / 3]).unwrap();
    // frame10 sorts last in natural order.
    images[0].save(d.join("frame10.png")).unwrap();

    let spec = d.to_string_lossy().into_owned();
    let mut source = open_source(&spec, &SourceOptions::default()).unwrap();
    let mut got = vec![];
    loop {
        match source.next_frame() {
            Ok(Some(frame)) => got.push(Ok((frame.index, frame.image))),
            Ok(None) => break,
            Err(e) => {
                let index = e.frame_index().expect("only a per-frame error");
                got.push(Err((index, e.to_string())));
            }
        }
    }
    assert_eq!(got.len(), 6);
    for (i, item) in got.iter().enumerate() {
        match (i, item) {
            (2, Err((index, message))) => {
                assert_eq!(*index, 2);
                assert!(
                    message.contains("frame2.png: corrupt or unsupported image"),
                    "{message}"
                );
            }
            (5, Ok((index, img))) => {
                assert_eq!(*index, 5);
                assert_eq!(img, &images[0], "frame10 comes last");
            }
            (i, Ok((index, img))) => {
                assert_eq!(*index, i as u64);
                assert_eq!(img, &images[i]);
            }
            (i, Err(e)) => panic!("frame {i}: {e:?}"),
        }
    }

    // Through the pipeline: one unreadable frame, the rest processed, exit code "partial".
    let source = open_source(&spec, &SourceOptions::default()).unwrap();
    let pipeline = Pipeline::new(PipelineOptions::for_source(source.as_ref()));
    let summary = pipeline.run(source, |f| f.index, |_| Ok(()));
    assert_eq!(summary.stop, RunEnd::EndOfStream);
    assert_eq!(
        (
            summary.frames_read,
            summary.frames_processed,
            summary.frames_bad
        ),
        (5, 5, 1)
    );
    assert_eq!(summary.exit_code(), alignsam::exit::EXIT_PARTIAL);
}

#[test]
fn paced_sequence_with_slow_processing_drops_and_counts_add_up() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..4u8 {
        RgbImage::from_pixel(8, 8, image::Rgb([i, i, i]))
            .save(tmp.path().join(format!("{i}.png")))
            .unwrap();
    }
    let options = SourceOptions {
        fps: Some(200.0),
        looping: true,
        ..Default::default()
    };
    let source = open_source(&tmp.path().to_string_lossy(), &options).unwrap();
    assert!(source.is_live(), "a paced sequence stands in for a camera");
    let pipeline_options = PipelineOptions::for_source(source.as_ref());
    assert_eq!(pipeline_options.overflow, Overflow::DropOldest);
    let pipeline = Pipeline::new(pipeline_options);
    let stop = pipeline.stop_flag();
    let mut last = None;
    let summary = pipeline.run(
        source,
        |f| {
            std::thread::sleep(Duration::from_millis(15));
            f.index
        },
        |r| {
            assert!(last.is_none_or(|l| r.index > l));
            last = Some(r.index);
            if r.frames_read >= 60 {
                stop.signal();
            }
            Ok(())
        },
    );
    assert_eq!(summary.stop, RunEnd::Interrupted);
    assert_eq!(summary.exit_code(), EXIT_INTERRUPTED);
    assert!(summary.frames_dropped > 0, "{summary}");
    assert_eq!(
        summary.frames_processed + summary.frames_dropped,
        summary.frames_read,
        "{summary}"
    );
    // Latency stays bounded by about one frame of waiting plus processing, however long the
    // run: the queue holds one frame.
    assert!(summary.latency_p99_ms.unwrap() < 200.0, "{summary}");
}

#[test]
fn a_whole_stream_is_processed_from_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let frames: Vec<RgbImage> = (0..12)
        .map(|i| RgbImage::from_pixel(6, 4, image::Rgb([i * 20, 0, 0])))
        .collect();
    let path = tmp.path().join("all.y4m");
    write_y4m(&path, &frames, Chroma::C444, Range::Full);
    let source = open_source(&path.to_string_lossy(), &SourceOptions::default()).unwrap();
    let pipeline = Pipeline::new(PipelineOptions::for_source(source.as_ref()));
    let mut reds = vec![];
    let summary = pipeline.run(
        source,
        |f| {
            std::thread::sleep(Duration::from_millis(2));
            f.image.get_pixel(0, 0).0[0]
        },
        |r| {
            reds.push(r.result);
            Ok(())
        },
    );
    assert_eq!(summary.exit_code(), EXIT_OK);
    assert_eq!((summary.frames_read, summary.frames_dropped), (12, 0));
    let want: Vec<u8> = (0..12).map(|i| i * 20).collect();
    for (a, b) in reds.iter().zip(&want) {
        assert!(a.abs_diff(*b) <= 1, "{reds:?}");
    }
}

/// The only test in this binary that signals the process: the handler is process-wide, and a
/// second signal would end the process.
#[cfg(unix)]
#[test]
fn sigterm_stops_the_run_after_the_current_frame() {
    let tmp = tempfile::tempdir().unwrap();
    RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
        .save(tmp.path().join("a.png"))
        .unwrap();
    let options = SourceOptions {
        fps: Some(100.0),
        looping: true,
        ..Default::default()
    };
    let source = open_source(&tmp.path().to_string_lossy(), &options).unwrap();
    let pipeline = Pipeline::new(PipelineOptions::for_source(source.as_ref()));
    install_ctrlc(pipeline.stop_flag()).unwrap();
    let flag = pipeline.stop_flag();
    let mut after_signal = 0;
    let mut raised = false;
    let summary = pipeline.run(
        source,
        |f| f.index,
        |r| {
            if flag.is_raised() {
                after_signal += 1;
            }
            if !raised && r.frames_read >= 10 {
                raised = true;
                // As `systemctl stop` does. The handler thread raises the flag.
                // SAFETY: raise sends a signal to this thread; the handler is installed.
                unsafe { libc::raise(libc::SIGTERM) };
            }
            Ok(())
        },
    );
    assert_eq!(flag.cause(), Some(StopCause::Signal));
    assert_eq!(summary.stop, RunEnd::Interrupted);
    assert_eq!(summary.exit_code(), EXIT_INTERRUPTED);
    assert!(summary.counts_add_up(), "{summary}");
    // The flag is seen before the next frame (or the one after, as the handler runs on its own
    // thread), not much later.
    assert!(after_signal <= 2, "{after_signal} frames after the signal");
}

#[cfg(all(target_os = "linux", feature = "v4l2"))]
#[test]
fn things_that_are_not_cameras_are_refused_clearly() {
    let err = |spec: &str| match open_source(spec, &SourceOptions::default()) {
        Ok(_) => panic!("{spec} opened"),
        Err(e) => format!("{e:#}"),
    };
    assert_eq!(err("/dev/video99"), "/dev/video99: no such device");
    assert_eq!(err("99"), "/dev/video99: no such device");
    let e = err("/dev/null");
    assert!(e.starts_with("/dev/null: not a V4L2 device"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("video0");
    std::fs::write(&fake, b"").unwrap();
    let link = tmp.path().join("cam");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    // A link to a character device is taken as a camera (udev links are), and refused as one.
    let e = err(&link.to_string_lossy());
    assert!(e.contains("cam: not a V4L2 device"), "{e}");
    // A regular file is not a device: as an input it is an image that does not decode.
    let e = alignsam::source::v4l2::V4l2Source::open(
        &fake.to_string_lossy(),
        alignsam::source::v4l2::V4l2Options::default(),
    )
    .err()
    .unwrap();
    assert!(
        format!("{e:#}").ends_with("video0: not a video device (a regular file)"),
        "{e:#}"
    );
}
