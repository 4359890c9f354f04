//! `GET /docs`: an interactive reference of `/openapi.json` (one page,
//! written here, nothing fetched from elsewhere), and `GET /`: where things
//! are. Both are static and open (a browser's navigation carries no token;
//! the page asks for one before it reads the API).

use std::sync::LazyLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::Digest as _;

/// A page and the Content-Security-Policy that lets only its own script run
/// and only talk to this server.
struct Page {
    html: String,
    csp: HeaderValue,
}

impl Page {
    fn new(html: String) -> Page {
        let script = html
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(script, _)| script);
        let hash = base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(script.as_bytes()));
        let csp = format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        );
        Page {
            html,
            csp: HeaderValue::from_str(&csp)
                .unwrap_or(HeaderValue::from_static("default-src 'none'")),
        }
    }

    fn response(&self) -> Response {
        let mut response = (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "no-referrer"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            self.html.clone(),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        response
    }
}

static DOCS: LazyLock<Page> = LazyLock::new(|| Page::new(include_str!("docs.html").to_owned()));

static LANDING: LazyLock<Page> = LazyLock::new(|| {
    Page::new(include_str!("landing.html").replace("{{VERSION}}", env!("CARGO_PKG_VERSION")))
});

/// `GET /docs`.
pub(crate) async fn docs() -> Response {
    DOCS.response()
}

/// `GET /`.
pub(crate) async fn landing() -> Response {
    LANDING.response()
}
