//! Config errors, checked against golden files: `config/NAME.toml` must fail to load with
//! exactly the text in `config/NAME.err` (set `BLESS=1` to rewrite the goldens).

use std::path::Path;

use sluice::config::Config;

#[test]
fn bad_configs_fail_with_the_golden_messages() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/it/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let name = format!("{}", path.file_name().unwrap().to_string_lossy());
        let error = match Config::parse(&text, &name) {
            Ok(_) => panic!("{name} loaded but should fail"),
            Err(e) => format!("{e}\n"),
        };
        let golden = path.with_extension("err");
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&golden, &error).unwrap();
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} is missing (run with BLESS=1)", golden.display()));
        assert_eq!(error, want, "{name}");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} golden configs found");
}

#[test]
fn the_example_configs_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
