//! The `sluice` binary: check-config exit codes and messages.

use std::process::Command;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

#[test]
fn check_config_accepts_a_good_file_and_rejects_a_bad_one_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[services.s]\ninstances = [\"127.0.0.1:1\"]\n[[routes]]\npath = \"/\"\nservice = \"s\"\n",
    )
    .unwrap();
    let out = sluice().arg("check-config").arg(&good).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 routes, 1 services)"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nworkerz = 2\n").unwrap();
    let out = sluice()
        .args(["run", "--check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "{}:2:1: [server] workerz: unknown field `workerz`",
            bad.display()
        )),
        "{err}"
    );
}

#[test]
fn the_embedded_default_is_valid() {
    let out = sluice().args(["run", "--check"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("<embedded default>: ok"));
}

#[test]
fn a_missing_file_is_named() {
    let out = sluice()
        .args(["check-config", "/nonexistent/sluice.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("/nonexistent/sluice.toml: cannot read config file"),
        "{err}"
    );
}
