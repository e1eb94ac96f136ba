//! The dataset loader: each broken layout gives one error naming the file and the problem, and
//! the real datasets in ../shared/data open and validate.

mod common;

use std::path::{Path, PathBuf};

use alignsam::dataset::{Dataset, available_splits, load_mask};
use alignsam::source::InputLimits;
use image::{GrayImage, Luma, Rgb, RgbImage};

/// A dataset in a temporary directory, to build and break at will.
struct Fake {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Fake {
    fn new() -> Fake {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("DS");
        for sub in ["images", "masks", "splits"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        Fake { _tmp: tmp, dir }
    }

    /// Writes `images/<id>.<ext>` of the given size.
    fn image(&self, id: &str, ext: &str, (w, h): (u32, u32)) -> &Self {
        RgbImage::from_pixel(w, h, Rgb([10, 20, 30]))
            .save(self.dir.join("images").join(format!("{id}.{ext}")))
            .unwrap();
        self
    }

    /// Writes `masks/<id>.png`: foreground in the left column, background elsewhere.
    fn mask(&self, id: &str, (w, h): (u32, u32)) -> &Self {
        GrayImage::from_fn(w, h, |x, _| Luma([if x == 0 { 255 } else { 0 }]))
            .save(self.dir.join("masks").join(format!("{id}.png")))
            .unwrap();
        self
    }

    /// A matching 4x3 image and mask.
    fn pair(&self, id: &str) -> &Self {
        self.image(id, "jpg", (4, 3)).mask(id, (4, 3))
    }

    fn split(&self, name: &str, text: &str) -> &Self {
        std::fs::write(self.dir.join("splits").join(format!("{name}.txt")), text).unwrap();
        self
    }

    fn open_err(&self, split: &str) -> String {
        format!("{:#}", Dataset::open(&self.dir, split).unwrap_err())
    }

    fn validate_err(&self, split: &str) -> String {
        let ds = Dataset::open(&self.dir, split).unwrap();
        format!("{:#}", ds.validate().unwrap_err())
    }

    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }
}

#[test]
fn opens_in_split_order_and_takes_the_first() {
    let f = Fake::new();
    f.pair("b").pair("a").pair("c");
    // Blank lines and white space are ignored; the order is the file's.
    f.split("train", "b\n\n  c \r\na\n");
    let ds = Dataset::open(&f.dir, "train").unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.split(), "train");
    let ids: Vec<&str> = ds.items().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["b", "c", "a"]);
    assert_eq!(ds.items()[0].image_path, f.dir.join("images/b.jpg"));
    assert_eq!(ds.items()[0].mask_path, f.dir.join("masks/b.png"));
    let first = ds.take(2);
    assert_eq!(first.items(), &ds.items()[..2]);
    assert_eq!(ds.take(10).len(), 3);
    assert!(ds.take(0).is_empty());
    let opened = |n| Dataset::open_first(&f.dir, "train", n, InputLimits::default()).unwrap();
    assert_eq!(opened(Some(2)).items(), first.items());
    assert_eq!(opened(None).items(), ds.items());
    ds.validate().unwrap();

    let (image, mask) = ds.items()[0].load().unwrap();
    assert_eq!(image.dimensions(), (4, 3));
    assert_eq!((mask.width, mask.height), (4, 3));
    assert_eq!(mask.foreground(), 3);
    assert_eq!(mask.get(0, 2), Some(true));
    assert_eq!(mask.get(1, 2), Some(false));
}

#[test]
fn image_extensions_are_tried_in_order() {
    let f = Fake::new();
    // Both .png and .jpeg exist: .jpeg comes first in jpg, jpeg, png, bmp.
    f.image("x", "png", (4, 3))
        .image("x", "jpeg", (4, 3))
        .mask("x", (4, 3));
    f.image("y", "bmp", (4, 3)).mask("y", (4, 3));
    f.split("eval", "x\ny\n");
    let ds = Dataset::open(&f.dir, "eval").unwrap();
    assert_eq!(ds.items()[0].image_path, f.dir.join("images/x.jpeg"));
    assert_eq!(ds.items()[1].image_path, f.dir.join("images/y.bmp"));
    ds.validate().unwrap();
}

#[test]
fn missing_dataset_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nope");
    let e = format!("{:#}", Dataset::open(&dir, "train").unwrap_err());
    assert_eq!(e, format!("{}: dataset directory not found", dir.display()));
}

#[test]
fn missing_split_lists_those_that_exist() {
    let f = Fake::new();
    f.pair("a").split("train", "a\n").split("eval", "a\n");
    let e = f.open_err("test");
    assert_eq!(
        e,
        format!(
            "{}: split not found; this dataset has: eval, train",
            f.path("splits/test.txt")
        )
    );
    assert_eq!(available_splits(&f.dir), ["eval", "train"]);
}

#[test]
fn empty_split_file() {
    let f = Fake::new();
    f.pair("a").split("train", "\n  \n");
    assert_eq!(
        f.open_err("train"),
        format!("{}: split file lists no ids", f.path("splits/train.txt"))
    );
}

#[test]
fn duplicate_id() {
    let f = Fake::new();
    f.pair("a").pair("b").split("train", "a\nb\na\n");
    assert_eq!(
        f.open_err("train"),
        format!(
            "{}: id 'a' is listed twice (lines 1 and 3)",
            f.path("splits/train.txt")
        )
    );
}

#[test]
fn id_without_image() {
    let f = Fake::new();
    f.pair("a").mask("b", (4, 3)).split("train", "a\nb\n");
    let e = f.open_err("train");
    assert!(
        e.starts_with(&format!(
            "{}: no image for id 'b' (tried .jpg, .jpeg, .png, .bmp; listed at {} line 2)",
            f.path("images/b"),
            f.path("splits/train.txt")
        )),
        "{e}"
    );
}

#[test]
fn id_without_mask() {
    let f = Fake::new();
    f.pair("a")
        .image("b", "jpg", (4, 3))
        .split("train", "a\nb\n");
    let e = f.open_err("train");
    assert_eq!(
        e,
        format!(
            "{}: mask not found for id 'b' (listed at {} line 2)",
            f.path("masks/b.png"),
            f.path("splits/train.txt")
        )
    );
}

#[test]
fn many_missing_masks_are_counted() {
    let f = Fake::new();
    let mut split = String::new();
    for i in 0..6 {
        f.image(&format!("m{i}"), "jpg", (4, 3));
        split.push_str(&format!("m{i}\n"));
    }
    f.split("train", &split);
    let e = f.open_err("train");
    assert!(e.contains("masks/m0.png: mask not found"), "{e}");
    assert!(e.contains("masks/m2.png: mask not found"), "{e}");
    assert!(!e.contains("m3.png"), "{e}");
    assert!(e.ends_with("; and 3 more pairs with problems"), "{e}");
}

#[test]
fn size_mismatch() {
    let f = Fake::new();
    f.pair("a")
        .image("x", "jpg", (481, 321))
        .mask("x", (320, 480))
        .split("train", "a\nx\n");
    let expected = format!(
        "{} is 320x480 but {} is 481x321",
        f.path("masks/x.png"),
        f.path("images/x.jpg")
    );
    // Found up front from the headers...
    assert_eq!(f.validate_err("train"), expected);
    // ...and when the pair is loaded without validation.
    let ds = Dataset::open(&f.dir, "train").unwrap();
    assert_eq!(format!("{:#}", ds.items()[1].load().unwrap_err()), expected);
}

#[test]
fn corrupt_mask() {
    let f = Fake::new();
    f.image("x", "jpg", (4, 3)).split("train", "x\n");
    std::fs::write(f.dir.join("masks/x.png"), b"\x89PNG\r\n\x1a\n not a png").unwrap();
    let e = f.validate_err("train");
    assert!(
        e.starts_with(&format!(
            "{}: corrupt or unsupported mask",
            f.path("masks/x.png")
        )),
        "{e}"
    );
    let ds = Dataset::open(&f.dir, "train").unwrap();
    let e = format!("{:#}", ds.items()[0].load().unwrap_err());
    assert!(
        e.starts_with(&format!(
            "{}: corrupt or unsupported mask",
            f.path("masks/x.png")
        )),
        "{e}"
    );
}

#[test]
fn colour_mask_is_refused_grey_rgb_accepted() {
    let f = Fake::new();
    f.image("grey", "jpg", (2, 1))
        .image("colour", "jpg", (2, 1));
    // An RGB mask with equal channels is a grey mask saved as RGB: accepted.
    RgbImage::from_raw(2, 1, vec![255, 255, 255, 0, 0, 0])
        .unwrap()
        .save(f.dir.join("masks/grey.png"))
        .unwrap();
    // A label map in colour: refused, naming a pixel.
    RgbImage::from_raw(2, 1, vec![0, 0, 0, 200, 0, 0])
        .unwrap()
        .save(f.dir.join("masks/colour.png"))
        .unwrap();
    f.split("train", "grey\ncolour\n");
    let ds = Dataset::open(&f.dir, "train").unwrap();
    ds.validate().unwrap();
    let (_, mask) = ds.items()[0].load().unwrap();
    assert_eq!(mask.data, [true, false]);
    let e = format!("{:#}", ds.items()[1].load().unwrap_err());
    assert!(
        e.starts_with(&format!(
            "{}: a colour mask (pixel x=1, y=0 is RGB 200,0,0)",
            f.path("masks/colour.png")
        )),
        "{e}"
    );
}

#[test]
fn sixteen_bit_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.png");
    image::ImageBuffer::<Luma<u16>, _>::from_raw(3, 1, vec![0u16, 32767, 65535])
        .unwrap()
        .save(&p)
        .unwrap();
    assert_eq!(
        load_mask(&p, &InputLimits::default()).unwrap().data,
        [false, false, true]
    );
}

#[test]
fn video_layout_is_named() {
    let f = Fake::new();
    std::fs::create_dir_all(f.dir.join("images/blackswan")).unwrap();
    f.split("sequences", "blackswan\n");
    let e = f.open_err("train");
    assert!(e.contains("a video dataset"), "{e}");
    assert!(e.starts_with(&f.dir.display().to_string()), "{e}");
}

#[test]
fn id_that_is_a_path() {
    let f = Fake::new();
    f.pair("a").split("train", "a\n../a\n");
    assert_eq!(
        f.open_err("train"),
        format!(
            "{}: line 2: '../a' is a path; ids are file names without extension",
            f.path("splits/train.txt")
        )
    );
}

/// A split file saved with a byte-order mark reads as without one; an id with an invisible
/// character is named with it escaped, not as "no image for id 'ball'".
#[test]
fn byte_order_mark_and_invisible_characters() {
    let f = Fake::new();
    f.pair("a").pair("b").split("train", "\u{feff}a\nb\n");
    let d = Dataset::open(&f.dir, "train").unwrap();
    assert_eq!(d.len(), 2);
    f.split("train", "a\nb\u{200b}\n");
    assert_eq!(
        f.open_err("train"),
        format!(
            "{}: line 2: id \"b\\u{{200b}}\" holds the invisible character U+200B; ids are file names without extension",
            f.path("splits/train.txt")
        )
    );
}

/// The number of ids in a split file (non-blank lines).
fn count_ids(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[test]
fn shared_datasets_open_and_validate() {
    let Some(shared) = common::shared() else {
        println!("skipped: ../shared is absent");
        return;
    };
    let data = shared.join("data");
    for (name, splits) in [
        ("saliency/SOD", &["train", "eval"][..]),
        ("polyp/Kvasir-SEG", &["train", "eval"][..]),
        (
            "polyp/CVC-ClinicDB",
            &[
                "train",
                "eval",
                "train_by_sequence_1-24",
                "eval_by_sequence_25-29",
            ][..],
        ),
    ] {
        let dir = data.join(name);
        if !dir.is_dir() {
            println!("skipped {name}: {} is absent", dir.display());
            continue;
        }
        for &split in splits {
            let ds = Dataset::open(&dir, split).unwrap_or_else(|e| panic!("{e:#}"));
            let expected = count_ids(&dir.join("splits").join(format!("{split}.txt")));
            assert_eq!(ds.len(), expected, "{name} {split}");
            ds.validate().unwrap_or_else(|e| panic!("{e:#}"));
            // Decode a couple of pairs: an object and some background in each mask.
            for sample in ds.take(2).items() {
                let (image, mask) = sample.load().unwrap_or_else(|e| panic!("{e:#}"));
                assert_eq!(
                    (image.width() as usize, image.height() as usize),
                    (mask.width, mask.height)
                );
                let fg = mask.foreground();
                assert!(fg > 0 && fg < mask.data.len(), "{}", sample.id);
            }
            println!("{name} {split}: {} pairs valid", ds.len());
        }
    }

    // The full PraNet Kvasir test list names one id that the shared copy lacks.
    let kvasir = data.join("polyp/Kvasir-SEG");
    if kvasir.join("splits/pranet_test_ids_full.txt").is_file() {
        let e = format!(
            "{:#}",
            Dataset::open(&kvasir, "pranet_test_ids_full").unwrap_err()
        );
        assert!(
            e.contains("no image for id 'cju2hqt33lmra0988fr5ijv8j'"),
            "{e}"
        );
    }
    // The video dataset is refused as such.
    let davis = data.join("video/DAVIS2016-train");
    if davis.is_dir() {
        let e = format!("{:#}", Dataset::open(&davis, "train").unwrap_err());
        assert!(e.contains("a video dataset"), "{e}");
    }
}
