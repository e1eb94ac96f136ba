//! `alignsam profile` on the tiny bundle: tract lists its nodes by operator, rten (the default
//! backend) prints its own report, ONNX Runtime is refused with a message that says where to go.
// The tests run the `alignsam` binary, which the `cli` feature builds.
#![cfg(feature = "cli")]

mod common;

fn profile(extra: &[&str]) -> (Option<i32>, String, String) {
    let out = common::alignsam()
        .arg("profile")
        .arg("--bundle")
        .arg(common::tiny_bundle())
        .args(["--threads", "1", "--runs", "2"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn tract_times_every_node_and_groups_them_by_operator() {
    let (code, stdout, stderr) = profile(&["--backend", "tract", "--model", "decoder"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("median over 2 runs"), "{stdout}");
    assert!(stdout.contains("slowest nodes:"), "{stdout}");
    let shares: f64 = stdout
        .lines()
        .take_while(|l| !l.contains("slowest nodes"))
        .filter_map(|l| l.trim().strip_suffix('%'))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    assert!(
        (shares - 100.0).abs() < 0.5,
        "operator shares sum to {shares}:\n{stdout}"
    );
}

#[test]
fn rten_prints_its_own_report_for_the_default_backend() {
    for model in ["encoder", "decoder"] {
        let (code, stdout, stderr) = profile(&["--backend", "rten", "--model", model]);
        assert_eq!(code, Some(0), "{model}: {stderr}");
        assert!(
            stdout.contains("on rten, one run after 3 warm-up runs"),
            "{stdout}"
        );
        // rten's report: "N ops evaluated in T ms", then time per operator.
        assert!(stdout.contains("ops evaluated in"), "{model}: {stdout}");
        assert!(stdout.contains('%'), "{model}: {stdout}");
    }
    let (code, _, stderr) = profile(&["--backend", "rten", "--json"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--json needs --backend tract"), "{stderr}");
}

#[test]
fn onnx_runtime_is_refused_with_the_way_to_profile_it() {
    let (code, _, stderr) = profile(&["--backend", "ort"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("enable_profiling"), "{stderr}");
}
