use alignsam::agent::*;
use alignsam::bundle::{Bundle, OpenOptions};
use alignsam::engine::{BackendKind, EngineOptions, Precision};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bundle = Bundle::open(args[1].as_ref(), OpenOptions { precision: Precision::Fp32, allow_ungated: true, ..OpenOptions::default() }).unwrap();
    let backend = BackendKind::Tract.create(&EngineOptions { threads: 2 }).unwrap();
    let agent = Agent::load(&bundle, backend.as_ref()).unwrap();
    for name in &args[2..] {
        let img = alignsam::source::load_rgb(name.as_ref()).unwrap();
        let enc = agent.encode(&img).unwrap();
        let ep = agent.start(&enc.embedding, &enc.geometry, None, None, &LoopOptions::default()).unwrap();
        let view = ep.view(agent.grid, true);
        let out = agent.clicker.as_ref().unwrap().run(&view).unwrap();
        println!("{name}: stop {:.2} quality {:.2} decoder iou {:.2}", out.stop, out.quality, ep.current().iou);
        let s = out.object.height;
        for y in 0..s { let row: String = (0..s).map(|x| { let v = out.object.data[y*s+x]; if v > 0.75 {'#'} else if v > 0.5 {'+'} else if v > 0.25 {'.'} else {' '} }).collect(); println!("|{row}|"); }
    }
}
