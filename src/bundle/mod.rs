//! Model bundles: a directory with `bundle.toml` naming the encoder, decoder, policy and SRM
//! files, their checksums, and the numbers the runtime needs.
//!
//! Opening a bundle verifies every checksum; loading its models (in [`crate::sam`] and
//! [`crate::agent`]) checks every input and output against the manifest. A directory without a
//! manifest but with `encoder.onnx` and `decoder.onnx` can be described by [`infer_manifest`],
//! which `alignsam bundle` writes out and `alignsam info` uses on the fly.

mod infer;
pub mod manifest;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::engine::{Precision, onnx_io};
pub use infer::{InferOptions, infer_manifest, write_bundle};
pub use manifest::{
    AgentKind, AgentSection, ClickerEntry, DataFile, DecoderEntry, DecoderForm, EmbeddingSection,
    GateRecord, ImageSection, MANIFEST_FILE, Manifest, ModelEntry, ModelsSection, PolicyEntry,
    SrmEntry, VariantFile, cpu_class,
};

/// An opened bundle: its manifest and where its files are.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The directory the manifest's relative paths start from.
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// Whether the manifest came from a file (false: inferred from the directory's models).
    pub from_file: bool,
    /// Which precision variant of the encoder and decoder to run.
    pub precision: Precision,
    /// Use a precision variant even without a passing accuracy-gate record.
    pub allow_ungated: bool,
}

/// The lowest mean mask IoU against fp32 (after the whole prompting loop, same prompts) at which
/// the runtime uses a precision variant unless told to ([`OpenOptions::allow_ungated`]).
pub const GATE_MIN_MASK_IOU: f64 = 0.95;

/// How to open a bundle.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    /// Verify every file's SHA-256 against the manifest (default). Hashing a 2.5 GB ViT-H encoder
    /// takes seconds; development loops may skip it.
    pub verify_checksums: bool,
    /// The precision variant to run (default fp32).
    pub precision: Precision,
    /// Run a variant that has no passing accuracy-gate record (measurements, the gate itself).
    pub allow_ungated: bool,
}

/// Which precision to open a bundle at: a fixed one, or `auto` ([`Bundle::open_choosing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionChoice {
    /// The fastest variant that passed the gate here ([`Bundle::fastest_gated`]).
    Auto,
    /// This precision.
    Fixed(Precision),
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            verify_checksums: true,
            precision: Precision::Fp32,
            allow_ungated: false,
        }
    }
}

impl Bundle {
    /// Opens `dir/bundle.toml`, or infers a manifest when the directory has none.
    pub fn open(dir: &Path, options: OpenOptions) -> Result<Self> {
        if !dir.is_dir() {
            if dir.exists() {
                bail!("{}: not a bundle directory", dir.display());
            }
            bail!("{}: bundle directory not found", dir.display());
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        let (manifest, from_file) = if manifest_path.exists() {
            (Manifest::read(&manifest_path)?, true)
        } else {
            log::warn!(
                "{}: no {MANIFEST_FILE}; describing the models found there (run `alignsam bundle` to write one)",
                dir.display()
            );
            (infer_manifest(dir, &InferOptions::default())?, false)
        };
        let bundle = Bundle {
            dir: dir.to_path_buf(),
            manifest,
            from_file,
            precision: Precision::Fp32,
            allow_ungated: options.allow_ungated,
        }
        .with_precision(options.precision)?;
        if options.verify_checksums && from_file {
            bundle.verify_checksums()?;
        }
        Ok(bundle)
    }

    /// The full path of a file named in the manifest.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Verifies every model file against its manifest checksum.
    pub fn verify_checksums(&self) -> Result<()> {
        for (role, file, expected) in self.manifest.files() {
            let path = self.path(file);
            let actual =
                sha256_file(&path).with_context(|| format!("the {role} named in the manifest"))?;
            if actual != expected {
                bail!(
                    "{}: checksum mismatch for the {role}: the manifest says sha256 {expected}, the file has {actual}",
                    path.display()
                );
            }
        }
        self.check_external_data_listed()
    }

    /// Every external data file a model reads must be listed in the manifest, with its checksum:
    /// otherwise garbage in it would pass "checksums verified" unseen.
    fn check_external_data_listed(&self) -> Result<()> {
        for (role, file, _) in self.manifest.files() {
            if role.ends_with(" data") {
                continue;
            }
            let path = self.path(file);
            let (proto, _) = onnx_io::read_proto(&path)?;
            let listed: Vec<PathBuf> = match role {
                "encoder" => self
                    .manifest
                    .models
                    .encoder
                    .data
                    .iter()
                    .map(|d| self.path(&d.file))
                    .collect(),
                _ => vec![],
            };
            let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => a == b,
            };
            for location in onnx_io::external_data_files(&proto) {
                check_external_location(&path, &location)?;
                let data = path.parent().unwrap_or(Path::new(".")).join(&location);
                if !listed.iter().any(|l| same(l, &data)) {
                    bail!(
                        "{}: the {role}'s weights are in the external data file {}, which the manifest does not list with a checksum (so it could not be verified); rewrite the manifest with `alignsam bundle`",
                        path.display(),
                        data.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Path of the encoder file of the chosen precision (the fp32 file where it has no variant).
    pub fn encoder_path(&self) -> PathBuf {
        let e = &self.manifest.models.encoder;
        self.path(self.variant_file(&e.variants).unwrap_or(&e.file))
    }

    /// Path of the decoder file of the chosen precision (the fp32 file where it has no variant).
    pub fn decoder_path(&self) -> PathBuf {
        let d = &self.manifest.models.decoder;
        self.path(self.variant_file(&d.variants).unwrap_or(&d.file))
    }

    /// Path of the encoder file of another precision (the fp32 file where it has no variant).
    pub fn encoder_path_at(&self, precision: Precision) -> PathBuf {
        Bundle {
            precision,
            ..self.clone()
        }
        .encoder_path()
    }

    fn variant_file<'a>(&self, variants: &'a BTreeMap<String, VariantFile>) -> Option<&'a str> {
        variants.get(self.precision.name()).map(|v| v.file.as_str())
    }

    /// The same bundle, running another precision. A quantised precision needs a variant file of
    /// the encoder or the decoder (the other then stays fp32).
    pub fn with_precision(mut self, precision: Precision) -> Result<Self> {
        let m = &self.manifest.models;
        let name = precision.name();
        if !self.has_variant(precision) {
            let known: Vec<&str> = m
                .encoder
                .variants
                .keys()
                .chain(m.decoder.variants.keys())
                .map(String::as_str)
                .collect();
            bail!(
                "{}: the bundle has no {name} variant of its encoder or decoder (it has: fp32, f16{}); make one with `python calibration/quantize.py --bundle {} --data DATASET --variants {name}`",
                self.dir.join(MANIFEST_FILE).display(),
                known.iter().map(|k| format!(", {k}")).collect::<String>(),
                self.dir.display()
            );
        }
        self.precision = precision;
        Ok(self)
    }

    /// Whether the bundle can run at `precision`: fp32 and f16 (converted at load) always; a
    /// variant with its own file when bundle.toml names one for the encoder or the decoder.
    pub fn has_variant(&self, precision: Precision) -> bool {
        let m = &self.manifest.models;
        let name = precision.name();
        !precision.has_own_file()
            || m.encoder.variants.contains_key(name)
            || m.decoder.variants.contains_key(name)
    }

    /// The precision `--precision auto` runs on `backend`: the variant whose gate record, taken
    /// on a CPU like this one ([`GateRecord::applies_here`]), passed and measured the largest
    /// speed-up over fp32 (at least 5%); fp32 when none did. A record from another architecture
    /// or int8 class, or without a speed-up (an emulated run), never makes a variant the default.
    pub fn fastest_gated(&self, backend: &str) -> Precision {
        self.manifest
            .gate
            .iter()
            .filter(|g| g.backend == backend && g.applies_here())
            .filter(|g| g.passed() && g.speedup.is_some_and(|s| s >= 1.05))
            .filter_map(|g| Some((g.precision.parse::<Precision>().ok()?, g.speedup?)))
            .filter(|(p, _)| self.has_variant(*p))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(Precision::Fp32, |(p, _)| p)
    }

    /// Opens a bundle at a [`PrecisionChoice`]: a fixed precision, or `auto`, the fastest
    /// variant that passed the gate on `backend` here ([`Bundle::fastest_gated`]).
    pub fn open_choosing(
        dir: &Path,
        verify_checksums: bool,
        choice: PrecisionChoice,
        allow_ungated: bool,
        backend: &str,
    ) -> Result<Self> {
        let precision = match choice {
            PrecisionChoice::Fixed(p) => p,
            PrecisionChoice::Auto => Precision::Fp32,
        };
        let bundle = Bundle::open(
            dir,
            OpenOptions {
                verify_checksums,
                precision,
                allow_ungated,
            },
        )?;
        match choice {
            PrecisionChoice::Fixed(_) => Ok(bundle),
            PrecisionChoice::Auto => {
                let p = bundle.fastest_gated(backend);
                if p != Precision::Fp32 {
                    log::info!(
                        "precision auto: {p} (passed the accuracy gate on {backend} here, fastest)"
                    );
                }
                bundle.with_precision(p)
            }
        }
    }

    /// The accuracy-gate records of the chosen precision on `backend`, measured on a CPU like this
    /// one.
    pub fn gate_records(&self, backend: &str) -> Vec<&GateRecord> {
        self.manifest
            .gate
            .iter()
            .filter(|g| g.precision == self.precision.name() && g.backend == backend)
            .filter(|g| g.applies_here())
            .collect()
    }

    /// Refuses a precision variant that has not passed the accuracy gate on `backend`: no record,
    /// or a record whose mean mask IoU is below [`GATE_MIN_MASK_IOU`]. fp32 always passes.
    pub fn check_gate(&self, backend: &str) -> Result<()> {
        if self.precision == Precision::Fp32 || self.allow_ungated {
            return Ok(());
        }
        let records = self.gate_records(backend);
        let manifest = self.dir.join(MANIFEST_FILE);
        if records.is_empty() {
            return Err(GateRefusal::NotGated {
                manifest,
                bundle: self.dir.clone(),
                precision: self.precision,
                backend: backend.to_string(),
                cpu_class: cpu_class(),
            }
            .into());
        }
        if let Some(bad) = records.iter().find(|g| !g.passed()) {
            return Err(GateRefusal::Failed {
                manifest,
                precision: self.precision,
                backend: backend.to_string(),
                mask_iou: bad.mask_iou,
                images: bad.images.clone(),
                arch: bad.arch.clone(),
                embedding_cosine: bad.embedding_cosine,
            }
            .into());
        }
        Ok(())
    }
}

/// Why [`Bundle::check_gate`] refused a precision variant. A caller that wants to offer a way
/// around it (the command line names its `gate` command and `--allow-ungated`) matches on it;
/// [`OpenOptions::allow_ungated`] skips the check.
#[derive(Debug, thiserror::Error)]
pub enum GateRefusal {
    /// No gate record for this precision, backend and CPU class.
    #[error(
        "{}: precision {precision} has not been through the accuracy gate on {backend} on a CPU like this one ({}, int8 class {cpu_class})",
        manifest.display(),
        std::env::consts::ARCH
    )]
    NotGated {
        /// The bundle's manifest.
        manifest: PathBuf,
        /// The bundle's folder.
        bundle: PathBuf,
        /// The refused precision.
        precision: Precision,
        /// The backend it was asked for on.
        backend: String,
        /// This CPU's int8 class ([`manifest::cpu_class`]).
        cpu_class: &'static str,
    },
    /// A gate record says the variant's masks are too far from fp32's.
    #[error(
        "{}: precision {precision} on {backend} failed the accuracy gate: mean mask IoU {mask_iou:.3} against fp32 (minimum {GATE_MIN_MASK_IOU}; {images} on {arch}, embedding cosine {embedding_cosine:.4})",
        manifest.display()
    )]
    Failed {
        /// The bundle's manifest.
        manifest: PathBuf,
        /// The refused precision.
        precision: Precision,
        /// The backend the record is for.
        backend: String,
        /// The record's mean mask IoU against fp32.
        mask_iou: f64,
        /// The images the record measured.
        images: String,
        /// The architecture it was measured on.
        arch: String,
        /// The record's embedding cosine similarity against fp32.
        embedding_cosine: f64,
    },
}

/// The SHA-256 of a file, as lower-case hex. Errors name the file.
pub fn sha256_file(path: &Path) -> Result<String> {
    crate::safe_read::regular_file(path, "file")?;
    let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("{}: file not found", path.display()),
        _ => anyhow::anyhow!("{}: cannot open: {e}", path.display()),
    })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("{}: read error", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// An external data file must lie in the model's folder or below it: ONNX Runtime and the other
/// engines refuse a location that is absolute or climbs out with `..`, so a manifest that listed
/// one would describe a bundle no backend can load.
pub(super) fn check_external_location(model: &Path, location: &str) -> Result<()> {
    let path = Path::new(location);
    let escapes = path.is_absolute()
        || path.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
    if escapes || location.is_empty() {
        bail!(
            "{}: external data location {location:?} is outside the model's folder (absolute or with `..`); the engines refuse it, so export the weights next to the model",
            model.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifest::GateRecord;

    /// The manifest tests' sample bundle with an int8 encoder variant (no int8-qdq) and the
    /// given gate records.
    fn gated_bundle(records: Vec<GateRecord>) -> Bundle {
        let mut manifest =
            Manifest::parse(manifest::tests::SAMPLE, Path::new("bundle.toml")).unwrap();
        manifest.models.encoder.variants.insert(
            "int8".into(),
            manifest::VariantFile {
                file: "encoder.int8.onnx".into(),
                sha256: "0".repeat(64),
            },
        );
        manifest.gate = records;
        Bundle {
            dir: PathBuf::from("b"),
            manifest,
            from_file: true,
            precision: Precision::Fp32,
            allow_ungated: false,
        }
    }

    fn record(precision: &str, arch: &str, mask_iou: f64, speedup: Option<f64>) -> GateRecord {
        GateRecord {
            precision: precision.into(),
            backend: "rten".into(),
            arch: arch.into(),
            cpu: Some(cpu_class().into()),
            images: "d:eval:8 images:15 steps".into(),
            embedding_cosine: 0.999,
            logit_mae: 0.05,
            mask_iou,
            min_mask_iou: mask_iou,
            speedup,
        }
    }

    #[test]
    fn auto_precision_needs_a_passing_record_here_that_is_5_percent_faster() {
        let here = std::env::consts::ARCH;
        let auto = |records| gated_bundle(records).fastest_gated("rten");
        assert_eq!(
            auto(vec![record("int8", here, 0.97, Some(1.2))]),
            Precision::Int8
        );
        // Too slow, failed, unmeasured (emulated), another CPU, another backend: fp32.
        assert_eq!(
            auto(vec![record("int8", here, 0.97, Some(1.04))]),
            Precision::Fp32
        );
        assert_eq!(
            auto(vec![record("int8", here, 0.94, Some(1.5))]),
            Precision::Fp32
        );
        assert_eq!(
            auto(vec![record("int8", here, 0.97, None)]),
            Precision::Fp32
        );
        assert_eq!(
            auto(vec![record("int8", "sparc", 0.97, Some(1.5))]),
            Precision::Fp32
        );
        assert_eq!(
            gated_bundle(vec![record("int8", here, 0.97, Some(1.5))]).fastest_gated("tract"),
            Precision::Fp32
        );
        // Another int8 class of the same architecture (its int8 kernels differ), or a record
        // written before the class was recorded: fp32.
        let with_cpu = |cpu: Option<&str>| {
            let mut r = record("int8", here, 0.97, Some(1.5));
            r.cpu = cpu.map(Into::into);
            r
        };
        assert_eq!(auto(vec![with_cpu(Some("another-class"))]), Precision::Fp32);
        assert_eq!(auto(vec![with_cpu(None)]), Precision::Fp32);
        // A record for a variant the bundle does not have (int8-qdq) is passed over; f16 needs
        // no file of its own; the fastest passing one wins.
        let records = vec![
            record("int8", here, 0.97, Some(1.1)),
            record("int8-qdq", here, 0.99, Some(2.0)),
        ];
        assert_eq!(auto(records), Precision::Int8);
        let on_tract = |mut r: GateRecord| {
            r.backend = "tract".into();
            r
        };
        let records = vec![
            on_tract(record("int8", here, 0.97, Some(1.1))),
            on_tract(record("f16", here, 0.99, Some(1.3))),
        ];
        assert_eq!(gated_bundle(records).fastest_gated("tract"), Precision::F16);
    }

    #[test]
    fn sha256_of_known_content() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let err = format!(
            "{:#}",
            sha256_file(&tmp.path().join("missing")).unwrap_err()
        );
        assert!(err.contains("missing: file not found"), "{err}");
    }
}
