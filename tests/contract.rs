//! The OpenAPI document is the contract: schemathesis 4 (every check, a
//! fixed seed, thousands of cases) fuzzes the real `modal-agents serve` from
//! its `/openapi.json` and finds nothing; tests/contract/schemathesis.toml
//! lists the few requests the schema cannot tell apart from accepted ones,
//! each with its reason.

mod support;

use std::path::PathBuf;
use std::process::Command;

const TOKEN: &str = "contract-test-token-0123456789";
const BIN: &str = env!("CARGO_BIN_EXE_modal-agents");

use support::venv_bin;

#[test]
fn schemathesis_finds_no_failure_in_the_api() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = support::serve_with(
        BIN,
        &dir.path().join("data"),
        TOKEN,
        &[
            ("MODAL_AGENTS_GPUS", "0:Tesla T4"),
            // Every create the fuzzer sends fits (past the capacity is a
            // documented 503, which the not-a-server-error check counts).
            ("MODAL_AGENTS_MAX_SANDBOXES", "100000"),
        ],
    );
    let out = Command::new(venv_bin("schemathesis"))
        .arg("--config-file")
        .arg(root.join("tests/contract/schemathesis.toml"))
        .args([
            "run",
            &format!("{url}/openapi.json"),
            "--checks",
            "all",
            "--no-color",
        ])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .current_dir(dir.path())
        .output()
        .unwrap();
    support::stop(&mut server);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated: u64 = text
        .lines()
        .find_map(|l| l.trim().split(" generated").next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no case count in {text}"));
    assert!(generated >= 1000, "only {generated} cases: {text}");
    assert!(!text.contains("failures"), "{text}");
}

#[test]
fn a_client_generated_from_the_document_runs_the_seed_flow() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = support::serve(BIN, &dir.path().join("data"), TOKEN);
    let fetch = "import sys, urllib.request as u; r = u.Request(sys.argv[1], \
                 headers={'authorization': 'Bearer ' + sys.argv[2]}); \
                 open('openapi.json', 'wb').write(u.urlopen(r).read())";
    let fetched = Command::new(venv_bin("python"))
        .args(["-c", fetch, &format!("{url}/openapi.json"), TOKEN])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(fetched.success());
    let generated = Command::new(venv_bin("openapi-python-client"))
        .args([
            "generate",
            "--path",
            "openapi.json",
            "--meta",
            "none",
            "--output-path",
            "client",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        generated.status.success() && dir.path().join("client/api").exists(),
        "{}{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    let out = Command::new(venv_bin("python"))
        .arg(root.join("tests/contract/generated_flow.py"))
        .current_dir(dir.path())
        .env("PYTHONPATH", dir.path())
        .env("MODAL_AGENTS_URL", &url)
        .env("MODAL_AGENTS_TOKEN", TOKEN)
        .output()
        .unwrap();
    support::stop(&mut server);
    let text = support::output_text(&out);
    assert!(out.status.success() && text.contains("all ok"), "{text}");
}
