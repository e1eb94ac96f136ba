//! How good can the clicker's object map get from this bundle's embedding? Trains the clicker's
//! trunk alone (the object map, BCE + Dice) on the union of the training splits and prints the
//! held-out object-map IoU per dataset every 4 epochs: the probe behind docs/agent.md's "Limits"
//! (wider or finer trunks reach no more than about 0.6).
//!
//! ```sh
//! python3 models/davis_eval.py --data ../shared/data --out out/data/DAVIS2016
//! cargo run --release --example trunk_probe -- [WIDTH=32] [EPOCHS=12] [POOL=2] [LR=0.001]
//! ```
//!
//! POOL 2 is the clicker's 32 x 32 map, POOL 1 the full 64 x 64 embedding. Needs ../shared/data
//! and the embeddings cached by `alignsam train` or `eval` (computed here otherwise, slowly).

use std::path::PathBuf;

use alignsam::agent::{PatchGrid, Srm};
use alignsam::bundle::{Bundle, OpenOptions};
use alignsam::cache::EmbeddingCache;
use alignsam::dataset::Dataset;
use alignsam::engine::{BackendKind, EngineOptions, Precision};
use alignsam::train::clicker_net::{ClickerArch, ClickerNet};
use alignsam::train::imitation::{self, fit};
use anyhow::{Context, Result};
use rand::SeedableRng;

fn arg<T: std::str::FromStr>(n: usize, default: T) -> Result<T> {
    match std::env::args().nth(n) {
        Some(a) => a
            .parse()
            .ok()
            .with_context(|| format!("argument {n}: cannot parse {a:?}")),
        None => Ok(default),
    }
}

fn main() -> Result<()> {
    let (width, epochs, pool, lr) = (arg(1, 32)?, arg(2, 12)?, arg(3, 2)?, arg(4, 1e-3)?);
    let data = PathBuf::from("../shared/data");
    let sets = [
        data.join("saliency/SOD"),
        data.join("polyp/Kvasir-SEG"),
        data.join("polyp/CVC-ClinicDB"),
        PathBuf::from("out/data/DAVIS2016"),
    ];
    if let Some(missing) = sets.iter().find(|s| !s.is_dir()) {
        eprintln!(
            "skipped: {} is missing (../shared/data, and models/davis_eval.py for DAVIS)",
            missing.display()
        );
        return Ok(());
    }
    let bundle = Bundle::open(
        "models/small-sam".as_ref(),
        OpenOptions {
            precision: Precision::Fp32,
            ..OpenOptions::default()
        },
    )?;
    let backend = BackendKind::Tract.create(&EngineOptions { threads: 0 })?;
    let datasets = sets
        .iter()
        .map(|s| Dataset::open(s, "train"))
        .collect::<Result<Vec<_>>>()?;
    let cache = EmbeddingCache::new(
        &alignsam::cache::default_dir(),
        &bundle.manifest,
        Precision::Fp32,
        alignsam::source::InputLimits::default(),
    )?;
    let srm_file = &bundle.manifest.models.srm.as_ref().context("no SRM")?.file;
    let srm = Srm::load(backend.as_ref(), &bundle.path(srm_file), &bundle.manifest)?;
    let arch = ClickerArch {
        width,
        pool,
        ..ClickerArch::new(64, 64)
    };
    let images = imitation::prepare_images(
        &datasets,
        &cache,
        &srm,
        &arch,
        PatchGrid::new(10),
        &mut |_| {},
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (fit_idx, held) = imitation::split(images.len(), 0.1, &mut rng);
    let norm = imitation::measure_norm(&images, &fit_idx, &arch)?;
    let net = ClickerNet::new(arch, norm, 3)?;
    // Training's own trunk settings (`alignsam train --agent clicker`), the rate from the line.
    let cfg = fit::FitConfig {
        lr,
        ..imitation::ClickerConfig::new(1).trunk
    };
    let mut opt = fit::trunk_optimiser(&net, &cfg)?;
    let t = std::time::Instant::now();
    for e in 1..=epochs {
        let loss = fit::trunk_epoch(&net, &mut opt, &images, &fit_idx, 16, &mut rng)?;
        if e % 4 == 0 || e == epochs {
            let mut per = vec![];
            for name in ["SOD", "Kvasir-SEG", "CVC-ClinicDB", "DAVIS2016"] {
                let idx: Vec<usize> = held
                    .iter()
                    .copied()
                    .filter(|&i| images[i].id.starts_with(name))
                    .collect();
                per.push(format!(
                    "{name} {:.3}",
                    fit::object_iou(&net, &images, &idx)?
                ));
            }
            println!(
                "width {width} pool {pool} lr {lr} epoch {e}: loss {loss:.3}, held-out object map IoU {:.3} [{}], {:.0} s",
                fit::object_iou(&net, &images, &held)?,
                per.join(", "),
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
