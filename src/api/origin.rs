//! Where a request may come from, checked on every route before anything
//! else: a browser page of another origin is refused (its `Origin` is not
//! the server's own), and a server without authentication answers only to
//! a loopback `Host` or one named with `--allowed-host`, so a page whose
//! name was rebound to this machine (DNS rebinding) reaches nothing.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiState, Error};

/// Middleware: refuses a foreign `Origin` always, and an unknown `Host`
/// when the server runs without tokens.
pub(crate) async fn check(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let open = state.config.tokens.is_empty();
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    match verdict(
        req.headers(),
        authority.as_deref(),
        open,
        &state.config.allowed_hosts,
    ) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Whether a request with `headers` (and `authority`, when its target is in
/// absolute form) is let in.
fn verdict(
    headers: &HeaderMap,
    authority: Option<&str>,
    open: bool,
    allowed_hosts: &[String],
) -> Result<(), Error> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => Some(h.to_str().map_err(|_| bad_host("(not ASCII)"))?),
        (None, _) => None,
        (Some(_), Some(_)) => return Err(bad_host("(more than one Host header)")),
    };
    // The name the request is for: an absolute target's, else Host's.
    let name = authority.or(host);
    for origin in headers.get_all(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not ASCII)");
        // This server speaks plain HTTP: its own pages are http://HOST.
        let own = name.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("http://{h}")));
        if !own {
            return Err(Error::Forbidden(format!(
                "requests from a browser page of another origin ({}) are refused; call the API from a program, or from a page this server serves",
                crate::value::clip(origin, crate::value::MAX_ECHO)
            )));
        }
    }
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if cross_site {
        return Err(Error::Forbidden(
            "requests a browser makes for a page of another site are refused".into(),
        ));
    }
    if open {
        let Some(name) = name else {
            return Err(bad_host("(none)"));
        };
        let bare = host_name(name);
        let known = is_loopback_name(bare)
            || allowed_hosts
                .iter()
                .any(|a| a.eq_ignore_ascii_case(name) || a.eq_ignore_ascii_case(bare));
        if !known {
            return Err(bad_host(name));
        }
    }
    Ok(())
}

/// The refusal of a server without tokens to answer to `host`.
fn bad_host(host: &str) -> Error {
    Error::Forbidden(format!(
        "this server runs without authentication and answers only to a loopback Host (localhost, 127.0.0.1, [::1]), not {:?}; name others with --allowed-host (MODAL_AGENTS_ALLOWED_HOSTS), or set MODAL_AGENTS_TOKEN",
        crate::value::clip(host, crate::value::MAX_ECHO)
    ))
}

/// The name part of a `Host` value (`[::1]:8080` -> `[::1]`,
/// `localhost:80` -> `localhost`).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(n, _)| &host[..n.len() + 1]);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// `localhost` (and names under it), `127.0.0.0/8` and `[::1]`.
fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") || name == "[::1]" {
        return true;
    }
    name.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_foreign_origin_is_refused_and_the_own_one_let_in() {
        let own = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(verdict(&own, None, false, &[]).is_ok());
        let foreign = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example"),
        ]);
        let err = verdict(&foreign, None, false, &[]).unwrap_err();
        assert!(matches!(err, Error::Forbidden(_)), "{err:?}");
        assert!(err.to_string().contains("evil.example"), "{err}");
        let null = headers(&[("host", "localhost:1"), ("origin", "null")]);
        assert!(verdict(&null, None, false, &[]).is_err());
        let https = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://127.0.0.1:8080"),
        ]);
        assert!(
            verdict(&https, None, false, &[]).is_err(),
            "this server is not https"
        );
        let mut two = own.clone();
        two.append("origin", "http://evil.example".parse().unwrap());
        assert!(
            verdict(&two, None, false, &[]).is_err(),
            "every Origin is checked"
        );
        let cross = headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]);
        assert!(verdict(&cross, None, false, &[]).is_err());
        // A program sends no Origin at all.
        assert!(verdict(&headers(&[("host", "anything:1")]), None, false, &[]).is_ok());
    }

    #[test]
    fn without_tokens_only_loopback_or_allowed_hosts_answer() {
        for host in [
            "localhost:8080",
            "127.0.0.1:8080",
            "127.1.2.3",
            "[::1]:8080",
            "app.localhost",
            "LOCALHOST.",
        ] {
            assert!(
                verdict(&headers(&[("host", host)]), None, true, &[]).is_ok(),
                "{host}"
            );
        }
        // The rebinding shape: the attacker's name, its own origin.
        let rebound = headers(&[
            ("host", "attacker.example:8080"),
            ("origin", "http://attacker.example:8080"),
        ]);
        let err = verdict(&rebound, None, true, &[]).unwrap_err();
        assert!(err.to_string().contains("--allowed-host"), "{err}");
        assert!(
            verdict(&rebound, None, false, &[]).is_ok(),
            "a token guards a server with tokens"
        );
        let allowed = ["attacker.example".to_owned()];
        assert!(verdict(&rebound, None, true, &allowed).is_ok());
        assert!(verdict(&headers(&[("host", "10.0.0.5:80")]), None, true, &[]).is_err());
        assert!(verdict(
            &headers(&[("host", "localhost.evil.example")]),
            None,
            true,
            &[]
        )
        .is_err());
        // No Host, two Hosts, an absolute target naming another host.
        assert!(verdict(&HeaderMap::new(), None, true, &[]).is_err());
        let mut two = headers(&[("host", "localhost")]);
        two.append("host", "evil.example".parse().unwrap());
        assert!(verdict(&two, None, true, &[]).is_err());
        let local = headers(&[("host", "localhost")]);
        assert!(verdict(&local, Some("evil.example"), true, &[]).is_err());
        assert!(verdict(&local, Some("localhost:80"), true, &[]).is_ok());
    }
}
