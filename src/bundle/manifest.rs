//! `bundle.toml`: what a model bundle holds, with its checksums and the numbers the runtime needs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::engine::Precision;

/// The manifest format this build reads and writes.
pub const FORMAT: u32 = 1;

/// The file name of a bundle's manifest.
pub const MANIFEST_FILE: &str = "bundle.toml";

/// A bundle manifest. Unknown keys are rejected so that a typo is an error, not a silent default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version (1).
    pub format: u32,
    /// A short name ("mobilesam", "sam-vit-b", ...).
    pub name: String,
    /// Where the weights came from; shown by `alignsam info`.
    #[serde(default)]
    pub description: String,
    /// Encoder input geometry and pixel statistics.
    pub image: ImageSection,
    /// Shape of the image embedding the encoder produces and the decoder consumes.
    pub embedding: EmbeddingSection,
    /// The agent's action grid and step limit.
    #[serde(default)]
    pub agent: AgentSection,
    /// The model files.
    pub models: ModelsSection,
    /// Accuracy-gate results of the precision variants (`[[gate]]`), written by `alignsam gate
    /// --record`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gate: Vec<GateRecord>,
}

/// `[image]`: how images become encoder input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// The longest side after resizing, and the side of the square (padded) encoder input.
    pub size: usize,
    /// Per-channel RGB mean on the 0-255 scale.
    pub pixel_mean: [f32; 3],
    /// Per-channel RGB standard deviation on the 0-255 scale.
    pub pixel_std: [f32; 3],
}

/// `[embedding]`: the image embedding's shape, channels x height x width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSection {
    /// `[256, 64, 64]` for every SAM release and MobileSAM.
    pub shape: [usize; 3],
}

impl EmbeddingSection {
    /// Side of the decoder's low-resolution mask (and `mask_input`): 4x the embedding grid.
    pub fn low_res_size(&self) -> usize {
        self.shape[1] * 4
    }
}

/// The most steps a loop may take, in a bundle or from the command line: a step runs the decoder
/// on every point so far, so a frame's cost grows with the square of the steps (100 steps took
/// 2.5 s an image with the small SAM, 400 took 27 s), and with the no-repeat guard a 10 x 10
/// grid has 200 actions in all.
pub const MAX_STEPS: usize = 200;

/// `[agent]`: the prompting loop's action space and bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The agent chooses among the centres of a `grid` x `grid` patch grid.
    pub grid: usize,
    /// At most this many steps after the two start points (the paper uses 15).
    pub max_steps: usize,
    /// Which agent picks the clicks (absent: `paper`, the policy with SRM labels).
    #[serde(default, skip_serializing_if = "AgentKind::is_paper")]
    pub kind: AgentKind,
    /// Which SRM map labels a step's point (absent: `state`, the paper's). A policy trained with
    /// one source of labels is run with the same.
    #[serde(default, skip_serializing_if = "StepLabels::is_paper")]
    pub step_labels: StepLabels,
    /// The patch most often on the object in the training split: a constant learned from data,
    /// the `best-patch` baseline a learned agent must beat (written by `alignsam train`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_patch: Option<usize>,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            grid: 10,
            max_steps: 15,
            kind: AgentKind::Paper,
            step_labels: StepLabels::State,
            best_patch: None,
        }
    }
}

/// Which agent a bundle runs by default (`[agent] kind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentKind {
    /// The paper's: a policy picks the patch (`[models.policy]`), the SRM labels the point.
    #[default]
    Paper,
    /// The learned clicker (`[models.clicker]`): trained by imitation of the ground-truth oracle,
    /// it picks the patch and the label, and may stop.
    Clicker,
}

impl AgentKind {
    /// The manifest's and the command line's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Paper => "paper",
            AgentKind::Clicker => "clicker",
        }
    }
}

impl std::str::FromStr for AgentKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "paper" => Ok(AgentKind::Paper),
            "clicker" => Ok(AgentKind::Clicker),
            _ => Err(format!(
                "unknown agent kind {s:?} (expected one of: {})",
                AgentKind::NAMES.join(", ")
            )),
        }
    }
}

impl AgentKind {
    /// Every value, as written in bundle.toml.
    pub const NAMES: [&str; 2] = ["paper", "clicker"];

    fn is_paper(&self) -> bool {
        *self == AgentKind::Paper
    }

    /// The name in bundle.toml.
    pub fn name(self) -> &'static str {
        match self {
            AgentKind::Paper => "paper",
            AgentKind::Clicker => "clicker",
        }
    }
}

/// Which SRM map labels a step's point (`[agent] step_labels`; `--step-labels`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepLabels {
    /// The SRM on the step's state `s_t = E * M_{t-1}` (the paper). Where the current mask is
    /// near 0 the state is near 0 too, so the SRM can hardly call a point outside the mask
    /// foreground: steps trim the mask more than they grow it.
    #[default]
    State,
    /// The SRM's map on `s_0 = E`, the one that placed the start points, computed once per
    /// image: labels that do not depend on the current mask, the role the paper's explicit
    /// (CLIP) branch plays.
    Embedding,
}

impl StepLabels {
    /// Every value, as written in bundle.toml and on the command line.
    pub const NAMES: [&str; 2] = ["state", "embedding"];

    fn is_paper(&self) -> bool {
        *self == StepLabels::State
    }

    /// Where the labels come from, in words (for reports).
    pub fn describe(self) -> &'static str {
        match self {
            StepLabels::State => "the SRM on the step's state E * M (the paper)",
            StepLabels::Embedding => "the SRM's map on the embedding E alone",
        }
    }
}

impl std::str::FromStr for StepLabels {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "state" => Ok(StepLabels::State),
            "embedding" => Ok(StepLabels::Embedding),
            _ => Err(format!(
                "unknown step label source {s:?} (expected one of: {})",
                StepLabels::NAMES.join(", ")
            )),
        }
    }
}

/// `[models]`: every file of the bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSection {
    /// SAM image encoder: `image [1,3,S,S]` -> `image_embeddings [1,C,H,W]`.
    pub encoder: ModelEntry,
    /// SAM prompt encoder + mask decoder in the `SamOnnxModel` interface.
    pub decoder: DecoderEntry,
    /// The agent's policy (optional until an agent is attached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyEntry>,
    /// The semantic recalibration module (optional until an agent is attached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srm: Option<SrmEntry>,
    /// The learned clicker (the agent of `[agent] kind = "clicker"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clicker: Option<ClickerEntry>,
}

/// The clicker file (see [`crate::agent::clicker`] for its interface).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickerEntry {
    /// Path, relative to the manifest's directory (or absolute).
    pub file: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// Side of its score maps over the encoder frame.
    pub map_size: usize,
    /// The clicker stops when its stop probability reaches this (written by training, chosen
    /// on held-out training images; above 1: never).
    #[serde(default = "ClickerEntry::default_stop_threshold")]
    pub stop_threshold: f32,
}

impl ClickerEntry {
    fn default_stop_threshold() -> f32 {
        0.5
    }
}

/// A model file and its checksum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Path, relative to the manifest's directory (or absolute).
    pub file: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// The external data files the model's weights are in (SAM ViT-H's encoder is over
    /// protobuf's 2 GiB limit), each with its checksum: every byte the model needs is verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<DataFile>,
    /// Quantised variants of the file, by precision name (`int8`, `int8-qdq`), written by
    /// `calibration/quantize.py`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, VariantFile>,
}

/// A precision variant of a model: another file with the same interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantFile {
    /// Path, relative to the manifest's directory (or absolute).
    pub file: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
}

/// What `alignsam gate --record` measured for one precision on one backend, against the fp32
/// reference with the same prompts: the runtime refuses a variant without a passing record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateRecord {
    /// The precision (`int8`, `int8-qdq`, `f16`).
    pub precision: String,
    /// The backend it ran on (`tract`, `rten`, `ort`).
    pub backend: String,
    /// The CPU architecture it ran on (`x86_64`, `aarch64`).
    pub arch: String,
    /// The CPU's int8 class ([`cpu_class`]: `avx512vnni`, `avxvnni`, `avx2`, `i8mm`, `dotprod`,
    /// ...). Engines pick their int8 kernels by it, and they differ in more than speed: without
    /// VNNI, AVX2's u8 x i8 products saturate in 16 bits, which wrecks some int8 models (rten's
    /// int8 small-sam encoder, ONNX Runtime's int8-qdq one: mask IoU 0.00 and 0.50 against fp32).
    /// A record applies only on a CPU of its class; one without it (written before the field)
    /// applies nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// The images of the gate and the loop's length, as `DATASET:SPLIT:COUNT images:STEPS steps`.
    pub images: String,
    /// Mean cosine similarity of the embeddings to the reference's.
    pub embedding_cosine: f64,
    /// Mean absolute difference of the final low-resolution logits from the reference's.
    pub logit_mae: f64,
    /// Mean IoU of the final masks after the whole prompting loop with the reference's prompts.
    pub mask_iou: f64,
    /// The lowest IoU of one image.
    pub min_mask_iou: f64,
    /// fp32 time / this precision's time for the same work (encoder and every decoder step of
    /// the gate's images) on the same backend, measured in the same gate run. Emulated CPUs
    /// (qemu) make this meaningless: record on the real board.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speedup: Option<f64>,
}

/// The CPU in words, for the figures it measured: the model name (Linux's /proc/cpuinfo, where
/// there is one), its int8 class (see [`cpu_class`]) and the cores available.
pub fn cpu_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model} ({}, {cores} cores)", cpu_class())
}

/// This CPU's int8 class, the part of the CPU that decides which int8 kernels an engine runs: on
/// x86_64 `avx512vnni`, `avxvnni`, `avx2` or `x86_64`; on aarch64 `i8mm`, `dotprod` or `neon`;
/// elsewhere the architecture's name.
#[cfg(target_arch = "x86_64")]
pub fn cpu_class() -> &'static str {
    if std::arch::is_x86_feature_detected!("avx512vnni") {
        "avx512vnni"
    } else if std::arch::is_x86_feature_detected!("avxvnni") {
        "avxvnni"
    } else if std::arch::is_x86_feature_detected!("avx2") {
        "avx2"
    } else {
        "x86_64"
    }
}

/// This CPU's int8 class (see the x86_64 version).
#[cfg(target_arch = "aarch64")]
pub fn cpu_class() -> &'static str {
    if std::arch::is_aarch64_feature_detected!("i8mm") {
        "i8mm"
    } else if std::arch::is_aarch64_feature_detected!("dotprod") {
        "dotprod"
    } else {
        "neon"
    }
}

/// This CPU's int8 class (see the x86_64 version): the architecture's name.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn cpu_class() -> &'static str {
    std::env::consts::ARCH
}

impl GateRecord {
    /// What makes two records the same measurement (precision, backend, architecture, CPU
    /// class): a new one replaces the old.
    pub fn measurement(&self) -> (String, String, String, Option<String>) {
        (
            self.precision.clone(),
            self.backend.clone(),
            self.arch.clone(),
            self.cpu.clone(),
        )
    }

    /// Whether the record was measured on a CPU like this one: same architecture and
    /// [`cpu_class`].
    pub fn applies_here(&self) -> bool {
        self.arch == std::env::consts::ARCH && self.cpu.as_deref() == Some(cpu_class())
    }

    /// Whether the record lets the runtime use the variant (mean mask IoU at least
    /// [`crate::bundle::GATE_MIN_MASK_IOU`]).
    pub fn passed(&self) -> bool {
        self.mask_iou >= crate::bundle::GATE_MIN_MASK_IOU
    }
}

/// An external data file of a model, and its checksum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    /// Path, relative to the manifest's directory (or absolute).
    pub file: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
}

/// Which outputs a decoder export has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecoderForm {
    /// `masks` (full size, needs `orig_im_size`), `iou_predictions`, `low_res_masks`: the export of
    /// `segment_anything/scripts/export_onnx_model.py`.
    Standard,
    /// `iou_predictions` and `low_res_masks` only: no full-size upscaling inside the graph.
    LowRes,
}

/// The decoder file, and which of the two forms it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderEntry {
    /// Path, relative to the manifest's directory (or absolute).
    pub file: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// Its outputs: `standard` or `low-res`.
    pub form: DecoderForm,
    /// Quantised variants of the file, by precision name (see [`ModelEntry::variants`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, VariantFile>,
}

/// The policy file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    /// Path, relative to the manifest's directory (or absolute).
    pub file: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// Whether the file also outputs a state value (`value [1,1]`).
    #[serde(default)]
    pub value_head: bool,
}

/// The SRM file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrmEntry {
    /// Path, relative to the manifest's directory (or absolute).
    pub file: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// Side of the foreground probability map it outputs, over the encoder frame (the grid size,
    /// the embedding size, or anything between 1 and the embedding size).
    pub map_size: usize,
    /// Explicit branch: whether it takes a `semantic [1,1,H,W]` text-image similarity map.
    #[serde(default)]
    pub semantic: bool,
}

impl Manifest {
    /// Parses a manifest and checks its numbers; errors name the file.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let m: Manifest = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "{}: malformed manifest: {}",
                path.display(),
                one_line(&e.to_string())
            )
        })?;
        m.validate()
            .with_context(|| format!("{}", path.display()))?;
        Ok(m)
    }

    /// Reads and parses a manifest file.
    pub fn read(path: &Path) -> Result<Self> {
        // Manifests are a few hundred bytes; 1 MiB is generous and keeps /dev/zero out.
        let bytes = crate::safe_read::read_regular(path, "manifest", 1 << 20)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{}: manifest is not UTF-8 text", path.display()))?;
        Self::parse(&text, path)
    }

    /// Serialises to TOML.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }

    /// Writes the manifest to `path` atomically: a reader (a run opening the bundle) sees the
    /// old file or the new one, never half of one.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::safe_write::write_bytes_atomic(path, self.to_toml()?.as_bytes())
    }

    /// Adds a gate record, replacing the one of the same measurement
    /// ([`GateRecord::measurement`]); the records stay sorted by it.
    pub fn record_gate(&mut self, record: GateRecord) {
        self.gate
            .retain(|g| g.measurement() != record.measurement());
        self.gate.push(record);
        self.gate.sort_by_key(GateRecord::measurement);
    }

    /// Checks that the numbers make sense together.
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            bail!(
                "manifest format {} is not supported (this build reads format {FORMAT})",
                self.format
            );
        }
        if self.image.size == 0 {
            bail!("[image] size must be positive");
        }
        if self.image.pixel_std.iter().any(|&s| s.is_nan() || s <= 0.0) {
            bail!(
                "[image] pixel_std must be positive, got {:?}",
                self.image.pixel_std
            );
        }
        if self.image.pixel_mean.iter().any(|m| !m.is_finite()) {
            bail!(
                "[image] pixel_mean must be finite, got {:?}",
                self.image.pixel_mean
            );
        }
        if self.embedding.shape.contains(&0) {
            bail!(
                "[embedding] shape must be positive, got {:?}",
                self.embedding.shape
            );
        }
        if self.agent.max_steps > MAX_STEPS {
            bail!(
                "[agent] max_steps must be at most {MAX_STEPS} (each step decodes every point so far), got {}",
                self.agent.max_steps
            );
        }
        if self.agent.grid == 0 || self.agent.grid > self.embedding.shape[1] {
            bail!(
                "[agent] grid must be between 1 and the embedding side {}, got {}",
                self.embedding.shape[1],
                self.agent.grid
            );
        }
        for (role, size) in [
            ("srm", self.models.srm.as_ref().map(|s| s.map_size)),
            ("clicker", self.models.clicker.as_ref().map(|c| c.map_size)),
        ] {
            if let Some(size) = size
                && (size == 0 || size > self.embedding.shape[1])
            {
                bail!(
                    "[models.{role}] map_size must be between 1 and the embedding side {}, got {size}",
                    self.embedding.shape[1],
                );
            }
        }
        if let Some(c) = &self.models.clicker
            && (c.stop_threshold.is_nan() || c.stop_threshold < 0.0)
        {
            bail!(
                "[models.clicker] stop_threshold must be a number >= 0, got {}",
                c.stop_threshold
            );
        }
        if self.agent.kind == AgentKind::Clicker && self.models.clicker.is_none() {
            bail!("[agent] kind = \"clicker\" needs a [models.clicker]");
        }
        if let Some(p) = self.agent.best_patch
            && p >= self.agent.grid * self.agent.grid
        {
            bail!(
                "[agent] best_patch must be a patch of the {0}x{0} grid (0 to {1}), got {p}",
                self.agent.grid,
                self.agent.grid * self.agent.grid - 1
            );
        }
        for (role, variants) in [
            ("encoder", &self.models.encoder.variants),
            ("decoder", &self.models.decoder.variants),
        ] {
            for name in variants.keys() {
                match name.parse::<Precision>() {
                    Ok(p) if p.has_own_file() => {}
                    _ => bail!(
                        "[models.{role}.variants.{name}]: a variant is named by its precision, int8 or int8-qdq"
                    ),
                }
            }
        }
        for g in &self.gate {
            if let Err(e) = g.precision.parse::<Precision>() {
                bail!("[[gate]]: {e}");
            }
        }
        for (role, sha) in self.checksums() {
            if sha.len() != 64
                || !sha
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                bail!("[models.{role}] sha256 must be 64 lower-case hex digits, got {sha:?}");
            }
        }
        Ok(())
    }

    /// (role, file, sha256) for every file in the manifest: models and their external data.
    pub fn files(&self) -> Vec<(&'static str, &str, &str)> {
        let m = &self.models;
        let mut v = vec![(
            "encoder",
            m.encoder.file.as_str(),
            m.encoder.sha256.as_str(),
        )];
        for d in &m.encoder.data {
            v.push(("encoder data", d.file.as_str(), d.sha256.as_str()));
        }
        v.extend([(
            "decoder",
            m.decoder.file.as_str(),
            m.decoder.sha256.as_str(),
        )]);
        for f in m.encoder.variants.values() {
            v.push(("encoder variant", f.file.as_str(), f.sha256.as_str()));
        }
        for f in m.decoder.variants.values() {
            v.push(("decoder variant", f.file.as_str(), f.sha256.as_str()));
        }
        if let Some(p) = &m.policy {
            v.push(("policy", p.file.as_str(), p.sha256.as_str()));
        }
        if let Some(s) = &m.srm {
            v.push(("srm", s.file.as_str(), s.sha256.as_str()));
        }
        if let Some(c) = &m.clicker {
            v.push(("clicker", c.file.as_str(), c.sha256.as_str()));
        }
        v
    }

    fn checksums(&self) -> Vec<(&'static str, &str)> {
        self.files().into_iter().map(|(r, _, s)| (r, s)).collect()
    }
}

/// TOML errors span several lines (a source excerpt); keep the message on one.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn gate_record(precision: &str, backend: &str, mask_iou: f64) -> GateRecord {
        GateRecord {
            precision: precision.into(),
            backend: backend.into(),
            arch: "x86_64".into(),
            cpu: Some("avx2".into()),
            images: "demo:eval:3 images:15 steps".into(),
            embedding_cosine: 0.999,
            logit_mae: 0.01,
            mask_iou,
            min_mask_iou: mask_iou,
            speedup: None,
        }
    }

    #[test]
    fn a_gate_record_replaces_the_same_measurement_only_and_they_stay_sorted() {
        let mut m = Manifest::parse(SAMPLE, Path::new("bundle.toml")).unwrap();
        m.gate.clear();
        m.record_gate(gate_record("int8", "tract", 0.97));
        m.record_gate(gate_record("f16", "tract", 0.99));
        m.record_gate(gate_record("int8", "rten", 0.96));
        // The same precision, backend, architecture and CPU class: replaced.
        m.record_gate(gate_record("int8", "tract", 0.90));
        let listed: Vec<(&str, &str, f64)> = m
            .gate
            .iter()
            .map(|g| (g.precision.as_str(), g.backend.as_str(), g.mask_iou))
            .collect();
        assert_eq!(
            listed,
            [
                ("f16", "tract", 0.99),
                ("int8", "rten", 0.96),
                ("int8", "tract", 0.90)
            ]
        );
        // Another CPU class is another measurement.
        let mut other_cpu = gate_record("int8", "tract", 0.98);
        other_cpu.cpu = Some("avx512vnni".into());
        m.record_gate(other_cpu);
        assert_eq!(m.gate.len(), 4);
    }

    pub(crate) const SAMPLE: &str = r#"
format = 1
name = "test"

[image]
size = 1024
pixel_mean = [123.675, 116.28, 103.53]
pixel_std = [58.395, 57.12, 57.375]

[embedding]
shape = [256, 64, 64]

[agent]
grid = 10
max_steps = 15

[models.encoder]
file = "encoder.onnx"
sha256 = "fd949a194a191f7b7ff712791c178041b9e38472068f13687558c2b81d594e35"

[models.decoder]
file = "decoder.onnx"
sha256 = "e5662634ac74355bc4f28c3d0db06d0a8db286c5c472ad40f199eaf9c14c6a65"
form = "standard"
"#;

    #[test]
    fn parses_and_round_trips() {
        let m = Manifest::parse(SAMPLE, Path::new("b/bundle.toml")).unwrap();
        assert_eq!(m.embedding.low_res_size(), 256);
        assert_eq!(m.models.decoder.form, DecoderForm::Standard);
        let again = Manifest::parse(&m.to_toml().unwrap(), Path::new("x")).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn step_labels_default_to_the_papers_and_are_written_only_when_not() {
        let paper = Manifest::parse(SAMPLE, Path::new("b/bundle.toml")).unwrap();
        assert_eq!(paper.agent.step_labels, StepLabels::State);
        assert!(!paper.to_toml().unwrap().contains("step_labels"));
        let text = SAMPLE.replace(
            "max_steps = 15",
            "max_steps = 15\nstep_labels = \"embedding\"",
        );
        let m = Manifest::parse(&text, Path::new("b/bundle.toml")).unwrap();
        assert_eq!(m.agent.step_labels, StepLabels::Embedding);
        let written = m.to_toml().unwrap();
        assert!(written.contains("step_labels = \"embedding\""), "{written}");
        assert_eq!(Manifest::parse(&written, Path::new("x")).unwrap(), m);
    }

    #[test]
    fn malformed_manifests_name_the_file_and_the_problem() {
        let cases = [
            (
                SAMPLE.replace("size = 1024", "size = \"big\""),
                "malformed manifest",
            ),
            (
                SAMPLE.replace("grid = 10", "grdi = 10"),
                "unknown field `grdi`",
            ),
            (
                SAMPLE.replace("pixel_std = [58.395", "pixel_std = [0.0"),
                "pixel_std must be positive",
            ),
            (
                SAMPLE.replace("format = 1", "format = 7"),
                "format 7 is not supported",
            ),
            (SAMPLE.replace("fd949a19", "FD949A19"), "64 lower-case hex"),
            (
                SAMPLE.replace("form = \"standard\"", "form = \"tiny\""),
                "malformed manifest",
            ),
            (
                SAMPLE.replace("grid = 10", "grid = 0"),
                "grid must be between",
            ),
            (
                SAMPLE.replace("max_steps = 15", "max_steps = 15\nstep_labels = \"mask\""),
                "unknown variant `mask`",
            ),
            (
                SAMPLE.replace("max_steps = 15", "max_steps = 1000000000000"),
                "max_steps must be at most 200",
            ),
            (
                SAMPLE.replace("max_steps = 15", "max_steps = 15\nkind = \"clicker\""),
                "needs a [models.clicker]",
            ),
            (
                SAMPLE.replace("max_steps = 15", "max_steps = 15\nbest_patch = 100"),
                "best_patch must be a patch of the 10x10 grid",
            ),
        ];
        for (text, expected) in cases {
            let err = format!(
                "{:#}",
                Manifest::parse(&text, Path::new("b/bundle.toml")).unwrap_err()
            );
            assert!(err.contains("b/bundle.toml"), "{err}");
            assert!(err.contains(expected), "{err} should mention {expected}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
