//! Pixel formats to packed 8-bit RGB: what cameras (V4L2) and video streams (Y4M) deliver,
//! turned into the [`RgbImage`] the rest of the crate works on.
//!
//! # Colour
//!
//! YUV is converted with the BT.601 matrix (Kr = 0.299, Kb = 0.114), the one used by SD video,
//! JPEG and, in practice, by USB cameras whatever their resolution. [`Range`] says how the
//! codes are scaled:
//!
//! - [`Range::Limited`] ("TV" or "studio" range, the default for YUV video): Y runs from 16
//!   (black) to 235 (white), U and V from 16 to 240 around 128.
//! - [`Range::Full`] ("PC" or "JPEG" range): all three use 0..=255. JPEG and so MJPEG are full
//!   range by definition (JFIF), and a Y4M stream says so with `XCOLORRANGE=FULL`.
//!
//! The arithmetic is fixed point with 16 fractional bits and rounds to nearest; it agrees with
//! the floating-point formulas to within one code (see the tests).
//!
//! Subsampled chroma (4:2:2, 4:2:0) is taken from the nearest chroma sample, without
//! interpolation: cheap, and the models downstream do not see the difference. Odd widths and
//! heights round the chroma planes up (a 5x3 4:2:0 frame has 3x2 chroma samples), as Y4M,
//! ffmpeg and V4L2 do.

use std::borrow::Cow;

use anyhow::{Result, bail};
use image::RgbImage;

/// Kr and Kb of BT.601.
const KR: f64 = 0.299;
const KB: f64 = 0.114;
const KG: f64 = 1.0 - KR - KB;

/// Fixed-point scale: 16 fractional bits.
const ONE: f64 = 65536.0;

const fn fixed(x: f64) -> i32 {
    (x * ONE + 0.5) as i32
}

/// How YUV codes map to light: the scaling of Y, U and V (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Range {
    /// Y in 16..=235, U and V in 16..=240 (video, the default).
    #[default]
    Limited,
    /// Y, U and V in 0..=255 (JPEG, MJPEG, `XCOLORRANGE=FULL`).
    Full,
}

/// YUV -> RGB coefficients for one [`Range`], in fixed point.
#[derive(Clone, Copy, Debug)]
struct YuvToRgb {
    y_offset: i32,
    y_gain: i32,
    r_v: i32,
    g_u: i32,
    g_v: i32,
    b_u: i32,
}

impl YuvToRgb {
    const fn new(range: Range) -> Self {
        // Full range: R = Y + 2(1-Kr) V', B = Y + 2(1-Kb) U', G from Y = Kr R + Kg G + Kb B.
        // Limited range stretches Y by 255/219 and U, V by 255/224 first.
        let (y_offset, y_scale, c_scale) = match range {
            Range::Full => (0, 1.0, 1.0),
            Range::Limited => (16, 255.0 / 219.0, 255.0 / 224.0),
        };
        YuvToRgb {
            y_offset,
            y_gain: fixed(y_scale),
            r_v: fixed(2.0 * (1.0 - KR) * c_scale),
            g_u: fixed(2.0 * KB * (1.0 - KB) / KG * c_scale),
            g_v: fixed(2.0 * KR * (1.0 - KR) / KG * c_scale),
            b_u: fixed(2.0 * (1.0 - KB) * c_scale),
        }
    }

    #[inline(always)]
    fn rgb(&self, y: u8, u: u8, v: u8) -> [u8; 3] {
        // + 0.5 in fixed point, so that the shift rounds to nearest.
        let c = (y as i32 - self.y_offset) * self.y_gain + (1 << 15);
        let d = u as i32 - 128;
        let e = v as i32 - 128;
        let clamp = |x: i32| (x >> 16).clamp(0, 255) as u8;
        [
            clamp(c + self.r_v * e),
            clamp(c - self.g_u * d - self.g_v * e),
            clamp(c + self.b_u * d),
        ]
    }
}

const LIMITED: YuvToRgb = YuvToRgb::new(Range::Limited);
const FULL: YuvToRgb = YuvToRgb::new(Range::Full);

fn matrix(range: Range) -> &'static YuvToRgb {
    match range {
        Range::Limited => &LIMITED,
        Range::Full => &FULL,
    }
}

/// One pixel, YUV -> RGB, with the matrix and range documented at the top of this module.
pub fn yuv_to_rgb(y: u8, u: u8, v: u8, range: Range) -> [u8; 3] {
    matrix(range).rgb(y, u, v)
}

/// One pixel, RGB -> YUV (BT.601, `range`), rounded to nearest: the inverse of [`yuv_to_rgb`]
/// up to rounding. Used to write Y4M streams.
pub fn rgb_to_yuv(rgb: [u8; 3], range: Range) -> [u8; 3] {
    let [r, g, b] = rgb.map(f64::from);
    let y = KR * r + KG * g + KB * b;
    let u = (b - y) / (2.0 * (1.0 - KB));
    let v = (r - y) / (2.0 * (1.0 - KR));
    let (y, u, v) = match range {
        Range::Full => (y, u + 128.0, v + 128.0),
        Range::Limited => (
            16.0 + y * 219.0 / 255.0,
            128.0 + u * 224.0 / 255.0,
            128.0 + v * 224.0 / 255.0,
        ),
    };
    [y, u, v].map(|x| x.round().clamp(0.0, 255.0) as u8)
}

/// Chroma subsampling of planar YUV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chroma {
    /// U and V at half width and half height.
    C420,
    /// U and V at half width, full height.
    C422,
    /// U and V at full resolution.
    C444,
    /// Luma only (greyscale).
    Mono,
}

impl Chroma {
    /// Width and height of each chroma plane for a `width` x `height` picture (0x0 for
    /// [`Chroma::Mono`]); halved sizes round up.
    pub fn chroma_dims(self, width: u32, height: u32) -> (u32, u32) {
        match self {
            Chroma::C420 => (width.div_ceil(2), height.div_ceil(2)),
            Chroma::C422 => (width.div_ceil(2), height),
            Chroma::C444 => (width, height),
            Chroma::Mono => (0, 0),
        }
    }

    /// Bytes of one picture: the Y plane, then U, then V (8 bits per sample).
    pub fn frame_len(self, width: u32, height: u32) -> usize {
        let (cw, ch) = self.chroma_dims(width, height);
        width as usize * height as usize + 2 * cw as usize * ch as usize
    }

    /// Horizontal and vertical subsampling shifts: x >> sx, y >> sy is the chroma sample.
    fn shifts(self) -> (u32, u32) {
        match self {
            Chroma::C420 => (1, 1),
            Chroma::C422 => (1, 0),
            Chroma::C444 | Chroma::Mono => (0, 0),
        }
    }

    /// The short name used in messages: "4:2:0", "4:2:2", "4:4:4", "mono".
    pub fn name(self) -> &'static str {
        match self {
            Chroma::C420 => "4:2:0",
            Chroma::C422 => "4:2:2",
            Chroma::C444 => "4:4:4",
            Chroma::Mono => "mono",
        }
    }
}

fn dims_ok(width: u32, height: u32, what: &str) -> Result<()> {
    if width == 0 || height == 0 {
        bail!("{what}: picture has no pixels ({width}x{height})");
    }
    Ok(())
}

/// Planar YUV (Y, then U, then V, each tightly packed, as in Y4M and `YU12`) to RGB. `data`
/// holds at least [`Chroma::frame_len`] bytes.
pub fn planar_yuv_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    chroma: Chroma,
    range: Range,
) -> Result<RgbImage> {
    let (cw, ch) = chroma.chroma_dims(width, height);
    let luma = width as usize * height as usize;
    let plane = cw as usize * ch as usize;
    let need = chroma.frame_len(width, height);
    if data.len() < need {
        bail!(
            "planar YUV {} {width}x{height}: frame has {} bytes, needs {need}",
            chroma.name(),
            data.len()
        );
    }
    planes_to_rgb(
        Planes {
            y: data,
            y_stride: width as usize,
            u: &data[luma..],
            v: &data[luma + plane..],
            c_stride: cw as usize,
            c_step: 1,
        },
        width,
        height,
        chroma,
        range,
    )
}

/// Borrowed planes with their strides; `c_step` is 2 for interleaved chroma (NV12).
struct Planes<'a> {
    y: &'a [u8],
    y_stride: usize,
    u: &'a [u8],
    v: &'a [u8],
    c_stride: usize,
    c_step: usize,
}

fn planes_to_rgb(
    p: Planes<'_>,
    width: u32,
    height: u32,
    chroma: Chroma,
    range: Range,
) -> Result<RgbImage> {
    dims_ok(width, height, "YUV")?;
    let m = matrix(range);
    let (sx, sy) = chroma.shifts();
    let w = width as usize;
    let mut out = vec![0u8; w * height as usize * 3];
    for (row, dst) in out.chunks_exact_mut(w * 3).enumerate() {
        let y_row = &p.y[row * p.y_stride..row * p.y_stride + w];
        if chroma == Chroma::Mono {
            for (px, &y) in dst.chunks_exact_mut(3).zip(y_row) {
                px.copy_from_slice(&m.rgb(y, 128, 128));
            }
            continue;
        }
        let c_off = (row >> sy) * p.c_stride;
        let (u_row, v_row) = (&p.u[c_off..], &p.v[c_off..]);
        for (x, (px, &y)) in dst.chunks_exact_mut(3).zip(y_row).enumerate() {
            let c = (x >> sx) * p.c_step;
            px.copy_from_slice(&m.rgb(y, u_row[c], v_row[c]));
        }
    }
    Ok(RgbImage::from_raw(width, height, out).expect("buffer sized for the image"))
}

/// Checks that a strided frame holds `height` rows of `row_bytes` every `stride` bytes (the
/// padding after the last row may be missing).
fn check_strided(
    what: &str,
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    row_bytes: usize,
) -> Result<()> {
    dims_ok(width, height, what)?;
    if stride < row_bytes {
        bail!(
            "{what} {width}x{height}: {stride} bytes per line is less than the {row_bytes} a line \
             needs"
        );
    }
    let need = stride * (height as usize - 1) + row_bytes;
    if data.len() < need {
        bail!(
            "{what} {width}x{height}: frame has {} bytes, needs {need} ({stride} bytes per line)",
            data.len()
        );
    }
    Ok(())
}

/// Packed 4:2:2 with the byte order of `order` for one pair of pixels: indices of Y0, U, Y1, V.
fn packed_422_to_rgb(
    what: &str,
    order: [usize; 4],
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    range: Range,
) -> Result<RgbImage> {
    let row_bytes = width.div_ceil(2) as usize * 4;
    let stride = if stride == 0 { row_bytes } else { stride };
    check_strided(what, data, width, height, stride, row_bytes)?;
    let m = matrix(range);
    let w = width as usize;
    let [iy0, iu, iy1, iv] = order;
    let mut out = vec![0u8; w * height as usize * 3];
    for (row, dst) in out.chunks_exact_mut(w * 3).enumerate() {
        let src = &data[row * stride..row * stride + row_bytes];
        for (x, px) in dst.chunks_exact_mut(3).enumerate() {
            let pair = &src[(x / 2) * 4..(x / 2) * 4 + 4];
            let y = if x % 2 == 0 { pair[iy0] } else { pair[iy1] };
            px.copy_from_slice(&m.rgb(y, pair[iu], pair[iv]));
        }
    }
    Ok(RgbImage::from_raw(width, height, out).expect("buffer sized for the image"))
}

/// YUYV (V4L2 `YUYV`, also called YUY2): packed 4:2:2, bytes Y0 U Y1 V for each pair of pixels.
/// `stride` is the bytes per line (0: no padding).
pub fn yuyv_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    range: Range,
) -> Result<RgbImage> {
    packed_422_to_rgb("YUYV", [0, 1, 2, 3], data, width, height, stride, range)
}

/// UYVY: packed 4:2:2, bytes U Y0 V Y1 for each pair of pixels.
pub fn uyvy_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    range: Range,
) -> Result<RgbImage> {
    packed_422_to_rgb("UYVY", [1, 0, 3, 2], data, width, height, stride, range)
}

/// NV12: a Y plane, then one plane of interleaved U, V at half width and half height, both with
/// `stride` bytes per line (0: no padding).
pub fn nv12_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    range: Range,
) -> Result<RgbImage> {
    let (cw, ch) = Chroma::C420.chroma_dims(width, height);
    let stride = if stride == 0 {
        (cw as usize * 2).max(width as usize)
    } else {
        stride
    };
    dims_ok(width, height, "NV12")?;
    let luma = stride * height as usize;
    let need = luma + stride * (ch as usize - 1) + cw as usize * 2;
    if stride < width as usize || data.len() < need {
        bail!(
            "NV12 {width}x{height}: frame has {} bytes, needs {need} ({stride} bytes per line)",
            data.len()
        );
    }
    planes_to_rgb(
        Planes {
            y: data,
            y_stride: stride,
            u: &data[luma..],
            v: &data[luma + 1..],
            c_stride: stride,
            c_step: 2,
        },
        width,
        height,
        Chroma::C420,
        range,
    )
}

/// YU12 (I420): planar 4:2:0 as in [`planar_yuv_to_rgb`], but with V4L2's strides: `stride`
/// bytes per luma line and half that per chroma line (0: no padding).
pub fn yu12_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    range: Range,
) -> Result<RgbImage> {
    if stride == 0 || stride == width as usize {
        return planar_yuv_to_rgb(data, width, height, Chroma::C420, range)
            .map_err(|e| anyhow::anyhow!("YU12: {e}"));
    }
    dims_ok(width, height, "YU12")?;
    let (cw, ch) = Chroma::C420.chroma_dims(width, height);
    let c_stride = stride.div_ceil(2);
    let luma = stride * height as usize;
    let plane = c_stride * ch as usize;
    let need = luma + plane + c_stride * (ch as usize - 1) + cw as usize;
    if stride < width as usize || data.len() < need {
        bail!(
            "YU12 {width}x{height}: frame has {} bytes, needs {need} ({stride} bytes per line)",
            data.len()
        );
    }
    planes_to_rgb(
        Planes {
            y: data,
            y_stride: stride,
            u: &data[luma..],
            v: &data[luma + plane..],
            c_stride,
            c_step: 1,
        },
        width,
        height,
        Chroma::C420,
        range,
    )
}

/// RGB24 (V4L2 `RGB3`): bytes R G B per pixel, `stride` bytes per line (0: no padding).
pub fn rgb24_to_rgb(data: &[u8], width: u32, height: u32, stride: usize) -> Result<RgbImage> {
    packed_rgb("RGB24", [0, 1, 2], data, width, height, stride)
}

/// BGR24 (V4L2 `BGR3`): bytes B G R per pixel.
pub fn bgr24_to_rgb(data: &[u8], width: u32, height: u32, stride: usize) -> Result<RgbImage> {
    packed_rgb("BGR24", [2, 1, 0], data, width, height, stride)
}

fn packed_rgb(
    what: &str,
    order: [usize; 3],
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<RgbImage> {
    let row_bytes = width as usize * 3;
    let stride = if stride == 0 { row_bytes } else { stride };
    check_strided(what, data, width, height, stride, row_bytes)?;
    let mut out = Vec::with_capacity(row_bytes * height as usize);
    for row in 0..height as usize {
        let src = &data[row * stride..row * stride + row_bytes];
        if order == [0, 1, 2] {
            out.extend_from_slice(src);
        } else {
            for px in src.chunks_exact(3) {
                out.extend_from_slice(&[px[order[0]], px[order[1]], px[order[2]]]);
            }
        }
    }
    Ok(RgbImage::from_raw(width, height, out).expect("buffer sized for the image"))
}

/// GREY (V4L2 `GREY`): one byte per pixel, copied to R, G and B. Taken as full range (0 black,
/// 255 white), which is what greyscale and infrared cameras send.
pub fn grey_to_rgb(data: &[u8], width: u32, height: u32, stride: usize) -> Result<RgbImage> {
    let row_bytes = width as usize;
    let stride = if stride == 0 { row_bytes } else { stride };
    check_strided("GREY", data, width, height, stride, row_bytes)?;
    let mut out = Vec::with_capacity(row_bytes * 3 * height as usize);
    for row in 0..height as usize {
        for &g in &data[row * stride..row * stride + row_bytes] {
            out.extend_from_slice(&[g, g, g]);
        }
    }
    Ok(RgbImage::from_raw(width, height, out).expect("buffer sized for the image"))
}

/// The DHT segment of the standard Huffman tables (JPEG Annex K.3, tables K.3 to K.6): what an
/// MJPEG frame without tables is coded with (OpenDML AVI, and UVC cameras that follow it).
const DEFAULT_DHT: &[u8] = &[
    0xFF, 0xC4, 0x01, 0xA2, // DHT, length 418
    // DC luminance (class 0, id 0): code counts for lengths 1..=16, then the 12 symbols.
    0x00, 0x00, 0x01, 0x05, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B,
    // DC chrominance (class 0, id 1).
    0x01, 0x00, 0x03, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B,
    // AC luminance (class 1, id 0): 162 symbols.
    0x10, 0x00, 0x02, 0x01, 0x03, 0x03, 0x02, 0x04, 0x03, 0x05, 0x05, 0x04, 0x04, 0x00, 0x00, 0x01,
    0x7D, 0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
    0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1,
    0xF0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27,
    0x28, 0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88,
    0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6,
    0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4,
    0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1,
    0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7,
    0xF8, 0xF9, 0xFA, // AC chrominance (class 1, id 1): 162 symbols.
    0x11, 0x00, 0x02, 0x01, 0x02, 0x04, 0x04, 0x03, 0x04, 0x07, 0x05, 0x04, 0x04, 0x00, 0x01, 0x02,
    0x77, 0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
    0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52,
    0xF0, 0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A,
    0x26, 0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47,
    0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67,
    0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86,
    0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4,
    0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2,
    0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9,
    0xDA, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7,
    0xF8, 0xF9, 0xFA,
];

/// Walks the JPEG header segments up to the start of scan (SOS). Returns the offset of the SOS
/// marker and whether a DHT segment came before it.
fn scan_jpeg_header(data: &[u8]) -> Result<(usize, bool)> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        bail!("not a JPEG frame (no start-of-image marker)");
    }
    let mut i = 2;
    let mut has_dht = false;
    loop {
        if i + 2 > data.len() {
            bail!("JPEG frame ends inside its header ({} bytes)", data.len());
        }
        if data[i] != 0xFF {
            bail!(
                "JPEG frame: expected a marker at byte {i}, found {:#04x}",
                data[i]
            );
        }
        match data[i + 1] {
            // Fill byte before a marker.
            0xFF => i += 1,
            // Markers without a length: TEM, RSTn, SOI.
            0x01 | 0xD0..=0xD8 => i += 2,
            0xDA => return Ok((i, has_dht)),
            0xD9 => bail!("JPEG frame: end-of-image marker before any scan"),
            marker => {
                if i + 4 > data.len() {
                    bail!("JPEG frame ends inside its header ({} bytes)", data.len());
                }
                has_dht |= marker == 0xC4;
                let len = u16::from_be_bytes([data[i + 2], data[i + 3]]) as usize;
                if len < 2 {
                    bail!("JPEG frame: segment {marker:#04x} at byte {i} has length {len}");
                }
                i += 2 + len;
            }
        }
    }
}

/// The frame with the standard Huffman tables inserted before the scan when it has none (many
/// USB cameras leave them out of MJPEG frames, and not every decoder fills them in); the frame
/// itself when it has its own.
pub fn with_default_huffman_tables(jpeg: &[u8]) -> Result<Cow<'_, [u8]>> {
    let (sos, has_dht) = scan_jpeg_header(jpeg)?;
    if has_dht {
        return Ok(Cow::Borrowed(jpeg));
    }
    let mut out = Vec::with_capacity(jpeg.len() + DEFAULT_DHT.len());
    out.extend_from_slice(&jpeg[..sos]);
    out.extend_from_slice(DEFAULT_DHT);
    out.extend_from_slice(&jpeg[sos..]);
    Ok(Cow::Owned(out))
}

/// Decodes an MJPEG frame (one JPEG image, possibly without Huffman tables: see
/// [`with_default_huffman_tables`]) to RGB. JPEG is full range BT.601; the decoder applies it.
pub fn mjpeg_to_rgb(data: &[u8]) -> Result<RgbImage> {
    let jpeg = with_default_huffman_tables(data)?;
    let img = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
        .map_err(|e| anyhow::anyhow!("corrupt MJPEG frame ({} bytes): {e}", data.len()))?;
    Ok(img.to_rgb8())
}

/// The pixel formats this crate converts, by their V4L2 four-character codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// `YUYV`: packed 4:2:2, Y0 U Y1 V.
    Yuyv,
    /// `UYVY`: packed 4:2:2, U Y0 V Y1.
    Uyvy,
    /// `MJPG`: one JPEG per frame, Huffman tables optional.
    Mjpeg,
    /// `JPEG`: the same, as some drivers call it.
    Jpeg,
    /// `RGB3`: packed R G B.
    Rgb24,
    /// `BGR3`: packed B G R.
    Bgr24,
    /// `GREY`: 8-bit greyscale.
    Grey,
    /// `YU12`: planar 4:2:0 (I420).
    Yu12,
    /// `NV12`: Y plane, then interleaved U V at 4:2:0.
    Nv12,
}

impl PixelFormat {
    /// Every format, in the order a camera's formats are preferred when none is asked for:
    /// uncompressed 4:2:2 first (no decoding, no artefacts), then MJPEG (what USB cameras need
    /// for high resolutions and frame rates), then RGB, the other colour formats, and greyscale
    /// last because it loses colour.
    pub const PREFERENCE: [PixelFormat; 9] = [
        PixelFormat::Yuyv,
        PixelFormat::Mjpeg,
        PixelFormat::Rgb24,
        PixelFormat::Uyvy,
        PixelFormat::Nv12,
        PixelFormat::Yu12,
        PixelFormat::Bgr24,
        PixelFormat::Jpeg,
        PixelFormat::Grey,
    ];

    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        *match self {
            PixelFormat::Yuyv => b"YUYV",
            PixelFormat::Uyvy => b"UYVY",
            PixelFormat::Mjpeg => b"MJPG",
            PixelFormat::Jpeg => b"JPEG",
            PixelFormat::Rgb24 => b"RGB3",
            PixelFormat::Bgr24 => b"BGR3",
            PixelFormat::Grey => b"GREY",
            PixelFormat::Yu12 => b"YU12",
            PixelFormat::Nv12 => b"NV12",
        }
    }

    /// The format with this four-character code, if it is one we convert.
    pub fn from_fourcc(code: [u8; 4]) -> Option<PixelFormat> {
        Self::PREFERENCE.into_iter().find(|f| f.fourcc() == code)
    }

    /// Whether frames are YUV, so that their [`Range`] matters.
    pub fn is_yuv(self) -> bool {
        matches!(
            self,
            PixelFormat::Yuyv | PixelFormat::Uyvy | PixelFormat::Yu12 | PixelFormat::Nv12
        )
    }

    /// Whether frames are compressed (their size varies; `bytesused` says how much is data).
    pub fn is_compressed(self) -> bool {
        matches!(self, PixelFormat::Mjpeg | PixelFormat::Jpeg)
    }

    /// Converts one frame: `stride` is the bytes per line of the (first) plane, 0 for none
    /// beyond the pixels; `range` applies to the YUV formats only.
    pub fn to_rgb(
        self,
        data: &[u8],
        width: u32,
        height: u32,
        stride: usize,
        range: Range,
    ) -> Result<RgbImage> {
        match self {
            PixelFormat::Yuyv => yuyv_to_rgb(data, width, height, stride, range),
            PixelFormat::Uyvy => uyvy_to_rgb(data, width, height, stride, range),
            PixelFormat::Mjpeg | PixelFormat::Jpeg => mjpeg_to_rgb(data),
            PixelFormat::Rgb24 => rgb24_to_rgb(data, width, height, stride),
            PixelFormat::Bgr24 => bgr24_to_rgb(data, width, height, stride),
            PixelFormat::Grey => grey_to_rgb(data, width, height, stride),
            PixelFormat::Yu12 => yu12_to_rgb(data, width, height, stride, range),
            PixelFormat::Nv12 => nv12_to_rgb(data, width, height, stride, range),
        }
    }
}

/// A four-character code as text, with unprintable bytes escaped (`YUYV`, `\x00\x00..`).
pub fn fourcc_str(code: [u8; 4]) -> String {
    code.iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

/// Parses a four-character code given by a user (`YUYV`, `mjpg`): 1 to 4 ASCII characters,
/// upper-cased, padded with spaces (as V4L2 pads `Y16 `).
pub fn parse_fourcc(s: &str) -> Result<[u8; 4]> {
    if s.is_empty() || s.len() > 4 || !s.is_ascii() {
        bail!("pixel format '{s}' should be a four-character code such as YUYV or MJPG");
    }
    let mut code = [b' '; 4];
    for (c, b) in code.iter_mut().zip(s.bytes()) {
        *c = b.to_ascii_uppercase();
    }
    Ok(code)
}

/// RGB to planar YUV (Y, then U, then V) with `chroma` subsampling: each chroma sample is the
/// average of the pixels it covers (2x2 for 4:2:0, 2x1 for 4:2:2, fewer at odd edges). The
/// layout [`planar_yuv_to_rgb`] and Y4M read.
pub fn rgb_to_planar_yuv(img: &RgbImage, chroma: Chroma, range: Range) -> Vec<u8> {
    let (w, h) = img.dimensions();
    let (cw, ch) = chroma.chroma_dims(w, h);
    let (sx, sy) = chroma.shifts();
    let mut out = Vec::with_capacity(chroma.frame_len(w, h));
    let yuv: Vec<[u8; 3]> = img.pixels().map(|p| rgb_to_yuv(p.0, range)).collect();
    out.extend(yuv.iter().map(|p| p[0]));
    if chroma == Chroma::Mono {
        return out;
    }
    for plane in [1, 2] {
        for cy in 0..ch {
            for cx in 0..cw {
                let (mut sum, mut n) = (0u32, 0u32);
                for y in (cy << sy)..((cy + 1) << sy).min(h) {
                    for x in (cx << sx)..((cx + 1) << sx).min(w) {
                        sum += yuv[(y * w + x) as usize][plane] as u32;
                        n += 1;
                    }
                }
                out.push(((sum + n / 2) / n) as u8);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floating-point BT.601 formulas, as the reference for the fixed-point ones.
    fn reference(y: u8, u: u8, v: u8, range: Range) -> [f64; 3] {
        let (y, u, v) = (y as f64, u as f64 - 128.0, v as f64 - 128.0);
        let (y, u, v) = match range {
            Range::Full => (y, u, v),
            Range::Limited => (
                (y - 16.0) * 255.0 / 219.0,
                u * 255.0 / 224.0,
                v * 255.0 / 224.0,
            ),
        };
        [
            y + 1.402 * v,
            y - 0.344136 * u - 0.714136 * v,
            y + 1.772 * u,
        ]
        .map(|x| x.clamp(0.0, 255.0))
    }

    #[test]
    fn limited_range_black_white_and_grey() {
        assert_eq!(yuv_to_rgb(16, 128, 128, Range::Limited), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128, Range::Limited), [255, 255, 255]);
        // Footroom and headroom clamp.
        assert_eq!(yuv_to_rgb(0, 128, 128, Range::Limited), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(255, 128, 128, Range::Limited), [255, 255, 255]);
        // Mid grey: (126 - 16) * 255 / 219 = 128.08.
        assert_eq!(yuv_to_rgb(126, 128, 128, Range::Limited), [128, 128, 128]);
        assert_eq!(yuv_to_rgb(0, 128, 128, Range::Full), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(255, 128, 128, Range::Full), [255, 255, 255]);
        assert_eq!(yuv_to_rgb(77, 128, 128, Range::Full), [77, 77, 77]);
    }

    #[test]
    fn pure_colours_by_hand() {
        // Limited-range red is Y = 16 + 219 * 0.299 = 81.5, U = 128 - 112 * 0.3375 = 90.2,
        // V = 240. Back: R = 1.1644 * 65 + 1.5960 * 112 = 254.4, G = 75.69 + 0.3918 * 38
        // - 0.8130 * 112 = -0.5, B = 75.69 - 2.0172 * 38 = -1.0.
        assert_eq!(yuv_to_rgb(81, 90, 240, Range::Limited), [254, 0, 0]);
        // Green: Y = 16 + 219 * 0.587 = 144.6, U = 128 - 112 * 0.6625 = 53.8,
        // V = 128 - 112 * 0.8374 = 34.2. R = 1.1644 * 129 - 1.5960 * 94 = 0.0,
        // G = 150.2 + 0.3918 * 74 + 0.8130 * 94 = 255.6, B = 150.2 - 2.0172 * 74 = 0.9.
        assert_eq!(yuv_to_rgb(145, 54, 34, Range::Limited), [0, 255, 1]);
        // Blue: Y = 16 + 219 * 0.114 = 41, U = 240, V = 128 - 112 * 0.1626 = 109.8.
        // R = 29.1 - 1.5960 * 18 = 0.4, G = 29.1 - 0.3918 * 112 + 0.8130 * 18 = 0.0,
        // B = 29.1 + 2.0172 * 112 = 255.0.
        assert_eq!(yuv_to_rgb(41, 240, 110, Range::Limited), [0, 0, 255]);
        // Full range red: Y = 76.2, U = 128 - 127.5 * 0.3375 = 85.0, V = 255.5 -> 255.
        // R = 76 + 1.402 * 127 = 254.1, G = 76 + 0.3441 * 43 - 0.7141 * 127 = 0.1,
        // B = 76 - 1.772 * 43 = -0.2.
        assert_eq!(yuv_to_rgb(76, 85, 255, Range::Full), [254, 0, 0]);
        // And the forward transform gives those codes.
        assert_eq!(rgb_to_yuv([255, 0, 0], Range::Limited), [81, 90, 240]);
        assert_eq!(rgb_to_yuv([0, 255, 0], Range::Limited), [145, 54, 34]);
        assert_eq!(rgb_to_yuv([0, 0, 255], Range::Limited), [41, 240, 110]);
        assert_eq!(rgb_to_yuv([255, 0, 0], Range::Full), [76, 85, 255]);
        assert_eq!(rgb_to_yuv([255, 255, 255], Range::Limited), [235, 128, 128]);
        assert_eq!(rgb_to_yuv([0, 0, 0], Range::Limited), [16, 128, 128]);
    }

    #[test]
    fn fixed_point_rounds_the_formulas_to_nearest() {
        for range in [Range::Limited, Range::Full] {
            for y in (0..=255).step_by(5) {
                for u in (0..=255).step_by(5) {
                    for v in (0..=255).step_by(5) {
                        let got = yuv_to_rgb(y, u, v, range);
                        let want = reference(y, u, v, range);
                        // Rounded to nearest, except where the exact value is within
                        // 0.01 of a tie and the 16-bit coefficients tip it the other way.
                        for c in 0..3 {
                            assert!(
                                (got[c] as f64 - want[c]).abs() <= 0.51,
                                "{range:?} yuv ({y},{u},{v}): got {got:?}, want {want:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn yuyv_and_uyvy_with_stride_and_odd_width() {
        // 3x2 picture: pairs (Y0 U Y1 V). Row 0: white, red | black, (pad);
        // row 1: grey, grey | grey. Two padding bytes per line (stride 10).
        let red = rgb_to_yuv([255, 0, 0], Range::Limited);
        #[rustfmt::skip]
        let yuyv = [
            235, red[1], red[0], red[2], 16, 128, 99, 128, 0xEE, 0xEE,
            126, 128, 126, 128, 126, 128, 99, 128, 0xEE, 0xEE,
        ];
        let img = yuyv_to_rgb(&yuyv, 3, 2, 10, Range::Limited).unwrap();
        assert_eq!(img.dimensions(), (3, 2));
        // Pixel 0 shares red's chroma: Y = 235 with V = 240 saturates red, G and B lose.
        assert_eq!(
            img.get_pixel(0, 0).0,
            yuv_to_rgb(235, red[1], red[2], Range::Limited)
        );
        assert_eq!(img.get_pixel(1, 0).0, [254, 0, 0]);
        assert_eq!(img.get_pixel(2, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(2, 1).0, [128, 128, 128]);

        // The same pixels as UYVY (U Y0 V Y1).
        let uyvy: Vec<u8> = yuyv
            .chunks(10)
            .flat_map(|row| {
                let mut r: Vec<u8> = row[..8]
                    .chunks(4)
                    .flat_map(|p| [p[1], p[0], p[3], p[2]])
                    .collect();
                r.extend_from_slice(&row[8..]);
                r
            })
            .collect();
        assert_eq!(uyvy_to_rgb(&uyvy, 3, 2, 10, Range::Limited).unwrap(), img);

        // Full range: Y = 255 is white.
        let full = yuyv_to_rgb(&[255, 128, 0, 128], 2, 1, 0, Range::Full).unwrap();
        assert_eq!(full.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(full.get_pixel(1, 0).0, [0, 0, 0]);

        // Too short: the message says what was expected.
        let e = yuyv_to_rgb(&yuyv[..15], 3, 2, 10, Range::Limited).unwrap_err();
        assert!(
            e.to_string()
                .contains("YUYV 3x2: frame has 15 bytes, needs 18 (10 bytes per line)"),
            "{e}"
        );
        let e = yuyv_to_rgb(&yuyv, 3, 2, 6, Range::Limited).unwrap_err();
        assert!(e.to_string().contains("less than the 8"), "{e}");
    }

    #[test]
    fn rgb24_bgr24_and_grey() {
        #[rustfmt::skip]
        let rgb = [
            255, 0, 0, 0, 255, 0, 7,
            0, 0, 255, 10, 20, 30, 7,
        ];
        let img = rgb24_to_rgb(&rgb, 2, 2, 7).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [0, 255, 0]);
        assert_eq!(img.get_pixel(0, 1).0, [0, 0, 255]);
        assert_eq!(img.get_pixel(1, 1).0, [10, 20, 30]);
        let img = bgr24_to_rgb(&rgb, 2, 2, 7).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 255]);
        assert_eq!(img.get_pixel(1, 1).0, [30, 20, 10]);
        // The last line's padding may be missing.
        assert!(rgb24_to_rgb(&rgb[..13], 2, 2, 7).is_ok());
        assert!(rgb24_to_rgb(&rgb[..12], 2, 2, 7).is_err());

        let grey = [0, 128, 255, 9, 1, 2, 3, 9];
        let img = grey_to_rgb(&grey, 3, 2, 4).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [128, 128, 128]);
        assert_eq!(img.get_pixel(2, 0).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(2, 1).0, [3, 3, 3]);
        assert!(grey_to_rgb(&grey, 0, 2, 4).is_err());
    }

    /// A 5x3 picture with distinct colours, to exercise odd sizes.
    fn odd_picture() -> RgbImage {
        RgbImage::from_fn(5, 3, |x, y| {
            image::Rgb([(x * 60) as u8, (y * 120) as u8, (255 - x * 50) as u8])
        })
    }

    #[test]
    fn planar_odd_sizes_round_chroma_up() {
        assert_eq!(Chroma::C420.chroma_dims(5, 3), (3, 2));
        assert_eq!(Chroma::C422.chroma_dims(5, 3), (3, 3));
        assert_eq!(Chroma::C444.chroma_dims(5, 3), (5, 3));
        assert_eq!(Chroma::C420.frame_len(5, 3), 15 + 2 * 6);
        assert_eq!(Chroma::C422.frame_len(5, 3), 15 + 2 * 9);
        assert_eq!(Chroma::Mono.frame_len(5, 3), 15);

        let img = odd_picture();
        for range in [Range::Limited, Range::Full] {
            // 4:4:4 loses nothing but rounding.
            let yuv = rgb_to_planar_yuv(&img, Chroma::C444, range);
            assert_eq!(yuv.len(), Chroma::C444.frame_len(5, 3));
            let back = planar_yuv_to_rgb(&yuv, 5, 3, Chroma::C444, range).unwrap();
            for (a, b) in img.pixels().zip(back.pixels()) {
                for c in 0..3 {
                    assert!((a[c] as i32 - b[c] as i32).abs() <= 2, "{a:?} vs {b:?}");
                }
            }
            // Subsampled: each pixel uses the chroma sample of its block; the last column
            // (x = 4) has a block of its own.
            for chroma in [Chroma::C420, Chroma::C422] {
                let yuv = rgb_to_planar_yuv(&img, chroma, range);
                assert_eq!(yuv.len(), chroma.frame_len(5, 3), "{chroma:?}");
                let back = planar_yuv_to_rgb(&yuv, 5, 3, chroma, range).unwrap();
                assert_eq!(back.dimensions(), (5, 3));
                let (cw, _) = chroma.chroma_dims(5, 3);
                let (y_plane, c) = yuv.split_at(15);
                let (u_plane, v_plane) = c.split_at(c.len() / 2);
                for (x, y, px) in back.enumerate_pixels() {
                    let ci = match chroma {
                        Chroma::C420 => (y / 2) * cw + x / 2,
                        _ => y * cw + x / 2,
                    } as usize;
                    let want = yuv_to_rgb(
                        y_plane[(y * 5 + x) as usize],
                        u_plane[ci],
                        v_plane[ci],
                        range,
                    );
                    assert_eq!(px.0, want, "{chroma:?} {range:?} ({x},{y})");
                }
            }
        }
        // Mono: luma only, scaled by the range.
        let mono = [16, 235, 126, 16, 16, 16];
        let img = planar_yuv_to_rgb(&mono, 3, 2, Chroma::Mono, Range::Limited).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(2, 0).0, [128, 128, 128]);

        let e = planar_yuv_to_rgb(&[0; 20], 5, 3, Chroma::C420, Range::Limited).unwrap_err();
        assert!(e.to_string().contains("has 20 bytes, needs 27"), "{e}");
    }

    #[test]
    fn chroma_averages_its_block() {
        // 4:2:0 of a 2x2 block with U values from red, green, blue, white averages them.
        let img = RgbImage::from_fn(2, 2, |x, y| {
            image::Rgb(match (x, y) {
                (0, 0) => [255, 0, 0],
                (1, 0) => [0, 255, 0],
                (0, 1) => [0, 0, 255],
                _ => [255, 255, 255],
            })
        });
        let yuv = rgb_to_planar_yuv(&img, Chroma::C420, Range::Limited);
        assert_eq!(&yuv[..4], &[81, 145, 41, 235]);
        // U: (90 + 54 + 240 + 128) / 4 = 128, V: (240 + 34 + 110 + 128) / 4 = 128.
        assert_eq!(&yuv[4..], &[128, 128]);
    }

    #[test]
    fn nv12_and_yu12_with_strides() {
        let img = odd_picture();
        let planar = rgb_to_planar_yuv(&img, Chroma::C420, Range::Limited);
        let want = planar_yuv_to_rgb(&planar, 5, 3, Chroma::C420, Range::Limited).unwrap();
        let (y, c) = planar.split_at(15);
        let (u, v) = c.split_at(6);

        // YU12 with 8 bytes per luma line, 4 per chroma line.
        let mut yu12 = vec![0xAA; 8 * 3 + 4 * 2 * 2];
        for r in 0..3 {
            yu12[r * 8..r * 8 + 5].copy_from_slice(&y[r * 5..r * 5 + 5]);
        }
        for r in 0..2 {
            yu12[24 + r * 4..24 + r * 4 + 3].copy_from_slice(&u[r * 3..r * 3 + 3]);
            yu12[32 + r * 4..32 + r * 4 + 3].copy_from_slice(&v[r * 3..r * 3 + 3]);
        }
        assert_eq!(yu12_to_rgb(&yu12, 5, 3, 8, Range::Limited).unwrap(), want);
        assert_eq!(yu12_to_rgb(&planar, 5, 3, 0, Range::Limited).unwrap(), want);

        // NV12 with 8 bytes per line in both planes.
        let mut nv12 = vec![0xAA; 8 * 3 + 8 * 2];
        for r in 0..3 {
            nv12[r * 8..r * 8 + 5].copy_from_slice(&y[r * 5..r * 5 + 5]);
        }
        for r in 0..2 {
            for cx in 0..3 {
                nv12[24 + r * 8 + 2 * cx] = u[r * 3 + cx];
                nv12[24 + r * 8 + 2 * cx + 1] = v[r * 3 + cx];
            }
        }
        assert_eq!(nv12_to_rgb(&nv12, 5, 3, 8, Range::Limited).unwrap(), want);
        let e = nv12_to_rgb(&nv12[..30], 5, 3, 8, Range::Limited).unwrap_err();
        assert!(
            e.to_string().contains("NV12 5x3: frame has 30 bytes"),
            "{e}"
        );
    }

    /// Removes every DHT segment from a JPEG's header.
    fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
        let (sos, has) = scan_jpeg_header(jpeg).unwrap();
        assert!(has);
        let mut out = jpeg[..2].to_vec();
        let mut i = 2;
        while i < sos {
            let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
            if jpeg[i + 1] != 0xC4 {
                out.extend_from_slice(&jpeg[i..i + 2 + len]);
            }
            i += 2 + len;
        }
        out.extend_from_slice(&jpeg[sos..]);
        out
    }

    fn encode_jpeg(img: &RgbImage) -> Vec<u8> {
        let mut jpeg = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(img)
            .unwrap();
        jpeg
    }

    #[test]
    fn mjpeg_decodes_known_colours() {
        let img = RgbImage::from_fn(32, 16, |x, _| {
            image::Rgb(if x < 16 {
                [200, 30, 60]
            } else {
                [20, 120, 240]
            })
        });
        let out = mjpeg_to_rgb(&encode_jpeg(&img)).unwrap();
        assert_eq!(out.dimensions(), (32, 16));
        for (x, y) in [(4, 4), (27, 11)] {
            let (a, b) = (img.get_pixel(x, y).0, out.get_pixel(x, y).0);
            for c in 0..3 {
                assert!(
                    (a[c] as i32 - b[c] as i32).abs() <= 4,
                    "({x},{y}): {a:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn mjpeg_without_huffman_tables_gets_the_standard_ones() {
        // The image crate's encoder codes with the standard tables, so dropping its DHT
        // segments gives what a camera sends; the decoded pixels must not change.
        let img = odd_picture();
        let jpeg = encode_jpeg(&img);
        let bare = strip_dht(&jpeg);
        assert!(!scan_jpeg_header(&bare).unwrap().1);
        // Without the fix, the decoder rejects it (no AVI1 marker tells it to guess).
        assert!(image::load_from_memory_with_format(&bare, image::ImageFormat::Jpeg).is_err());
        let fixed = with_default_huffman_tables(&bare).unwrap();
        assert!(matches!(fixed, Cow::Owned(_)));
        assert_eq!(fixed.len(), bare.len() + DEFAULT_DHT.len());
        assert_eq!(mjpeg_to_rgb(&bare).unwrap(), mjpeg_to_rgb(&jpeg).unwrap());
        // A frame with its own tables is left alone.
        assert!(matches!(
            with_default_huffman_tables(&jpeg).unwrap(),
            Cow::Borrowed(_)
        ));
        // The table segment is well formed: its length field and counts add up.
        assert_eq!(
            u16::from_be_bytes([DEFAULT_DHT[2], DEFAULT_DHT[3]]) as usize,
            DEFAULT_DHT.len() - 2
        );
    }

    #[test]
    fn corrupt_mjpeg_is_an_error() {
        let e = mjpeg_to_rgb(b"not a jpeg").unwrap_err();
        assert!(e.to_string().contains("no start-of-image marker"), "{e}");
        let jpeg = encode_jpeg(&odd_picture());
        let e = mjpeg_to_rgb(&jpeg[..20]).unwrap_err();
        assert!(e.to_string().contains("JPEG frame"), "{e}");
        // Cut inside the entropy-coded data: the decoder may fill or fail, but never panic.
        let _ = mjpeg_to_rgb(&jpeg[..jpeg.len() / 2]);
    }

    #[test]
    fn fourccs() {
        for f in PixelFormat::PREFERENCE {
            assert_eq!(PixelFormat::from_fourcc(f.fourcc()), Some(f));
        }
        assert_eq!(PixelFormat::from_fourcc(*b"H264"), None);
        assert_eq!(parse_fourcc("mjpg").unwrap(), *b"MJPG");
        assert_eq!(parse_fourcc("Y16").unwrap(), *b"Y16 ");
        assert!(parse_fourcc("YUYV2").is_err());
        assert!(parse_fourcc("").is_err());
        assert_eq!(fourcc_str(*b"YUYV"), "YUYV");
        assert_eq!(fourcc_str([0, b'A', b'B', b'C']), "\\x00ABC");
        let grey = [10u8, 20, 30, 40];
        assert_eq!(
            PixelFormat::Grey
                .to_rgb(&grey, 2, 2, 0, Range::Limited)
                .unwrap()
                .get_pixel(1, 1)
                .0,
            [40, 40, 40]
        );
    }
}
