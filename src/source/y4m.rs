//! YUV4MPEG2 (Y4M): uncompressed video as a byte stream, what `ffmpeg -f yuv4mpegpipe` writes.
//! Any video plays through it:
//!
//! ```text
//! ffmpeg -i clip.mp4 -f yuv4mpegpipe -pix_fmt yuv420p - | alignsam run --input - ...
//! ```
//!
//! A stream is one header line, `YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg`, then for each
//! frame a line `FRAME` (optionally with parameters) and the picture: the Y plane, then U, then
//! V, 8 bits per sample. Supported colourspaces (`C`): 4:2:0 in all its chroma sitings
//! (`420jpeg`, the default, `420paldv`, `420mpeg2`, `420`), `422`, `444`, `444alpha` (the alpha
//! plane is read and ignored) and `mono`. Higher bit depths (`420p10`, ...) and `411` are
//! refused with a hint. `XCOLORRANGE=FULL` selects full-range YUV; limited range is the
//! default (see [`super::pixel`]).
//!
//! The reader works over any [`Read`] (a file, stdin, a pipe). A stream that ends inside a
//! frame ends with an error that names the stream and the frame, after every whole frame
//! before it was returned; a malformed header is an error that says what was expected.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Result, bail};
use image::RgbImage;

use super::pace::Pacer;
use super::pixel::{self, Chroma, Range};
use super::{Frame, FrameSource, SourceError, SourceOptions};
use crate::safe_read::InputLimits;

/// The signature that starts every stream.
pub const MAGIC: &[u8] = b"YUV4MPEG2";

/// Longest header line accepted: a guard against reading a non-Y4M stream forever.
const MAX_LINE: usize = 4096;

/// What the stream header says.
#[derive(Clone, Debug, PartialEq)]
pub struct Y4mHeader {
    /// Picture width in pixels.
    pub width: u32,
    /// Picture height in pixels.
    pub height: u32,
    /// Frame rate as numerator and denominator (frames per second = num / den), if given.
    pub frame_rate: Option<(u32, u32)>,
    /// Interlacing code (`p` progressive, `t`, `b`, `m`), if given. Frames are read as
    /// progressive pictures either way.
    pub interlacing: Option<char>,
    /// Pixel aspect ratio, if given and known.
    pub pixel_aspect: Option<(u32, u32)>,
    /// The colourspace tag as written (`420jpeg` when absent).
    pub colourspace: String,
    /// The chroma subsampling it means.
    pub chroma: Chroma,
    /// Whether an alpha plane follows V (`444alpha`).
    pub alpha: bool,
    /// YUV range: full with `XCOLORRANGE=FULL`, else limited.
    pub range: Range,
    /// The `X` extension tags, without the `X`.
    pub extensions: Vec<String>,
}

impl Y4mHeader {
    /// A header for `width` x `height` frames at `frame_rate`, 4:2:0 unless `chroma` says
    /// otherwise, limited range.
    pub fn new(width: u32, height: u32, frame_rate: (u32, u32), chroma: Chroma) -> Self {
        Y4mHeader {
            width,
            height,
            frame_rate: Some(frame_rate),
            interlacing: Some('p'),
            pixel_aspect: Some((1, 1)),
            colourspace: colourspace_tag(chroma).to_string(),
            chroma,
            alpha: false,
            range: Range::Limited,
            extensions: vec![],
        }
    }

    /// Frames per second, if the header gives a rate.
    pub fn fps(&self) -> Option<f64> {
        self.frame_rate.map(|(n, d)| n as f64 / d as f64)
    }

    /// Bytes of picture data in each frame.
    pub fn frame_len(&self) -> usize {
        let alpha = if self.alpha {
            self.width as usize * self.height as usize
        } else {
            0
        };
        self.chroma.frame_len(self.width, self.height) + alpha
    }

    /// Parses the header line (without its newline). `name` names the stream in errors.
    pub fn parse(line: &[u8], name: &str) -> Result<Self> {
        let bad = |what: String| anyhow::anyhow!("{name}: not a valid Y4M stream header: {what}");
        let Some(rest) = line.strip_prefix(MAGIC) else {
            return Err(bad(format!(
                "it should start with 'YUV4MPEG2', found '{}'",
                printable(&line[..line.len().min(16)])
            )));
        };
        if !rest.is_empty() && rest[0] != b' ' {
            return Err(bad(format!(
                "unexpected '{}' after YUV4MPEG2",
                printable(rest)
            )));
        }
        let text = std::str::from_utf8(rest).map_err(|_| bad("it is not ASCII text".into()))?;
        let (mut width, mut height) = (None, None);
        let mut header = Y4mHeader {
            width: 0,
            height: 0,
            frame_rate: None,
            interlacing: None,
            pixel_aspect: None,
            colourspace: "420jpeg".into(),
            chroma: Chroma::C420,
            alpha: false,
            range: Range::Limited,
            extensions: vec![],
        };
        for token in text.split(' ').filter(|t| !t.is_empty()) {
            // The tag is one character, which in a corrupt header need not be one byte.
            let tag_len = token.chars().next().map_or(1, char::len_utf8);
            let (tag, value) = token.split_at(tag_len);
            match tag {
                "W" => width = Some(parse_dim(value).map_err(|e| bad(format!("width {e}")))?),
                "H" => height = Some(parse_dim(value).map_err(|e| bad(format!("height {e}")))?),
                "F" => {
                    let (n, d) = parse_ratio(value)
                        .map_err(|e| bad(format!("frame rate 'F{value}' {e}")))?;
                    // F0:0 means unknown.
                    header.frame_rate = (n > 0 && d > 0).then_some((n, d));
                    if n == 0 && d != 0 {
                        return Err(bad(format!("frame rate 'F{value}' is zero")));
                    }
                }
                "A" => {
                    let (n, d) = parse_ratio(value)
                        .map_err(|e| bad(format!("pixel aspect 'A{value}' {e}")))?;
                    header.pixel_aspect = (n > 0 && d > 0).then_some((n, d));
                }
                "I" => match value {
                    "p" | "t" | "b" | "m" | "?" => header.interlacing = value.chars().next(),
                    _ => {
                        return Err(bad(format!(
                            "interlacing 'I{value}' should be Ip, It, Ib, Im or I?"
                        )));
                    }
                },
                "C" => {
                    let (chroma, alpha) =
                        parse_colourspace(value).map_err(|e| bad(e.to_string()))?;
                    header.colourspace = value.to_string();
                    header.chroma = chroma;
                    header.alpha = alpha;
                }
                "X" => {
                    if let Some(r) = value.strip_prefix("COLORRANGE=") {
                        header.range = match r.to_ascii_uppercase().as_str() {
                            "FULL" => Range::Full,
                            "LIMITED" => Range::Limited,
                            _ => {
                                return Err(bad(format!(
                                    "XCOLORRANGE={r} should be FULL or LIMITED"
                                )));
                            }
                        };
                    }
                    header.extensions.push(value.to_string());
                }
                _ => {
                    // The format allows new tags; readers skip what they do not know.
                    log::debug!("{name}: ignoring unknown Y4M header tag '{token}'");
                }
            }
        }
        header.width = width.ok_or_else(|| bad("missing width (W)".into()))?;
        header.height = height.ok_or_else(|| bad("missing height (H)".into()))?;
        Ok(header)
    }
}

impl fmt::Display for Y4mHeader {
    /// The header line, without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "YUV4MPEG2 W{} H{}", self.width, self.height)?;
        if let Some((n, d)) = self.frame_rate {
            write!(f, " F{n}:{d}")?;
        }
        if let Some(i) = self.interlacing {
            write!(f, " I{i}")?;
        }
        if let Some((n, d)) = self.pixel_aspect {
            write!(f, " A{n}:{d}")?;
        }
        write!(f, " C{}", self.colourspace)?;
        let mut range_written = false;
        for x in &self.extensions {
            range_written |= x.starts_with("COLORRANGE=");
            write!(f, " X{x}")?;
        }
        if !range_written && self.range == Range::Full {
            write!(f, " XCOLORRANGE=FULL")?;
        }
        Ok(())
    }
}

fn parse_dim(value: &str) -> std::result::Result<u32, String> {
    match value.parse::<u32>() {
        Ok(0) => Err("is zero".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{value}' is not a positive integer")),
    }
}

fn parse_ratio(value: &str) -> std::result::Result<(u32, u32), String> {
    let (n, d) = value
        .split_once(':')
        .ok_or_else(|| "should be N:D".to_string())?;
    match (n.parse(), d.parse()) {
        (Ok(n), Ok(d)) => Ok((n, d)),
        _ => Err("should be N:D with integers".into()),
    }
}

/// The chroma of a `C` tag and whether an alpha plane follows.
fn parse_colourspace(tag: &str) -> Result<(Chroma, bool)> {
    Ok(match tag {
        "420jpeg" | "420paldv" | "420mpeg2" | "420" => (Chroma::C420, false),
        "422" => (Chroma::C422, false),
        "444" => (Chroma::C444, false),
        "444alpha" => (Chroma::C444, true),
        "mono" => (Chroma::Mono, false),
        t if t.contains('p') || t.starts_with("mono1") || t.starts_with("mono9") => bail!(
            "colourspace C{t} has more than 8 bits per sample, which is not supported: \
             convert with ffmpeg -pix_fmt yuv420p"
        ),
        t => bail!(
            "colourspace C{t} is not supported (use 420jpeg, 420paldv, 420mpeg2, 420, 422, 444, \
             444alpha or mono; ffmpeg -pix_fmt yuv420p converts)"
        ),
    })
}

/// The `C` tag this crate writes for a chroma subsampling.
fn colourspace_tag(chroma: Chroma) -> &'static str {
    match chroma {
        // 420jpeg: chroma sited between the luma samples, what averaging 2x2 blocks gives.
        Chroma::C420 => "420jpeg",
        Chroma::C422 => "422",
        Chroma::C444 => "444",
        Chroma::Mono => "mono",
    }
}

/// Bytes shown in a message: ASCII as is, the rest escaped.
fn printable(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Reads one line (up to and without `\n`), at most [`MAX_LINE`] bytes. `Ok(None)` at the end
/// of the stream before any byte; `Err` with `UnexpectedEof` when it ends inside the line.
fn read_line(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::with_capacity(64);
    let n = reader
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        let kind = if line.len() > MAX_LINE {
            io::ErrorKind::InvalidData
        } else {
            io::ErrorKind::UnexpectedEof
        };
        return Err(io::Error::new(kind, printable(&line[..line.len().min(32)])));
    }
    line.pop();
    Ok(Some(line))
}

/// One frame of planar YUV as read from a stream: Y, U, V (and alpha for `444alpha`).
#[derive(Clone, Debug)]
pub struct YuvFrame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Chroma subsampling of `data`.
    pub chroma: Chroma,
    /// YUV range of the samples.
    pub range: Range,
    /// The planes, one after the other.
    pub data: Vec<u8>,
}

impl YuvFrame {
    /// Converts to RGB (BT.601, the frame's range).
    pub fn to_rgb(&self) -> Result<RgbImage> {
        pixel::planar_yuv_to_rgb(&self.data, self.width, self.height, self.chroma, self.range)
    }
}

/// A YUV4MPEG2 reader over any byte stream.
pub struct Y4mReader<R: Read> {
    reader: BufReader<R>,
    name: String,
    header: Y4mHeader,
    frames: u64,
}

impl<R: Read> Y4mReader<R> {
    /// Reads and checks the stream header within the default [`InputLimits`]. `name` names the
    /// stream in errors ("stdin", a path).
    pub fn new(reader: R, name: impl Into<String>) -> Result<Self> {
        Self::with_limits(reader, name, &InputLimits::default())
    }

    /// Reads and checks the stream header, refusing frames larger than `limits.max_pixels`.
    pub fn with_limits(reader: R, name: impl Into<String>, limits: &InputLimits) -> Result<Self> {
        let name = name.into();
        // Large enough that a 4:2:0 VGA frame takes a handful of reads from a pipe.
        let mut reader = BufReader::with_capacity(1 << 16, reader);
        let line = match read_line(&mut reader) {
            Ok(Some(line)) => line,
            Ok(None) => bail!("{name}: empty stream: no Y4M header"),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                bail!("{name}: stream ends inside the Y4M header ('{e}')")
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => bail!(
                "{name}: not a valid Y4M stream header: no end of line in the first {MAX_LINE} \
                 bytes"
            ),
            Err(e) => bail!("{name}: cannot read: {e}"),
        };
        let header = Y4mHeader::parse(&line, &name)?;
        let (limit, w, h) = (limits.max_pixels, header.width, header.height);
        let pixels = w as u64 * h as u64;
        if pixels > limit {
            bail!(
                "{name}: Y4M frames of {w}x{h} = {pixels} pixels, more than the limit of {limit} (the input pixel limit can be raised)"
            );
        }
        Ok(Y4mReader {
            reader,
            name,
            header,
            frames: 0,
        })
    }

    /// The stream header.
    pub fn header(&self) -> &Y4mHeader {
        &self.header
    }

    /// The name used in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Frames read so far.
    pub fn frames_read(&self) -> u64 {
        self.frames
    }

    /// Reads the next frame's picture into `buf` (resized to the frame length). `Ok(false)` at
    /// a clean end of stream (between frames); an error when the stream ends inside a frame or
    /// a frame header is malformed, naming the frame (counting from 0).
    pub fn read_frame_into(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        let (name, n) = (&self.name, self.frames);
        let line = match read_line(&mut self.reader) {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => bail!(
                "{name}: stream truncated in the header of frame {n} ('{e}'); the {n} frames \
                 before it were whole"
            ),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => bail!(
                "{name}: frame {n}: expected a FRAME header, found '{e}...' (not Y4M data, or \
                 the previous frame had the wrong size)"
            ),
            Err(e) => bail!("{name}: cannot read frame {n}: {e}"),
        };
        let params = line
            .strip_prefix(b"FRAME")
            .filter(|p| p.is_empty() || p[0] == b' ');
        let Some(params) = params else {
            bail!(
                "{name}: frame {n}: expected a FRAME header, found '{}' (not Y4M data, or the \
                 previous frame had the wrong size)",
                printable(&line[..line.len().min(32)])
            );
        };
        check_frame_geometry(&self.header, params)
            .map_err(|e| anyhow::anyhow!("{name}: frame {n}: {e}"))?;
        let need = self.header.frame_len();
        // The buffer grows with the data that arrives (a header's promise of a huge frame costs
        // nothing until the bytes come), and keeps its size from frame to frame.
        buf.clear();
        let got = (&mut self.reader)
            .take(need as u64)
            .read_to_end(buf)
            .map_err(|e| anyhow::anyhow!("{name}: cannot read frame {n}: {e}"))?;
        if got < need {
            bail!(
                "{name}: stream truncated in frame {n}: {got} of {need} bytes of picture data; \
                 the {n} frames before it were whole"
            );
        }
        self.frames += 1;
        Ok(true)
    }

    /// The next frame as planar YUV, `None` at a clean end of stream.
    pub fn next_yuv(&mut self) -> Result<Option<YuvFrame>> {
        let mut data = vec![];
        if !self.read_frame_into(&mut data)? {
            return Ok(None);
        }
        if self.header.alpha {
            data.truncate(
                self.header
                    .chroma
                    .frame_len(self.header.width, self.header.height),
            );
        }
        Ok(Some(YuvFrame {
            width: self.header.width,
            height: self.header.height,
            chroma: self.header.chroma,
            range: self.header.range,
            data,
        }))
    }
}

/// Writes a YUV4MPEG2 stream: for tests, and to feed tools that read Y4M.
pub struct Y4mWriter<W: Write> {
    writer: W,
    header: Y4mHeader,
}

impl<W: Write> Y4mWriter<W> {
    /// Writes the header line. The header's colourspace tag must be one [`Y4mReader`] reads.
    pub fn new(mut writer: W, header: Y4mHeader) -> Result<Self> {
        parse_colourspace(&header.colourspace)?;
        if header.width == 0 || header.height == 0 {
            bail!(
                "Y4M writer: frame size {}x{} has no pixels",
                header.width,
                header.height
            );
        }
        writeln!(writer, "{header}")?;
        Ok(Y4mWriter { writer, header })
    }

    /// The stream header.
    pub fn header(&self) -> &Y4mHeader {
        &self.header
    }

    /// Writes one frame of planar YUV in the header's layout ([`Y4mHeader::frame_len`] bytes).
    pub fn write_yuv(&mut self, data: &[u8]) -> Result<()> {
        if data.len() != self.header.frame_len() {
            bail!(
                "Y4M writer: frame has {} bytes, the stream's {}x{} {} frames have {}",
                data.len(),
                self.header.width,
                self.header.height,
                self.header.colourspace,
                self.header.frame_len()
            );
        }
        self.writer.write_all(b"FRAME\n")?;
        self.writer.write_all(data)?;
        Ok(())
    }

    /// Converts an RGB image to the stream's chroma and range (BT.601) and writes it.
    pub fn write_rgb(&mut self, img: &RgbImage) -> Result<()> {
        let h = &self.header;
        if img.dimensions() != (h.width, h.height) {
            bail!(
                "Y4M writer: image is {}x{}, the stream is {}x{}",
                img.width(),
                img.height(),
                h.width,
                h.height
            );
        }
        let mut data = pixel::rgb_to_planar_yuv(img, h.chroma, h.range);
        if h.alpha {
            data.resize(data.len() + (h.width * h.height) as usize, 255);
        }
        self.write_yuv(&data)
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> Result<W> {
        self.writer.flush()?;
        Ok(self.writer)
    }
}

/// Where a [`Y4mSource`] reads from.
enum Input {
    /// Stdin or another stream that cannot be reopened.
    Stream,
    /// A file, reopened (within the same limits) to loop.
    File(PathBuf, InputLimits),
}

/// A [`FrameSource`] over a Y4M stream: a file, or stdin for `ffmpeg ... | alignsam run
/// --input -`.
pub struct Y4mSource {
    reader: Y4mReader<Box<dyn Read + Send>>,
    input: Input,
    pacer: Option<Pacer>,
    looping: bool,
    /// Index of the next frame (continues across loops).
    next_index: u64,
    buf: Vec<u8>,
}

impl Y4mSource {
    /// Opens a Y4M file. With `options.fps`, frames are paced to that rate (a camera
    /// stand-in); without, they come as fast as they are read. With `options.looping`, the file
    /// starts over at its end.
    pub fn open_file(path: &Path, options: &SourceOptions) -> Result<Self> {
        let reader = Self::file_reader(path, &options.limits)?;
        Ok(Y4mSource {
            reader,
            input: Input::File(path.to_path_buf(), options.limits),
            pacer: options.fps.map(Pacer::new).transpose()?,
            looping: options.looping,
            next_index: 0,
            buf: vec![],
        })
    }

    /// Reads a Y4M stream from stdin (cannot loop).
    pub fn stdin(options: &SourceOptions) -> Result<Self> {
        Self::from_reader(Box::new(io::stdin()), "stdin", options)
    }

    /// Reads a Y4M stream from any reader (`name` for messages; cannot loop).
    pub fn from_reader(
        reader: Box<dyn Read + Send>,
        name: &str,
        options: &SourceOptions,
    ) -> Result<Self> {
        Ok(Y4mSource {
            reader: Y4mReader::with_limits(reader, name, &options.limits)?,
            input: Input::Stream,
            pacer: options.fps.map(Pacer::new).transpose()?,
            looping: false,
            next_index: 0,
            buf: vec![],
        })
    }

    fn file_reader(path: &Path, limits: &InputLimits) -> Result<Y4mReader<Box<dyn Read + Send>>> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => anyhow::anyhow!("{}: no such file", path.display()),
            _ => anyhow::anyhow!("{}: cannot open: {e}", path.display()),
        })?;
        Y4mReader::with_limits(
            Box::new(file) as Box<dyn Read + Send>,
            path.display().to_string(),
            limits,
        )
    }

    /// The stream header.
    pub fn header(&self) -> &Y4mHeader {
        self.reader.header()
    }
}

impl FrameSource for Y4mSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if !self.reader.read_frame_into(&mut self.buf)? {
            let Input::File(path, limits) = &self.input else {
                return Ok(None);
            };
            if !self.looping || self.reader.frames_read() == 0 {
                return Ok(None);
            }
            self.reader = Self::file_reader(path, limits)?;
            if !self.reader.read_frame_into(&mut self.buf)? {
                return Ok(None);
            }
        }
        if let Some(p) = &mut self.pacer {
            p.wait();
        }
        let captured = SystemTime::now();
        let h = self.reader.header();
        let image = pixel::planar_yuv_to_rgb(&self.buf, h.width, h.height, h.chroma, h.range)
            .map_err(|e| {
                anyhow::anyhow!("{}: frame {}: {e}", self.reader.name(), self.next_index)
            })?;
        let index = self.next_index;
        self.next_index += 1;
        Ok(Some(Frame {
            index,
            captured,
            image,
        }))
    }

    fn describe(&self) -> String {
        let h = self.reader.header();
        let rate = match (&self.pacer, h.fps()) {
            (Some(p), _) => format!(", paced at {} fps", p.fps()),
            (None, Some(fps)) => format!(", {fps:.3} fps nominal, read as fast as possible"),
            (None, None) => String::new(),
        };
        format!(
            "Y4M {} ({}x{} {} {} range{rate}{})",
            self.reader.name(),
            h.width,
            h.height,
            h.chroma.name(),
            match h.range {
                Range::Limited => "limited",
                Range::Full => "full",
            },
            if self.looping { ", looping" } else { "" }
        )
    }

    fn is_live(&self) -> bool {
        self.pacer.is_some()
    }
}

/// A frame header may carry parameters of its own; the ones that would change the picture's
/// geometry (`W`, `H`, `C`) must repeat the stream header's values: the frame's bytes are read
/// with the stream's geometry, so a frame that changed size would be silently misread.
fn check_frame_geometry(header: &Y4mHeader, params: &[u8]) -> Result<()> {
    for token in params.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
        let value = String::from_utf8_lossy(&token[1..]);
        let same = match token[0] {
            b'W' => value.parse::<u32>().ok() == Some(header.width),
            b'H' => value.parse::<u32>().ok() == Some(header.height),
            b'C' => value == header.colourspace,
            _ => true,
        };
        if !same {
            bail!(
                "the frame header sets {} where the stream header says W{} H{} C{}; frames that \
                 change size or colourspace mid-stream are not supported (re-encode the stream \
                 with one geometry)",
                printable(&token[..token.len().min(32)]),
                header.width,
                header.height,
                header.colourspace
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32, t: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w.max(2)) as u8,
                (y * 255 / h.max(2)) as u8,
                (t * 40 % 256) as u8,
            ])
        })
    }

    fn stream(chroma: Chroma, range: Range, w: u32, h: u32, frames: u32) -> Vec<u8> {
        let mut header = Y4mHeader::new(w, h, (25, 1), chroma);
        header.range = range;
        let mut wr = Y4mWriter::new(vec![], header).unwrap();
        for t in 0..frames {
            wr.write_rgb(&gradient(w, h, t)).unwrap();
        }
        wr.into_inner().unwrap()
    }

    fn read_all(bytes: &[u8]) -> (Y4mHeader, Vec<YuvFrame>, Option<String>) {
        let mut r = Y4mReader::new(bytes, "test.y4m").unwrap();
        let mut frames = vec![];
        loop {
            match r.next_yuv() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (r.header().clone(), frames, None),
                Err(e) => return (r.header().clone(), frames, Some(format!("{e:#}"))),
            }
        }
    }

    #[test]
    fn reads_valid_streams_in_every_chroma() {
        for (chroma, tag) in [
            (Chroma::C420, "420jpeg"),
            (Chroma::C422, "422"),
            (Chroma::C444, "444"),
            (Chroma::Mono, "mono"),
        ] {
            let bytes = stream(chroma, Range::Limited, 7, 5, 3);
            assert!(
                bytes.starts_with(format!("YUV4MPEG2 W7 H5 F25:1 Ip A1:1 C{tag}\n").as_bytes()),
                "{}",
                String::from_utf8_lossy(&bytes[..40])
            );
            let (header, frames, err) = read_all(&bytes);
            assert_eq!(err, None);
            assert_eq!((header.width, header.height, header.chroma), (7, 5, chroma));
            assert_eq!(header.fps(), Some(25.0));
            assert_eq!(frames.len(), 3);
            for (t, f) in frames.iter().enumerate() {
                assert_eq!(f.data.len(), chroma.frame_len(7, 5));
                let rgb = f.to_rgb().unwrap();
                let want = gradient(7, 5, t as u32);
                let tol = if chroma == Chroma::Mono { 255 } else { 40 };
                for (a, b) in rgb.pixels().zip(want.pixels()) {
                    for c in 0..3 {
                        assert!((a[c] as i32 - b[c] as i32).abs() <= tol, "{a:?} {b:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn frame_params_other_420_tags_and_full_range() {
        // Hand-made 2x2 4:2:0 stream, full range, with frame parameters and an unknown tag.
        let mut bytes =
            b"YUV4MPEG2 W2 H2 F30000:1001 It A0:0 C420mpeg2 XYSCSS=420MPEG2 XCOLORRANGE=FULL Z9\n"
                .to_vec();
        bytes.extend_from_slice(b"FRAME Ixyz XFOO=1\n");
        bytes.extend_from_slice(&[0, 255, 0, 255, 128, 128]);
        let (h, frames, err) = read_all(&bytes);
        assert_eq!(err, None);
        assert_eq!(h.range, Range::Full);
        assert_eq!(h.interlacing, Some('t'));
        assert_eq!(h.pixel_aspect, None);
        assert_eq!(h.frame_rate, Some((30000, 1001)));
        assert_eq!(h.extensions, ["YSCSS=420MPEG2", "COLORRANGE=FULL"]);
        let rgb = frames[0].to_rgb().unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(1, 0).0, [255, 255, 255]);
        // The header prints back as it was read, less the unknown tag.
        assert_eq!(
            h.to_string(),
            "YUV4MPEG2 W2 H2 F30000:1001 It C420mpeg2 XYSCSS=420MPEG2 XCOLORRANGE=FULL"
        );
        // Frame parameters that repeat the stream's geometry are fine; ones that change it are
        // refused, naming the frame.
        let mut bytes = b"YUV4MPEG2 W2 H2 C420jpeg\nFRAME W2 H2 C420jpeg\n".to_vec();
        bytes.extend_from_slice(&[0, 255, 0, 255, 128, 128]);
        bytes.extend_from_slice(b"FRAME W4 H2\n");
        bytes.extend_from_slice(&[0; 12]);
        let (_, frames, err) = read_all(&bytes);
        assert_eq!(frames.len(), 1);
        let err = err.expect("the size change is refused");
        assert!(err.contains("frame 1: the frame header sets W4"), "{err}");
        let (_, frames, err) = read_all(b"YUV4MPEG2 W1 H1\nFRAME C444\n\x10\x80\x80");
        assert!(frames.is_empty() && err.unwrap().contains("sets C444"));
        // No C tag: 420jpeg. 444alpha: the alpha plane is skipped.
        let mut bytes = b"YUV4MPEG2 W1 H1\nFRAME\n\x10\x80\x80".to_vec();
        assert_eq!(read_all(&bytes).1.len(), 1);
        bytes =
            b"YUV4MPEG2 W1 H1 C444alpha\nFRAME\n\xeb\x80\x80\x00FRAME\n\x10\x80\x80\x00".to_vec();
        let (h, frames, err) = read_all(&bytes);
        assert_eq!((err, h.alpha, frames.len()), (None, true, 2));
        assert_eq!(
            frames[0].to_rgb().unwrap().get_pixel(0, 0).0,
            [255, 255, 255]
        );
        assert_eq!(frames[1].to_rgb().unwrap().get_pixel(0, 0).0, [0, 0, 0]);
    }

    #[test]
    fn truncated_stream_returns_whole_frames_then_an_error() {
        let bytes = stream(Chroma::C420, Range::Limited, 8, 6, 3);
        let frame = 6 + Chroma::C420.frame_len(8, 6);
        // Cut inside the third frame's picture.
        let cut = bytes.len() - 10;
        let (_, frames, err) = read_all(&bytes[..cut]);
        assert_eq!(frames.len(), 2);
        let err = err.unwrap();
        assert!(
            err.contains("test.y4m: stream truncated in frame 2: 62 of 72 bytes of picture data")
                && err.contains("the 2 frames before it were whole"),
            "{err}"
        );
        // Cut inside the third frame's header.
        let cut = bytes.len() - frame + 3;
        let (_, frames, err) = read_all(&bytes[..cut]);
        assert_eq!(frames.len(), 2);
        assert!(err.unwrap().contains("truncated in the header of frame 2"));
        // Cut exactly between frames: a clean end.
        let cut = bytes.len() - frame;
        let (_, frames, err) = read_all(&bytes[..cut]);
        assert_eq!((frames.len(), err), (2, None));
    }

    #[test]
    fn malformed_stream_headers_are_explained() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty stream: no Y4M header"),
            (
                b"RIFF....WAVEfmt \n",
                "it should start with 'YUV4MPEG2', found 'RIFF....WAVEfmt '",
            ),
            (b"YUV4MPEG2 W640 H480", "stream ends inside the Y4M header"),
            (b"YUV4MPEG2 H480 F25:1\n", "missing width (W)"),
            (b"YUV4MPEG2 W640\n", "missing height (H)"),
            (b"YUV4MPEG2 W0 H480\n", "width is zero"),
            (
                b"YUV4MPEG2 W64x H480\n",
                "width '64x' is not a positive integer",
            ),
            (b"YUV4MPEG2 W64 H48 F25\n", "frame rate 'F25' should be N:D"),
            (b"YUV4MPEG2 W64 H48 Ix\n", "interlacing 'Ix'"),
            (
                b"YUV4MPEG2 W64 H48 XCOLORRANGE=TV\n",
                "XCOLORRANGE=TV should be FULL or LIMITED",
            ),
            (b"YUV4MPEG2 W99999 H99999\n", "more than the limit of"),
            (
                b"YUV4MPEG2X W64 H48\n",
                "unexpected 'X W64 H48' after YUV4MPEG2",
            ),
        ];
        for (bytes, want) in cases {
            let e = match Y4mReader::new(*bytes, "in.y4m") {
                Ok(_) => panic!("accepted {}", printable(bytes)),
                Err(e) => format!("{e:#}"),
            };
            assert!(e.starts_with("in.y4m: "), "{e}");
            assert!(e.contains(want), "{e}\n  wanted: {want}");
        }
        // A tag that is not ASCII (found by tests/fuzz.rs: the reader sliced it at byte 1 and
        // panicked): skipped like any unknown tag.
        let r = Y4mReader::new(&b"YUV4MPEG2 W8 H8 \xC3\xA9x C444\n"[..], "utf8.y4m").unwrap();
        assert_eq!((r.header().width, r.header().height), (8, 8));
        // A stream that is not text and has no newline for a long time.
        let junk = vec![0xAB; 10_000];
        let e = format!("{:#}", Y4mReader::new(&junk[..], "junk").err().unwrap());
        assert!(e.contains("no end of line in the first 4096 bytes"), "{e}");
    }

    #[test]
    fn unsupported_colourspaces_are_refused_with_a_hint() {
        for (tag, want) in [
            ("420p10", "more than 8 bits per sample"),
            ("mono16", "more than 8 bits per sample"),
            ("411", "colourspace C411 is not supported"),
            ("yuyv", "colourspace Cyuyv is not supported"),
        ] {
            let header = format!("YUV4MPEG2 W4 H4 C{tag}\n");
            let e = format!(
                "{:#}",
                Y4mReader::new(header.as_bytes(), "s").err().unwrap()
            );
            assert!(e.contains(want) && e.contains("yuv420p"), "{e}");
        }
    }

    #[test]
    fn malformed_frame_headers_are_explained() {
        let good = stream(Chroma::C420, Range::Limited, 4, 2, 1);
        let header_len = good.iter().position(|&b| b == b'\n').unwrap() + 1;
        // A frame two bytes too long: the next "FRAME" is not where it should be.
        let mut bytes = good.clone();
        bytes.extend_from_slice(&good[header_len..]);
        bytes.extend_from_slice(b"\x01\x02");
        bytes.extend_from_slice(&good[header_len..]);
        let (_, frames, err) = read_all(&bytes);
        assert_eq!(frames.len(), 2);
        let err = err.unwrap();
        assert!(
            err.contains("test.y4m: frame 2: expected a FRAME header, found"),
            "{err}"
        );
        assert!(err.contains("wrong size"), "{err}");
        // Something that is not FRAME at all.
        let mut bytes = good[..header_len].to_vec();
        bytes.extend_from_slice(b"FRAMES\n");
        let err = read_all(&bytes).2.unwrap();
        assert!(
            err.contains("frame 0: expected a FRAME header, found 'FRAMES'"),
            "{err}"
        );
        // Binary data with no newline in sight.
        let mut bytes = good[..header_len].to_vec();
        bytes.extend(std::iter::repeat_n(0u8, 5000));
        let err = read_all(&bytes).2.unwrap();
        assert!(err.contains("frame 0: expected a FRAME header"), "{err}");
    }

    #[test]
    fn writer_checks_sizes() {
        let mut w = Y4mWriter::new(vec![], Y4mHeader::new(4, 4, (30, 1), Chroma::C420)).unwrap();
        assert!(w.write_rgb(&gradient(5, 4, 0)).is_err());
        let e = w.write_yuv(&[0; 10]).unwrap_err().to_string();
        assert!(
            e.contains("frame has 10 bytes, the stream's 4x4 420jpeg frames have 24"),
            "{e}"
        );
        let mut bad = Y4mHeader::new(4, 4, (30, 1), Chroma::C420);
        bad.colourspace = "411".into();
        assert!(Y4mWriter::new(vec![], bad).is_err());
    }

    #[test]
    fn source_over_a_file_loops_and_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("clip.y4m");
        std::fs::write(&path, stream(Chroma::C422, Range::Limited, 6, 4, 2)).unwrap();
        let looping = SourceOptions {
            looping: true,
            ..SourceOptions::default()
        };
        let mut src = Y4mSource::open_file(&path, &looping).unwrap();
        assert!(
            src.describe().contains("6x4 4:2:2 limited range"),
            "{}",
            src.describe()
        );
        let indices: Vec<u64> = (0..5)
            .map(|_| src.next_frame().unwrap().unwrap().index)
            .collect();
        assert_eq!(indices, [0, 1, 2, 3, 4]);
        let mut src = Y4mSource::open_file(&path, &SourceOptions::default()).unwrap();
        assert!(src.next_frame().unwrap().is_some());
        assert!(src.next_frame().unwrap().is_some());
        assert!(src.next_frame().unwrap().is_none());
        assert!(!src.is_live());

        let e = format!(
            "{:#}",
            Y4mSource::open_file(&tmp.path().join("nope.y4m"), &SourceOptions::default())
                .err()
                .unwrap()
        );
        assert!(e.ends_with("nope.y4m: no such file"), "{e}");
    }
}
