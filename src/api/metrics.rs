//! Request metrics, served in the Prometheus text format with the runtime's
//! own gauges.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::ApiState;
use crate::sync::Recover;
use crate::task::TaskStatus;

#[derive(Default)]
struct Series {
    count: u64,
    seconds: f64,
}

/// Counters by method, route and status.
#[derive(Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), Series>>,
}

/// Middleware: counts every request and its duration.
pub(crate) async fn track(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Labels come from a closed set, whatever a caller sends: methods the
    // API does not use are "other", unmatched routes "unmatched".
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS") => m.to_owned(),
        _ => "other".to_owned(),
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let key = (method, route, response.status().as_u16());
    let mut requests = state.metrics.requests.lock().recover();
    let series = requests.entry(key).or_default();
    series.count += 1;
    series.seconds += started.elapsed().as_secs_f64();
    response
}

impl Metrics {
    /// The Prometheus exposition.
    pub(crate) fn render(&self, state: &ApiState) -> String {
        let mut out = String::new();
        out.push_str("# HELP modal_agents_http_requests_total HTTP requests answered.\n");
        out.push_str("# TYPE modal_agents_http_requests_total counter\n");
        let requests = self.requests.lock().recover();
        for ((method, route, status), s) in requests.iter() {
            let _ = writeln!(
                out,
                "modal_agents_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        out.push_str(
            "# HELP modal_agents_http_request_seconds_sum Time spent answering, by route.\n",
        );
        out.push_str("# TYPE modal_agents_http_request_seconds_sum counter\n");
        for ((method, route, status), s) in requests.iter() {
            let _ = writeln!(
                out,
                "modal_agents_http_request_seconds_sum{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {:.6}",
                s.seconds
            );
        }
        drop(requests);
        out.push_str(
            "# HELP modal_agents_tasks Tasks by status.\n# TYPE modal_agents_tasks gauge\n",
        );
        for status in TaskStatus::ALL {
            let (_, n) = state.runtime.tasks(Some(status), 0, 0);
            let _ = writeln!(out, "modal_agents_tasks{{status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP modal_agents_functions Deployed functions.\n# TYPE modal_agents_functions gauge\n");
        let _ = writeln!(
            out,
            "modal_agents_functions {}",
            state.runtime.functions().len()
        );
        out.push_str(
            "# HELP modal_agents_agents Registered agents.\n# TYPE modal_agents_agents gauge\n",
        );
        let _ = writeln!(
            out,
            "modal_agents_agents {}",
            state.runtime.agents().list().len()
        );
        out.push_str(
            "# HELP modal_agents_mcp_sessions Live MCP sessions at /mcp.\n# TYPE modal_agents_mcp_sessions gauge\n",
        );
        let _ = writeln!(out, "modal_agents_mcp_sessions {}", state.mcp.open());
        let (delivered, failed) = state.webhooks.counts();
        out.push_str(
            "# HELP modal_agents_webhook_deliveries_total Webhook deliveries by outcome.\n",
        );
        out.push_str("# TYPE modal_agents_webhook_deliveries_total counter\n");
        let _ = writeln!(
            out,
            "modal_agents_webhook_deliveries_total{{outcome=\"delivered\"}} {delivered}"
        );
        let _ = writeln!(
            out,
            "modal_agents_webhook_deliveries_total{{outcome=\"failed\"}} {failed}"
        );
        out
    }
}
