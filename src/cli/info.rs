//! `alignsam info BUNDLE`: what a bundle holds and how long each model takes to load.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::args::EngineArgs;
use crate::agent::{Policy, Srm};
use crate::bundle::Bundle;
use crate::engine::{Backend, ModelSpec, onnx_io::IoDecl};
use crate::sam::{Decoder, Encoder};

/// Arguments of `alignsam info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Bundle directory (with bundle.toml, or with encoder.onnx and decoder.onnx).
    pub bundle: PathBuf,
    /// Backend, threads and checksum verification.
    #[command(flatten)]
    pub engine: EngineArgs,
}

fn print_io(kind: &str, decls: &[IoDecl]) -> Result<()> {
    for d in decls {
        outln!(
            "    {kind:<6} {:<18} {:<6} {}",
            d.name,
            d.elem_type.to_lowercase(),
            d.shape_string()
        );
    }
    Ok(())
}

fn describe(
    backend: &dyn Backend,
    bundle: &Bundle,
    role: &str,
    file: &str,
    spec: ModelSpec,
) -> Result<()> {
    let path = bundle.path(file);
    let model = backend.load(&path, &spec)?;
    let io = model.declared();
    let t = model.load_timings();
    outln!(
        "  {role}: {} ({:.1} MB, {:.2} M parameters, {} nodes, opset {}{})",
        path.display(),
        io.file_bytes as f64 / 1e6,
        io.parameters as f64 / 1e6,
        io.nodes,
        io.opset,
        if io.producer.is_empty() {
            String::new()
        } else {
            format!(", {}", io.producer)
        }
    );
    print_io("input", &io.inputs)?;
    print_io("output", &io.outputs)?;
    outln!(
        "    load   {:.0} ms ({} parse {:.0} ms + optimise {:.0} ms)",
        t.total().as_secs_f64() * 1e3,
        backend.name(),
        t.parse.as_secs_f64() * 1e3,
        t.optimise.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Runs `alignsam info`.
pub fn run(args: InfoArgs) -> Result<ExitCode> {
    let bundle = args.engine.open_bundle(&args.bundle)?;
    let backend = args.engine.backend()?;
    let m = &bundle.manifest;
    outln!("bundle {} ({})", m.name, bundle.dir.display());
    if !m.description.is_empty() {
        outln!("  {}", m.description);
    }
    if !bundle.from_file {
        outln!(
            "  (no bundle.toml: manifest inferred from the files; `alignsam bundle` writes one)"
        );
    } else if args.engine.no_verify {
        outln!("  checksums not verified (--no-verify)");
    } else {
        outln!("  checksums verified (sha256)");
    }
    outln!(
        "  image {}px longest side, mean {:?}, std {:?}; embedding {:?}; grid {}x{}, at most {} steps, step labels from {}",
        m.image.size,
        m.image.pixel_mean,
        m.image.pixel_std,
        m.embedding.shape,
        m.agent.grid,
        m.agent.grid,
        m.agent.max_steps,
        m.agent.step_labels.describe()
    );
    describe(
        backend.as_ref(),
        &bundle,
        "encoder",
        &m.models.encoder.file,
        Encoder::spec(m),
    )?;
    describe(
        backend.as_ref(),
        &bundle,
        "decoder",
        &m.models.decoder.file,
        Decoder::spec(m),
    )?;
    outln!("    form   {:?}", m.models.decoder.form);
    if let Some(p) = &m.models.policy {
        describe(
            backend.as_ref(),
            &bundle,
            "policy",
            &p.file,
            Policy::spec(m),
        )?;
    }
    if let Some(s) = &m.models.srm {
        describe(backend.as_ref(), &bundle, "srm", &s.file, Srm::spec(m)?)?;
        outln!(
            "    map    {}x{} over the encoder frame{}",
            s.map_size,
            s.map_size,
            if s.semantic {
                ", explicit branch (semantic map input)"
            } else {
                ", implicit branch"
            }
        );
    }
    print_variants(&bundle)?;
    Ok(ExitCode::SUCCESS)
}

/// The precision variants, and what the accuracy gate measured of each.
fn print_variants(bundle: &crate::bundle::Bundle) -> Result<()> {
    let m = &bundle.manifest;
    let files = [
        ("encoder", &m.models.encoder.variants),
        ("decoder", &m.models.decoder.variants),
    ];
    if files.iter().all(|(_, v)| v.is_empty()) && m.gate.is_empty() {
        return Ok(());
    }
    outln!("  precision variants (--precision; f16 needs no file: tract converts fp32 at load)");
    for (role, variants) in files {
        for (name, v) in variants {
            outln!("    {name:<9} {role} {}", v.file);
        }
    }
    for g in &m.gate {
        outln!(
            "    gate {:<9} {:<6} {:<8} mask IoU {:.4} (min {:.4}), embedding cosine {:.5}: {} ({})",
            g.precision,
            g.backend,
            g.arch,
            g.mask_iou,
            g.min_mask_iou,
            g.embedding_cosine,
            if g.passed() { "pass" } else { "refused" },
            g.images
        );
    }
    Ok(())
}
