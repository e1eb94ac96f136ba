fn main() -> anyhow::Result<()> {
    for i in 0..5 {
        let src = image::open(format!("/tmp/rz/in{i}.png"))?.to_rgb8();
        let refi = image::open(format!("/tmp/rz/ref{i}.png"))?.to_rgb8();
        let t = std::time::Instant::now();
        let out = alignsam::sam::resize::resize_bilinear_like_pil(&src, refi.width(), refi.height());
        let el = t.elapsed();
        let n = out.as_raw().iter().zip(refi.as_raw()).filter(|(a,b)| a!=b).count();
        println!("{i}: differ {n} of {} in {el:?}", refi.as_raw().len());
    }
    Ok(())
}
