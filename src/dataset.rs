//! Still-image segmentation datasets on disk, for training and evaluation.
//!
//! The layout is the one of the shared data folder:
//!
//! ```text
//! DATASET/images/<id>.jpg     (or .jpeg, .png, .bmp; tried in that order)
//! DATASET/masks/<id>.png      (8-bit, 0 background / 255 object)
//! DATASET/splits/<split>.txt  (one id per line, no extension)
//! ```
//!
//! [`Dataset::open`] reads a split and resolves every id to its image and mask, so that a missing
//! file is reported before anything runs; [`Dataset::validate`] also reads every header and checks
//! the sizes (seconds for a thousand pairs, against minutes of training lost to a bad pair late in
//! an epoch). [`Sample::load`] decodes one pair. Every error names the file and what is wrong.
//!
//! Video datasets (`images/<sequence>/<frame>.jpg`) are a different layout and are refused with an
//! error that says so.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use image::{ColorType, DynamicImage, ImageDecoder, RgbImage};

use crate::safe_read::regular_file;
use crate::source::InputLimits;

/// Image extensions tried for each id, in this order (then the same in upper case).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp"];

/// The mask extension.
pub const MASK_EXTENSION: &str = "png";

/// At most this many problems are spelt out in one error; the rest are counted.
const PROBLEMS_SHOWN: usize = 3;

/// A binary mask, row-major: `data[y * width + x]` is true on the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `width * height` values, true for foreground.
    pub data: Vec<bool>,
}

impl Mask {
    /// The value at column `x`, row `y`; `None` outside the mask.
    pub fn get(&self, x: usize, y: usize) -> Option<bool> {
        (x < self.width && y < self.height).then(|| self.data[y * self.width + x])
    }

    /// The number of foreground pixels.
    pub fn foreground(&self) -> usize {
        self.data.iter().filter(|&&m| m).count()
    }
}

/// One image/mask pair of a split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The id as written in the split file (the file stem of both image and mask).
    pub id: String,
    /// The image file.
    pub image_path: PathBuf,
    /// The mask file.
    pub mask_path: PathBuf,
    /// What reading either file may cost (the dataset's).
    limits: InputLimits,
}

impl Sample {
    /// Decodes the image (as 8-bit RGB, through [`InputLimits::load_rgb`]) and the mask (see
    /// [`load_mask`]), and checks that they have the same size.
    pub fn load(&self) -> Result<(RgbImage, Mask)> {
        let image = self.limits.load_rgb(&self.image_path)?;
        let mask = self.load_mask()?;
        check_same_size(
            &self.mask_path,
            (mask.width as u32, mask.height as u32),
            &self.image_path,
            image.dimensions(),
        )?;
        Ok((image, mask))
    }

    /// Decodes the mask alone (see [`load_mask`]).
    pub fn load_mask(&self) -> Result<Mask> {
        load_mask(&self.mask_path, &self.limits)
    }

    /// Decodes the image alone, as 8-bit RGB.
    pub fn load_image(&self) -> Result<RgbImage> {
        self.limits.load_rgb(&self.image_path)
    }
}

/// A split of a dataset: its samples in the order of the split file.
#[derive(Clone, Debug)]
pub struct Dataset {
    dir: PathBuf,
    split: String,
    items: Vec<Sample>,
}

impl Dataset {
    /// Opens `dir` and reads `dir/splits/<split>.txt`, resolving every id to an image and a mask.
    ///
    /// Blank lines and surrounding white space are ignored. Errors (naming the file): `dir`
    /// missing or without `images/` or `masks/`; a video layout; no such split (the message lists
    /// those that exist); a split file with no ids, a duplicated id, or an id that is a path;
    /// ids with no image or no mask (the first few are named, the others counted). Only file names
    /// are checked here; [`Dataset::validate`] also reads the headers. Files are read within the
    /// default [`InputLimits`]; [`Dataset::open_with_limits`] takes others.
    pub fn open(dir: &Path, split: &str) -> Result<Dataset> {
        Self::open_with_limits(dir, split, InputLimits::default())
    }

    /// [`Dataset::open`] with the limits within which the split file and every sample are read.
    pub fn open_with_limits(dir: &Path, split: &str, limits: InputLimits) -> Result<Dataset> {
        if !dir.is_dir() {
            if dir.exists() {
                bail!("{}: not a dataset directory", dir.display());
            }
            bail!("{}: dataset directory not found", dir.display());
        }
        let images_dir = dir.join("images");
        let masks_dir = dir.join("masks");
        let images = list_files(&images_dir)?;
        if images.files.is_empty() && !images.dirs.is_empty() {
            bail!(
                "{}: a video dataset (images/<sequence>/<frame>.jpg, e.g. images/{}/); this loader reads still-image datasets (images/<id>.jpg, masks/<id>.png)",
                dir.display(),
                images.dirs[0]
            );
        }
        let masks = list_files(&masks_dir)?;

        let split_path = dir.join("splits").join(format!("{split}.txt"));
        let ids = read_split(dir, split, &split_path, &limits)?;

        let mut items = Vec::with_capacity(ids.len());
        let mut problems = vec![];
        for (line, id) in ids {
            let image = IMAGE_EXTENSIONS
                .iter()
                .flat_map(|ext| [ext.to_string(), ext.to_uppercase()])
                .map(|ext| format!("{id}.{ext}"))
                .find(|name| images.files.contains(name));
            let mask = [MASK_EXTENSION.to_string(), MASK_EXTENSION.to_uppercase()]
                .into_iter()
                .map(|ext| format!("{id}.{ext}"))
                .find(|name| masks.files.contains(name));
            let at = format!("{} line {line}", split_path.display());
            match (image, mask) {
                (Some(image), Some(mask)) => items.push(Sample {
                    id,
                    image_path: images_dir.join(image),
                    mask_path: masks_dir.join(mask),
                    limits,
                }),
                (None, _) if images.dirs.contains(&id) => bail!(
                    "{}: a directory, so {} is a video dataset (images/<sequence>/<frame>.jpg); this loader reads still-image datasets (images/<id>.jpg, masks/<id>.png)",
                    images_dir.join(&id).display(),
                    dir.display()
                ),
                (None, _) => problems.push(format!(
                    "{}: no image for id '{id}' (tried .{}; listed at {at})",
                    images_dir.join(&id).display(),
                    IMAGE_EXTENSIONS.join(", .")
                )),
                (Some(_), None) => problems.push(format!(
                    "{}: mask not found for id '{id}' (listed at {at})",
                    masks_dir.join(format!("{id}.{MASK_EXTENSION}")).display()
                )),
            }
        }
        if !problems.is_empty() {
            bail!("{}", summarise(&problems, "pairs"));
        }
        Ok(Dataset {
            dir: dir.to_path_buf(),
            split: split.to_string(),
            items,
        })
    }

    /// The dataset directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The split's name (`train`, `eval`, ...).
    pub fn split(&self) -> &str {
        &self.split
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no samples (only after [`Dataset::take`] with 0: an opened split has
    /// at least one).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The samples, in split-file order.
    pub fn items(&self) -> &[Sample] {
        &self.items
    }

    /// The first `n` samples in split-file order (all of them if there are fewer): a
    /// deterministic subset for quick runs.
    pub fn take(&self, n: usize) -> Dataset {
        Dataset {
            dir: self.dir.clone(),
            split: self.split.clone(),
            items: self.items.iter().take(n).cloned().collect(),
        }
    }

    /// [`Dataset::open_with_limits`], then the split's first `n` items (all of them with
    /// `None`): what the commands' `--data`, `--split` and `--images` select.
    pub fn open_first(
        dir: &Path,
        split: &str,
        n: Option<usize>,
        limits: InputLimits,
    ) -> Result<Dataset> {
        let all = Dataset::open_with_limits(dir, split, limits)?;
        Ok(match n {
            Some(n) => all.take(n),
            None => all,
        })
    }

    /// Checks every pair from the file headers only, without decoding pixels: both files are
    /// readable images, the mask has a colour type [`load_mask`] accepts, and mask and image have
    /// the same size. All pairs are checked; the error names the first few bad files and counts
    /// the rest. What headers cannot tell (a colour mask stored as RGB, a truncated file) is
    /// still caught by [`Sample::load`].
    pub fn validate(&self) -> Result<()> {
        let mut problems = vec![];
        for sample in &self.items {
            if let Err(e) = validate_pair(sample) {
                problems.push(format!("{e:#}"));
            }
        }
        if !problems.is_empty() {
            bail!("{}", summarise(&problems, "pairs"));
        }
        Ok(())
    }
}

/// The splits a dataset has: the stems of `dir/splits/*.txt`, sorted. Empty if there is no
/// `splits/` folder.
pub fn available_splits(dir: &Path) -> Vec<String> {
    let mut splits: Vec<String> = std::fs::read_dir(dir.join("splits"))
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if !path.is_file() || path.extension()? != "txt" {
                return None;
            }
            Some(path.file_stem()?.to_str()?.to_string())
        })
        .collect();
    splits.sort();
    splits
}

/// Decodes a mask file into a binary mask: foreground where the value is above half the range
/// (> 127 for 8-bit, > 32767 for 16-bit).
///
/// Accepted: grey images (8 or 16 bit, with or without alpha), and RGB(A) images whose three
/// colour channels are equal at every pixel (a grey mask saved as RGB, or a grey palette). Alpha
/// is ignored: it is transparency, not a label. A pixel with unequal channels is an error rather
/// than a guess, since colour masks are usually label maps (one colour per class) that a
/// brightness threshold would silently get wrong. Float images are refused.
pub fn load_mask(path: &Path, limits: &InputLimits) -> Result<Mask> {
    let bytes = limits.read_file(path, "mask")?;
    let img = limits.decode_image(bytes, path, "mask")?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        bail!("{}: mask has no pixels", path.display());
    }
    let (grey, full): (Vec<u16>, u16) = match &img {
        DynamicImage::ImageLuma8(m) => (m.pixels().map(|p| p[0] as u16).collect(), 255),
        DynamicImage::ImageLumaA8(m) => (m.pixels().map(|p| p[0] as u16).collect(), 255),
        DynamicImage::ImageLuma16(m) => (m.pixels().map(|p| p[0]).collect(), 65535),
        DynamicImage::ImageLumaA16(m) => (m.pixels().map(|p| p[0]).collect(), 65535),
        DynamicImage::ImageRgb8(m) => {
            let px = m.pixels().map(|p| p.0.map(u16::from));
            (grey_from_rgb(path, width, px)?, 255)
        }
        DynamicImage::ImageRgba8(m) => {
            let px = m.pixels().map(|p| [p[0], p[1], p[2]].map(u16::from));
            (grey_from_rgb(path, width, px)?, 255)
        }
        DynamicImage::ImageRgb16(m) => {
            (grey_from_rgb(path, width, m.pixels().map(|p| p.0))?, 65535)
        }
        DynamicImage::ImageRgba16(m) => {
            let px = m.pixels().map(|p| [p[0], p[1], p[2]]);
            (grey_from_rgb(path, width, px)?, 65535)
        }
        other => bail!(
            "{}: a {:?} image; a mask must be 8- or 16-bit grey (0 background, 255 object)",
            path.display(),
            other.color()
        ),
    };
    let data = binarise(&grey, full);
    if !data.iter().any(|&v| v) {
        log::warn!("{}: the mask has no object pixel", path.display());
    }
    Ok(Mask {
        width,
        height,
        data,
    })
}

/// The rule that makes a grey mask binary: a mask whose largest value is 1 is a 0/1 mask
/// (object where 1); any other is thresholded at half the format's range (object above 127 of
/// 255, above 32767 of 65535), which reads 0/255 masks and anti-aliased edges alike.
pub fn binarise(grey: &[u16], full: u16) -> Vec<bool> {
    let max = grey.iter().copied().max().unwrap_or(0);
    let threshold = if max <= 1 { 0 } else { full / 2 };
    grey.iter().map(|&v| v > threshold).collect()
}

/// The grey values of RGB pixels whose channels are all equal; the first other pixel is an
/// error.
fn grey_from_rgb(
    path: &Path,
    width: usize,
    pixels: impl Iterator<Item = [u16; 3]>,
) -> Result<Vec<u16>> {
    let mut out = vec![];
    for (i, [r, g, b]) in pixels.enumerate() {
        if r != g || g != b {
            bail!(
                "{}: a colour mask (pixel x={}, y={} is RGB {r},{g},{b}); a mask must be grey, 0 background and 255 object",
                path.display(),
                i % width,
                i / width
            );
        }
        out.push(r);
    }
    Ok(out)
}

/// The files (by name) and subdirectories of a dataset folder.
struct Listing {
    files: HashSet<String>,
    dirs: Vec<String>,
}

/// Lists a folder once: resolving a thousand ids against a set is faster than a thousand
/// `stat`s per extension, on network file systems above all.
fn list_files(dir: &Path) -> Result<Listing> {
    let entries = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!(
            "{}: folder not found (a dataset has images/<id>.jpg, masks/<id>.png and splits/<split>.txt)",
            dir.display()
        ),
        _ => anyhow!("{}: cannot read folder: {e}", dir.display()),
    })?;
    let mut listing = Listing {
        files: HashSet::new(),
        dirs: vec![],
    };
    for entry in entries {
        let entry = entry.map_err(|e| anyhow!("{}: cannot read folder: {e}", dir.display()))?;
        // Names that are not UTF-8 cannot match an id from a text file; skip them.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if entry.path().is_dir() {
            listing.dirs.push(name);
        } else {
            listing.files.insert(name);
        }
    }
    listing.dirs.sort();
    Ok(listing)
}

/// Reads a split file into (line number, id) pairs.
fn read_split(
    dir: &Path,
    split: &str,
    path: &Path,
    limits: &InputLimits,
) -> Result<Vec<(usize, String)>> {
    if split.is_empty() || split.contains(['/', '\\']) {
        bail!("'{split}': not a split name (use e.g. train or eval)");
    }
    std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            let splits = available_splits(dir);
            if splits.is_empty() {
                anyhow!(
                    "{}: split not found, and {} has no split files",
                    path.display(),
                    dir.join("splits").display()
                )
            } else {
                anyhow!(
                    "{}: split not found; this dataset has: {}",
                    path.display(),
                    splits.join(", ")
                )
            }
        }
        _ => anyhow!("{}: cannot read split file: {e}", path.display()),
    })?;
    // Present: only a regular file of sane size is read (a FIFO would block, /dev/zero never end).
    let text = String::from_utf8(limits.read_file(path, "split file")?)
        .map_err(|_| anyhow!("{}: split file is not UTF-8 text", path.display()))?;
    // Editors on Windows start UTF-8 files with a byte-order mark: it is not part of the first id.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut ids = vec![];
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let (line_no, id) = (i + 1, line.trim());
        if id.is_empty() {
            continue;
        }
        if let Some(c) = id.chars().find(|c| c.is_control() || is_invisible(*c)) {
            bail!(
                "{}: line {line_no}: id {id:?} holds the invisible character U+{:04X}; ids are file names without extension",
                path.display(),
                c as u32
            );
        }
        if id.contains(['/', '\\']) || id == "." || id == ".." {
            bail!(
                "{}: line {line_no}: '{id}' is a path; ids are file names without extension",
                path.display()
            );
        }
        if let Some(first) = seen.insert(id.to_string(), line_no) {
            bail!(
                "{}: id '{id}' is listed twice (lines {first} and {line_no})",
                path.display()
            );
        }
        ids.push((line_no, id.to_string()));
    }
    if ids.is_empty() {
        bail!("{}: split file lists no ids", path.display());
    }
    Ok(ids)
}

/// Characters that print as nothing (zero-width spaces and joiners, byte-order marks): an id
/// holding one can never match the file the user sees.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{00ad}')
}

/// Header-only checks of one pair.
fn validate_pair(sample: &Sample) -> Result<()> {
    // Before opening: a FIFO would block the open itself.
    regular_file(&sample.image_path, "image")?;
    regular_file(&sample.mask_path, "mask")?;
    let image_size = image::ImageReader::open(&sample.image_path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| anyhow!("{}: cannot read image: {e}", sample.image_path.display()))?
        .into_decoder()
        .map(|mut d| crate::safe_read::shown_dimensions(&mut d))
        .map_err(|e| {
            anyhow!(
                "{}: corrupt or unsupported image: {e}",
                sample.image_path.display()
            )
        })?;
    let mut decoder = image::ImageReader::open(&sample.mask_path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| anyhow!("{}: cannot read mask: {e}", sample.mask_path.display()))?
        .into_decoder()
        .map_err(|e| {
            anyhow!(
                "{}: corrupt or unsupported mask: {e}",
                sample.mask_path.display()
            )
        })?;
    let color = decoder.color_type();
    if !matches!(
        color,
        ColorType::L8
            | ColorType::La8
            | ColorType::L16
            | ColorType::La16
            | ColorType::Rgb8
            | ColorType::Rgba8
            | ColorType::Rgb16
            | ColorType::Rgba16
    ) {
        bail!(
            "{}: a {color:?} image; a mask must be 8- or 16-bit grey (0 background, 255 object)",
            sample.mask_path.display()
        );
    }
    check_same_size(
        &sample.mask_path,
        crate::safe_read::shown_dimensions(&mut decoder),
        &sample.image_path,
        image_size,
    )
}

fn check_same_size(
    mask_path: &Path,
    mask: (u32, u32),
    image_path: &Path,
    image: (u32, u32),
) -> Result<()> {
    if mask != image {
        bail!(
            "{} is {}x{} but {} is {}x{}",
            mask_path.display(),
            mask.0,
            mask.1,
            image_path.display(),
            image.0,
            image.1
        );
    }
    Ok(())
}

/// One line for many problems: the first few in full, then a count.
fn summarise(problems: &[String], what: &str) -> String {
    let mut out = problems[..problems.len().min(PROBLEMS_SHOWN)].join("; ");
    if problems.len() > PROBLEMS_SHOWN {
        let _ = write!(
            out,
            "; and {} more {what} with problems",
            problems.len() - PROBLEMS_SHOWN
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_one_masks_read_as_such_and_zero_255_at_half() {
        assert_eq!(binarise(&[0, 1, 0, 1], 255), [false, true, false, true]);
        assert_eq!(binarise(&[0, 1, 128, 255], 255), [false, false, true, true]);
        assert_eq!(binarise(&[0, 127, 128], 255), [false, false, true]);
        assert_eq!(binarise(&[0, 1], 65535), [false, true]);
        assert_eq!(binarise(&[0, 32767, 32768], 65535), [false, false, true]);
        assert_eq!(
            binarise(&[0, 0], 255),
            [false, false],
            "an empty mask stays empty"
        );
        // And through a file: a 0/1 PNG is an object, not an empty mask.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("01.png");
        image::GrayImage::from_raw(2, 1, vec![0, 1])
            .unwrap()
            .save(&path)
            .unwrap();
        assert_eq!(
            load_mask(&path, &InputLimits::default()).unwrap().data,
            [false, true]
        );
    }

    #[test]
    fn masks_threshold_and_refuse_colour() {
        let tmp = tempfile::tempdir().unwrap();
        let grey = tmp.path().join("g.png");
        image::GrayImage::from_raw(3, 1, vec![0, 127, 128])
            .unwrap()
            .save(&grey)
            .unwrap();
        let m = load_mask(&grey, &InputLimits::default()).unwrap();
        assert_eq!((m.width, m.height), (3, 1));
        assert_eq!(m.data, vec![false, false, true]);
        assert_eq!(m.get(2, 0), Some(true));
        assert_eq!(m.get(3, 0), None);
        assert_eq!(m.foreground(), 1);

        let wide = tmp.path().join("w.png");
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(2, 1, vec![32767u16, 32768])
            .unwrap()
            .save(&wide)
            .unwrap();
        assert_eq!(
            load_mask(&wide, &InputLimits::default()).unwrap().data,
            vec![false, true]
        );

        let rgb_grey = tmp.path().join("rg.png");
        image::RgbImage::from_raw(2, 1, vec![0, 0, 0, 255, 255, 255])
            .unwrap()
            .save(&rgb_grey)
            .unwrap();
        assert_eq!(
            load_mask(&rgb_grey, &InputLimits::default()).unwrap().data,
            vec![false, true]
        );

        let colour = tmp.path().join("c.png");
        image::RgbImage::from_raw(2, 1, vec![0, 0, 0, 128, 0, 0])
            .unwrap()
            .save(&colour)
            .unwrap();
        let e = format!(
            "{:#}",
            load_mask(&colour, &InputLimits::default()).unwrap_err()
        );
        assert!(e.contains("c.png: a colour mask (pixel x=1, y=0"), "{e}");
    }

    #[test]
    fn summarise_counts_the_rest() {
        let p: Vec<String> = (0..5).map(|i| format!("p{i}")).collect();
        assert_eq!(
            summarise(&p, "pairs"),
            "p0; p1; p2; and 2 more pairs with problems"
        );
        assert_eq!(summarise(&p[..1], "pairs"), "p0");
    }
}
