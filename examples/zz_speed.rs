use alignsam::train::clicker_net::*;
use alignsam::train::nets::InputNorm;
use candle_core::{Device, Tensor, DType};
use std::time::Instant;
fn main() {
    let arch = ClickerArch::new(64, 64);
    let net = ClickerNet::new(arch, InputNorm::identity(64), 1).unwrap();
    for &n in &[16usize, 64] {
        let e = Tensor::randn(0f32, 1.0, (n, 64, 64, 64), &Device::Cpu).unwrap();
        let t = Instant::now();
        let x = net.prepare(&e).unwrap();
        let tr = net.trunk(&x).unwrap();
        let loss = tr.object.sqr().unwrap().mean_all().unwrap();
        let _g = loss.backward().unwrap();
        println!("trunk n={n}: {:.2} ms/image", t.elapsed().as_secs_f64()/n as f64*1e3);
        let pooled = net.pool(&TrunkOut{features: tr.features.detach(), object: tr.object.detach()}).unwrap();
        let s = 16;
        let st = StateBatch {
            mask_prob: Tensor::rand(0f32, 1.0, (n,s,s,1), &Device::Cpu).unwrap(),
            clicks: Tensor::zeros((n,s,s,2), DType::F32, &Device::Cpu).unwrap(),
            prior: Tensor::rand(0f32, 1.0, (n,s,s,1), &Device::Cpu).unwrap(),
            scalars: Tensor::rand(0f32, 1.0, (n,2), &Device::Cpu).unwrap(),
        };
        let t = Instant::now();
        for _ in 0..5 {
            let out = net.head(&pooled, &st).unwrap();
            let loss = (out.scores.sqr().unwrap().mean_all().unwrap() + out.stop.sqr().unwrap().mean_all().unwrap()).unwrap();
            let _g = loss.backward().unwrap();
        }
        println!("head n={n}: {:.3} ms/state", t.elapsed().as_secs_f64()/5.0/n as f64*1e3);
    }
}
