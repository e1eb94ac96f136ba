//! Describing a folder of ONNX models as a bundle: [`infer_manifest`] reads the models' inputs
//! and outputs and writes what the runtime needs to know into a [`Manifest`]; [`write_bundle`]
//! writes it out beside (or pointing to) the models. `alignsam bundle` and `alignsam info` use
//! them, and the trainers write their output bundles with them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::manifest::{
    self, AgentSection, ClickerEntry, DataFile, DecoderEntry, DecoderForm, EmbeddingSection,
    ImageSection, MANIFEST_FILE, Manifest, ModelEntry, ModelsSection, PolicyEntry, SrmEntry,
    VariantFile,
};
use super::{check_external_location, sha256_file};
use crate::engine::{Dim, onnx_io};

/// Choices for [`infer_manifest`] that the files themselves cannot tell.
#[derive(Clone, Debug)]
pub struct InferOptions {
    /// The bundle's name (default: the directory's name).
    pub name: Option<String>,
    /// A line on where the weights came from.
    pub description: String,
    /// Model files as paths (absolute, or relative to the working directory); `None` means the
    /// conventional name (`encoder.onnx`, ...) inside the models directory, if present.
    pub encoder: Option<PathBuf>,
    /// See `encoder`.
    pub decoder: Option<PathBuf>,
    /// See `encoder`.
    pub policy: Option<PathBuf>,
    /// See `encoder`.
    pub srm: Option<PathBuf>,
    /// See `encoder`.
    pub clicker: Option<PathBuf>,
    /// The clicker's stop threshold (see [`manifest::ClickerEntry::stop_threshold`]).
    pub stop_threshold: f32,
    /// Precision variants of the encoder (`int8`, `int8-qdq`: files with the same interface),
    /// as paths like `encoder`; listed in the manifest with their checksums. No gate record
    /// comes with them: `--precision auto` runs fp32 until `alignsam gate --record` passes one.
    pub encoder_variants: BTreeMap<String, PathBuf>,
    /// See `encoder_variants`.
    pub decoder_variants: BTreeMap<String, PathBuf>,
    /// Agent grid and step limit.
    pub agent: AgentSection,
    /// Pixel statistics (SAM's by default).
    pub pixel_mean: [f32; 3],
    /// See `pixel_mean`.
    pub pixel_std: [f32; 3],
}

impl Default for InferOptions {
    fn default() -> Self {
        InferOptions {
            name: None,
            description: String::new(),
            encoder: None,
            decoder: None,
            policy: None,
            srm: None,
            clicker: None,
            stop_threshold: 0.5,
            encoder_variants: BTreeMap::new(),
            decoder_variants: BTreeMap::new(),
            agent: AgentSection::default(),
            pixel_mean: [123.675, 116.28, 103.53],
            pixel_std: [58.395, 57.12, 57.375],
        }
    }
}

fn fixed_dims(d: &onnx_io::IoDecl) -> Option<Vec<usize>> {
    d.shape
        .as_ref()?
        .iter()
        .map(|d| {
            if let Dim::Fixed(n) = d {
                Some(*n)
            } else {
                None
            }
        })
        .collect()
}

/// The file to use for one role: the path given, or the conventional name in `dir`. Returned as a
/// path relative to `dir`, as the manifest stores it.
fn pick(
    dir: &Path,
    given: &Option<PathBuf>,
    default: &str,
    required: bool,
) -> Result<Option<String>> {
    match given {
        Some(f) => Ok(Some(relative_to_dir(dir, f)?)),
        None if dir.join(default).exists() => Ok(Some(default.to_string())),
        None if required => bail!("{}: no {default} in this directory", dir.display()),
        None => Ok(None),
    }
}

/// A file given as a path (absolute, or relative to the working directory), as the manifest in
/// `dir` stores it: relative to `dir`. The file must exist.
fn relative_to_dir(dir: &Path, f: &Path) -> Result<String> {
    crate::safe_read::regular_file(f, "model file")?;
    let parent = f
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let rel = relative_path(parent, dir)?.join(f.file_name().expect("a file has a name"));
    Ok(rel.to_string_lossy().into_owned())
}

/// The manifest's entries for variant files given as paths: relative to `dir`, with checksums.
fn variant_entries(
    dir: &Path,
    files: &BTreeMap<String, PathBuf>,
    checksum: &dyn Fn(&str) -> Result<String>,
) -> Result<BTreeMap<String, VariantFile>> {
    let mut entries = BTreeMap::new();
    for (precision, path) in files {
        let file = relative_to_dir(dir, path)?;
        let sha256 = checksum(&file)?;
        entries.insert(precision.clone(), VariantFile { file, sha256 });
    }
    Ok(entries)
}

/// Describes the models in a directory: shapes and forms read from the files, checksums
/// computed, and (when the directory has a `SHA256SUMS` file) checked against it.
pub fn infer_manifest(dir: &Path, options: &InferOptions) -> Result<Manifest> {
    let encoder_file = pick(dir, &options.encoder, "encoder.onnx", true)?.unwrap_or_default();
    // As models/export.py's `write_bundle`: the low-res form when the directory has both (the loop
    // only reads the low-res outputs; tests/bundle_writers.rs checks the two writers agree).
    let decoder_default = if options.decoder.is_none() && dir.join("decoder_lowres.onnx").exists() {
        "decoder_lowres.onnx"
    } else {
        "decoder.onnx"
    };
    let decoder_file = pick(dir, &options.decoder, decoder_default, true)?.unwrap_or_default();
    let policy_file = pick(dir, &options.policy, "policy.onnx", false)?;
    let srm_file = pick(dir, &options.srm, "srm.onnx", false)?;
    let clicker_file = pick(dir, &options.clicker, "clicker.onnx", false)?;

    let sums = read_sha256sums(dir)?;
    let checksum = |file: &str| -> Result<String> {
        let path = dir.join(file);
        let actual = sha256_file(&path)?;
        let listed = Path::new(file)
            .file_name()
            .and_then(|n| sums.iter().find(|(_, f)| f.as_str() == n));
        if let Some((expected, _)) = listed
            && *expected != actual
        {
            bail!(
                "{}: checksum mismatch: SHA256SUMS says {expected}, the file has {actual}",
                path.display()
            );
        }
        Ok(actual)
    };

    let (enc_proto, enc_bytes) = onnx_io::read_proto(&dir.join(&encoder_file))?;
    let enc = onnx_io::declared_io(&enc_proto, enc_bytes);
    let encoder_data = onnx_io::external_data_files(&enc_proto)
        .into_iter()
        .map(|location| {
            check_external_location(&dir.join(&encoder_file), &location)?;
            let file = Path::new(&encoder_file)
                .parent()
                .unwrap_or(Path::new(""))
                .join(location)
                .to_string_lossy()
                .into_owned();
            Ok(DataFile {
                sha256: checksum(&file)?,
                file,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    drop(enc_proto);
    let enc_in = enc.inputs.first().and_then(fixed_dims);
    let size = match enc_in.as_deref() {
        Some([1, 3, h, w]) if h == w => *h,
        _ => bail!(
            "{}: encoder input should be [1,3,S,S] with a fixed S, the file declares {}",
            dir.join(&encoder_file).display(),
            enc.inputs
                .first()
                .map_or("nothing".into(), |d| d.shape_string())
        ),
    };
    let emb = match enc.outputs.first().and_then(fixed_dims).as_deref() {
        Some([1, c, h, w]) => [*c, *h, *w],
        _ => bail!(
            "{}: encoder output should be [1,C,H,W] with fixed sizes, the file declares {}",
            dir.join(&encoder_file).display(),
            enc.outputs
                .first()
                .map_or("nothing".into(), |d| d.shape_string())
        ),
    };

    let (dec_proto, dec_bytes) = onnx_io::read_proto(&dir.join(&decoder_file))?;
    let dec = onnx_io::declared_io(&dec_proto, dec_bytes);
    drop(dec_proto);
    let form = if dec.outputs.iter().any(|o| o.name == "masks") {
        DecoderForm::Standard
    } else {
        DecoderForm::LowRes
    };

    let policy = match policy_file {
        Some(file) => {
            let (p, b) = onnx_io::read_proto(&dir.join(&file))?;
            let io = onnx_io::declared_io(&p, b);
            let value_head = io.outputs.iter().any(|o| o.name == "value");
            Some(PolicyEntry {
                sha256: checksum(&file)?,
                file,
                value_head,
            })
        }
        None => None,
    };
    let srm = match srm_file {
        Some(file) => {
            let (p, b) = onnx_io::read_proto(&dir.join(&file))?;
            let io = onnx_io::declared_io(&p, b);
            let semantic = io.inputs.iter().any(|i| i.name == "semantic");
            let map_size = io
                .outputs
                .first()
                .and_then(fixed_dims)
                .and_then(|s| s.last().copied())
                .unwrap_or(options.agent.grid);
            Some(SrmEntry {
                sha256: checksum(&file)?,
                file,
                map_size,
                semantic,
            })
        }
        None => None,
    };

    let clicker = match clicker_file {
        Some(file) => {
            let (p, b) = onnx_io::read_proto(&dir.join(&file))?;
            let io = onnx_io::declared_io(&p, b);
            let map_size = io
                .outputs
                .iter()
                .find(|o| o.name == "scores")
                .and_then(fixed_dims)
                .and_then(|s| s.last().copied())
                .unwrap_or(0);
            Some(ClickerEntry {
                sha256: checksum(&file)?,
                file,
                map_size,
                stop_threshold: options.stop_threshold,
            })
        }
        None => None,
    };

    let name = options.name.clone().unwrap_or_else(|| {
        dir.canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "bundle".into())
    });
    let manifest = Manifest {
        format: manifest::FORMAT,
        name,
        description: options.description.clone(),
        image: ImageSection {
            size,
            pixel_mean: options.pixel_mean,
            pixel_std: options.pixel_std,
        },
        embedding: EmbeddingSection { shape: emb },
        agent: options.agent.clone(),
        models: ModelsSection {
            encoder: ModelEntry {
                sha256: checksum(&encoder_file)?,
                file: encoder_file,
                data: encoder_data,
                variants: variant_entries(dir, &options.encoder_variants, &checksum)?,
            },
            decoder: DecoderEntry {
                sha256: checksum(&decoder_file)?,
                file: decoder_file,
                form,
                variants: variant_entries(dir, &options.decoder_variants, &checksum)?,
            },
            policy,
            srm,
            clicker,
        },
        gate: vec![],
    };
    manifest
        .validate()
        .with_context(|| format!("{}", dir.display()))?;
    Ok(manifest)
}

/// Reads `SHA256SUMS` (the `sha256sum` format) if the directory has one.
fn read_sha256sums(dir: &Path) -> Result<Vec<(String, String)>> {
    let path = dir.join("SHA256SUMS");
    if !path.exists() {
        return Ok(vec![]);
    }
    let bytes = crate::safe_read::read_regular(&path, "checksum list", 1 << 20)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some(sum), Some(file)) => {
                    Ok((sum.to_lowercase(), file.trim_start_matches('*').to_string()))
                }
                _ => bail!("{}: malformed line {l:?}", path.display()),
            }
        })
        .collect()
}

/// Writes a manifest for the models in `models_dir` into `out_dir/bundle.toml`, with file paths
/// relative to `out_dir` so that the bundle can live apart from read-only model directories.
pub fn write_bundle(models_dir: &Path, out_dir: &Path, options: &InferOptions) -> Result<PathBuf> {
    let mut manifest = infer_manifest(models_dir, options)?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create", out_dir.display()))?;
    // Paths in the manifest are relative to its own directory.
    let rebase = |f: &mut String| -> Result<()> {
        let full = models_dir.join(&*f);
        let parent = full.parent().unwrap_or(models_dir);
        let name = full.file_name().expect("model paths name a file");
        *f = relative_path(parent, out_dir)?
            .join(name)
            .to_string_lossy()
            .into_owned();
        Ok(())
    };
    rebase(&mut manifest.models.encoder.file)?;
    for d in &mut manifest.models.encoder.data {
        rebase(&mut d.file)?;
    }
    rebase(&mut manifest.models.decoder.file)?;
    let variants = manifest.models.encoder.variants.values_mut();
    for v in variants.chain(manifest.models.decoder.variants.values_mut()) {
        rebase(&mut v.file)?;
    }
    if let Some(p) = &mut manifest.models.policy {
        rebase(&mut p.file)?;
    }
    if let Some(s) = &mut manifest.models.srm {
        rebase(&mut s.file)?;
    }
    if let Some(c) = &mut manifest.models.clicker {
        rebase(&mut c.file)?;
    }
    let path = out_dir.join(MANIFEST_FILE);
    crate::safe_write::write_bytes_atomic(&path, manifest.to_toml()?.as_bytes())?;
    Ok(path)
}

/// The path that leads from `from_dir` to `target_dir`, e.g. `../../shared/models/x`.
fn relative_path(target_dir: &Path, from_dir: &Path) -> Result<PathBuf> {
    let target = target_dir
        .canonicalize()
        .with_context(|| format!("{}", target_dir.display()))?;
    let from = from_dir
        .canonicalize()
        .with_context(|| format!("{}", from_dir.display()))?;
    let common = target
        .components()
        .zip(from.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel = PathBuf::new();
    for _ in from.components().skip(common) {
        rel.push("..");
    }
    for c in target.components().skip(common) {
        rel.push(c);
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_walk_up_and_down() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("shared/models/x");
        let b = tmp.path().join("work/bundles/y");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(
            relative_path(&a, &b).unwrap(),
            PathBuf::from("../../../shared/models/x")
        );
        assert_eq!(relative_path(&a, &a).unwrap(), PathBuf::from(""));
    }
}
