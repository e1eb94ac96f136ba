use alignsam::bundle::{Bundle, OpenOptions};
use alignsam::engine::{BackendKind, EngineOptions, Precision};
use alignsam::agent::{Srm, PatchGrid};
use alignsam::cache::EmbeddingCache;
use alignsam::dataset::Dataset;
use alignsam::train::clicker_net::{ClickerArch, ClickerNet};
use alignsam::train::imitation::{self, fit};
use rand::SeedableRng;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let width: usize = args[1].parse().unwrap();
    let epochs: usize = args[2].parse().unwrap();
    let pool: usize = args[3].parse().unwrap();
    let lr: f64 = args[4].parse().unwrap();
    let bundle = Bundle::open("models/small-sam".as_ref(), OpenOptions { precision: Precision::Fp32, ..OpenOptions::default() }).unwrap();
    let backend = BackendKind::Tract.create(&EngineOptions { threads: 2 }).unwrap();
    let d = "/work/shared/data";
    let sets = [format!("{d}/saliency/SOD"), format!("{d}/polyp/Kvasir-SEG"), format!("{d}/polyp/CVC-ClinicDB"), "out/data/DAVIS2016".to_string()];
    let datasets: Vec<Dataset> = sets.iter().map(|s| Dataset::open(s.as_ref(), "train").unwrap()).collect();
    let cache = EmbeddingCache::new(&alignsam::cache::default_dir(), &bundle.manifest, Precision::Fp32).unwrap();
    let srm = Srm::load(backend.as_ref(), &bundle.path(&bundle.manifest.models.srm.as_ref().unwrap().file), &bundle.manifest).unwrap();
    let arch = ClickerArch { width, pool, ..ClickerArch::new(64, 64) };
    let images = imitation::prepare_images(&datasets, &cache, &srm, &arch, PatchGrid::new(10), &mut |_| {}).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (fit_idx, held) = imitation::split(images.len(), 0.1, &mut rng);
    let norm = imitation::measure_norm(&images, &fit_idx, &arch).unwrap();
    let net = ClickerNet::new(arch, norm, 3).unwrap();
    let cfg = fit::FitConfig { lr, batch: 16, teacher_weight: 0.0, dense_weight: 0.0, stop_weight: 0.0, quality_weight: 0.0, weight_decay: 1e-4 };
    let mut opt = fit::trunk_optimiser(&net, &cfg).unwrap();
    let t = std::time::Instant::now();
    for e in 1..=epochs {
        let loss = fit::trunk_epoch(&net, &mut opt, &images, &fit_idx, 16, &mut rng).unwrap();
        if e % 4 == 0 || e == epochs {
            let mut per = vec![];
            for name in ["SOD", "Kvasir-SEG", "CVC-ClinicDB", "DAVIS2016"] {
                let idx: Vec<usize> = held.iter().copied().filter(|&i| images[i].id.starts_with(name)).collect();
                per.push(format!("{name} {:.3}", fit::object_iou(&net, &images, &idx).unwrap()));
            }
            println!("w{width} p{pool} lr{lr} epoch {e} loss {loss:.3} all {:.3} [{}] {:.0}s", fit::object_iou(&net, &images, &held).unwrap(), per.join(", "), t.elapsed().as_secs_f64());
        }
    }
}
