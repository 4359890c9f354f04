//! The Python SDK (`python/`, import `agent_modal_client`) under pytest
//! against the real `modal-agents serve`: the seed's `ModalAgentClient` and
//! Basic Usage unchanged (waits, results, cancel, the monitor, typed errors,
//! volumes, 429/503 retries, webhook signature checks, sandboxes), the
//! synchronous `Client` and `AsyncClient` built from the environment with
//! their Modal-style function handles (remote, spawn, lazy ordered and
//! unordered maps, starmap, return_exceptions, a tqdm bar), deploys of
//! function objects, `TaskFailedError` with the remote traceback, timeouts
//! that are builtin `TimeoutError`s, log following, secrets and volumes, and
//! `mypy --strict` on the package (python/tests/test_typing.py).

mod support;

use std::path::PathBuf;
use std::process::Command;

const TOKEN: &str = "python-client-token-0123456789";
const BIN: &str = env!("CARGO_BIN_EXE_modal-agents");

#[test]
fn the_python_client_passes_its_tests_against_the_real_server() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = support::venv_bin("python");
    let dir = tempfile::tempdir().unwrap();
    // The seed's example asks for a T4: this server is told it has one.
    let (mut server, url) = support::serve_with(
        BIN,
        &dir.path().join("data"),
        TOKEN,
        &[("MODAL_AGENTS_GPUS", "0:Tesla T4")],
    );
    let out = Command::new(python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "python/tests",
        ])
        .current_dir(&root)
        // The package's source, so the test runs what is in the tree.
        .env("PYTHONPATH", root.join("python"))
        .env("MODAL_AGENTS_URL", &url)
        .env("MODAL_AGENTS_TOKEN", TOKEN)
        .output()
        .unwrap();
    support::stop(&mut server);
    let text = support::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("48 passed"), "{text}");
}

/// `GET /docs` in a real browser (Debian's chromium driven by Playwright):
/// the reference of every operation, search, "Try it" with and without the
/// token (a 422 naming the field, then a deploy), nothing fetched from
/// another host, the token never in a URL; `GET /` links to it
/// (tests/docs/browser_test.py).
#[test]
fn the_docs_page_works_in_a_real_browser() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = support::venv_bin("python");
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = support::serve(BIN, &dir.path().join("data"), TOKEN);
    let out = Command::new(python)
        .arg(root.join("tests/docs/browser_test.py"))
        .env("DOCS_URL", &url)
        .env("DOCS_TOKEN", TOKEN)
        .env("DOCS_SCREENSHOTS", dir.path())
        .output()
        .unwrap();
    support::stop(&mut server);
    let text = support::output_text(&out);
    assert!(out.status.success(), "{text}");
}
