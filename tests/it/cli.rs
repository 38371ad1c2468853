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
            "{}:2:1: server: unknown field `workerz`",
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

/// `sluice plugin check FILE`'s standard output; the check must succeed.
fn check_ok(file: &std::path::Path) -> String {
    let out = sluice()
        .args(["plugin", "check"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn plugin_check_reports_what_a_good_component_exports() {
    let stdout = check_ok(&crate::harness::fixture("testbed"));
    assert!(
        stdout.contains("ok, a sluice:plugin/plugin@0.1.0 component"),
        "{stdout}"
    );
    assert!(
        stdout.contains("exports: init, on-request, on-response"),
        "{stdout}"
    );
    assert!(stdout.contains("sluice:plugin/state@0.1.0"), "{stdout}");
    assert!(stdout.contains("\n  contract: 0.1.0\n"), "{stdout}");
    assert!(
        stdout.contains("\n  hooks: on-request, on-response\n"),
        "{stdout}"
    );

    // A component built against contract 0.2.0, declaring only `on-request`.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v02.wasm");
    std::fs::copy(crate::harness::fixture("v02"), &path).unwrap();
    std::fs::write(dir.path().join("v02.toml"), "hooks = \"request\"\n").unwrap();
    let stdout = check_ok(&path);
    assert!(
        stdout.contains(
            "ok, a sluice:plugin/plugin@0.2.0 component\n  contract: 0.2.0\n  hooks: on-request\n"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("sluice:plugin/crypto@0.2.0"), "{stdout}");

    // One declaring no hook at all: it loads, and the gateway never calls it.
    std::fs::write(dir.path().join("v02.toml"), "hooks = \"none\"\n").unwrap();
    let stdout = check_ok(&path);
    assert!(
        stdout.contains("\n  hooks: none: the gateway never calls it with this configuration\n"),
        "{stdout}"
    );
}

#[test]
fn plugin_check_names_each_kind_of_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(crate::harness::fixture("testbed")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "text.wasm",
            b"hello".to_vec(),
            "not a WebAssembly file (no \\0asm header)",
        ),
        (
            "empty.wasm",
            vec![],
            "the file is empty or truncated (0 bytes)",
        ),
        (
            "cut.wasm",
            good[..good.len() / 2].to_vec(),
            "cannot compile the component",
        ),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0".to_vec(),
            "a core WebAssembly module, not a component",
        ),
        (
            "other.wasm",
            std::fs::read(crate::harness::fixture("wrong-world")).unwrap(),
            "the component does not implement sluice:plugin/plugin@0.2.0 or @0.1.0 (the versions this gateway serves): component imports instance `sluice:plugin/host@0.2.0`, but a matching implementation was not found in the linker: instance export `log` has the wrong type",
        ),
    ];
    for (name, bytes, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = sluice()
            .args(["plugin", "check"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with(&format!("{}: {want}", path.display())),
            "{name}: {err}"
        );
    }
    // A config the plugin refuses, beside the file.
    let path = dir.path().join("picky.wasm");
    std::fs::write(&path, &good).unwrap();
    std::fs::write(dir.path().join("picky.toml"), "reject = true\n").unwrap();
    let out = sluice()
        .args(["plugin", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rejected its configuration"));
}
