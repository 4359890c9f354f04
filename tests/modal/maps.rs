//! Maps through the real SDK's `Function.map` against the Modal-protocol
//! test server.

use std::time::Duration;

use modal_agents::spec::{BackendChoice, RetryPolicy};
use modal_agents::FunctionSpec;
use serde_json::json;

use crate::{real_sdk, runtime_on, ModalServer, TOKEN_SECRET};

const WORK: &str = r#"
def work(x):
    if x % 1000 == 7:
        raise ValueError(f"{x} is not allowed")
    return x * 2
"#;

const ODD: &str = r#"
def odd(x):
    if x == 1:
        return float("nan")
    if x == 2:
        return float("inf")
    if x == 3:
        v = 0
        for _ in range(200):
            v = [v]
        return v
    if x == 4:
        return {1, 2}
    return x
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_keep_every_result_in_its_own_slot() {
    let server = ModalServer::start(&real_sdk().await);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_on(&server, dir.path(), TOKEN_SECRET).await;
    // Retries on a map are Modal's client-side ones (FunctionRetryInputs):
    // the failures still end in their own slots.
    let spec = FunctionSpec::new("work", WORK)
        .backend(BackendChoice::Modal)
        .retry_policy(RetryPolicy {
            max_retries: 1,
            initial_delay_s: 0.0,
            backoff_coefficient: 1.0,
            max_delay_s: 1.0,
        });
    rt.deploy_function(spec).await.unwrap();
    let n = 10_000u64;
    let id = rt
        .run_parallel("work", (0..n).map(|i| json!(i)).collect())
        .await
        .unwrap();
    let record = rt.wait(id, Some(Duration::from_secs(600))).await.unwrap();
    let progress = record.progress.unwrap();
    assert_eq!(
        (progress.completed, progress.failed),
        (n - 10, 10),
        "{progress:?}"
    );
    let mut results = Vec::new();
    while (results.len() as u64) < n {
        let page = rt.results(id, results.len() as u64, 1000).await.unwrap();
        assert!(!page.results.is_empty());
        results.extend(page.results);
    }
    for (i, r) in results.iter().enumerate() {
        if i % 1000 == 7 {
            assert_eq!(r["error"]["type"], "ValueError", "slot {i}: {r}");
            assert_eq!(r["error"]["message"], format!("{i} is not allowed"));
        } else {
            assert_eq!(r, &json!(i * 2), "slot {i}");
        }
    }

    // Results JSON cannot carry (NaN, Infinity, too deep, not JSON at all)
    // are errors in their own slots; every other input keeps its own result.
    rt.deploy_function(FunctionSpec::new("odd", ODD).backend(BackendChoice::Modal))
        .await
        .unwrap();
    let id = rt
        .run_parallel("odd", (0..10).map(|i| json!(i)).collect())
        .await
        .unwrap();
    rt.wait(id, Some(Duration::from_secs(60))).await.unwrap();
    let page = rt.results(id, 0, 100).await.unwrap();
    assert_eq!(page.results.len(), 10, "{:?}", page.results);
    for (i, r) in page.results.iter().enumerate() {
        if (1..=4).contains(&i) {
            assert_eq!(r["error"]["type"], "ResultNotSerializable", "slot {i}: {r}");
        } else {
            assert_eq!(r, &json!(i), "slot {i}");
        }
    }

    // A starmap (each input the positional arguments) and a map of keyword
    // arguments, through the SDK's own map machinery.
    rt.deploy_function(
        FunctionSpec::new(
            "line",
            "def line(a, b=10, *, scale=1):\n    return (a * b + 1) * scale\n",
        )
        .backend(BackendChoice::Modal),
    )
    .await
    .unwrap();
    for (inputs, how, want) in [
        (
            vec![json!([1, 2]), json!([3]), json!([2, 0])],
            modal_agents::task::InputsAs::Args,
            [json!(3), json!(31), json!(1)],
        ),
        (
            vec![
                json!({"a": 2}),
                json!({"a": 1, "b": 1, "scale": 5}),
                json!({"a": 0}),
            ],
            modal_agents::task::InputsAs::Kwargs,
            [json!(21), json!(10), json!(1)],
        ),
    ] {
        let id = rt.run_parallel_as("line", inputs, how).await.unwrap();
        rt.wait(id, Some(Duration::from_secs(60))).await.unwrap();
        let page = rt.results(id, 0, 100).await.unwrap();
        assert_eq!(page.results, want, "{how:?}");
    }
    rt.shutdown().await;
}
