//! The `http-request` runner (`runners.md` §7): the request st2 builds
//! from the action's parameters, and st2's result and status for the
//! answer.
//!
//! Host allow and deny lists: st2 compares the URL's netloc as a string,
//! so `EXAMPLE.com`, `user@example.com`, `example.com.` and `2130706433`
//! all pass a deny list, and a redirect is never checked; airlock compares
//! the parsed host as a URL parser normalises it (case, IPv4 in any
//! numeric form, IPv6 brackets), without userinfo, port or a trailing
//! dot, and checks every redirect with the same function.

use std::time::Duration;

use serde_json::{Map, Value, json};
use url::{Host, Url};

use crate::alias::cast::python_literal;

/// The host of `url` as compared with the lists: lowercase, IPv4 and IPv6
/// in canonical form, no trailing dot.
pub fn normalized_host(url: &str) -> Option<String> {
    let parsed = Url::parse(url).ok()?;
    Some(match parsed.host()? {
        Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    })
}

/// A list entry normalised the same way (a bare host, an IP, or `[::1]`).
fn normalized_entry(entry: &str) -> String {
    let e = entry.trim();
    let e = e
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .unwrap_or(e);
    normalized_host(&format!("http://{}/", bracket(e))).unwrap_or_else(|| e.to_ascii_lowercase())
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Whether `url` may be requested under these lists (st2's messages).
pub fn check_host(url: &str, deny: &[String], allow: &[String]) -> Result<(), String> {
    if !deny.is_empty() && !allow.is_empty() {
        return Err("\"url_hosts_blacklist\" and \"url_hosts_whitelist\" parameters are mutually exclusive. Only one should be provided.".into());
    }
    let host = normalized_host(url);
    let listed = |list: &[String]| {
        host.as_ref()
            .is_some_and(|h| list.iter().any(|e| normalized_entry(e) == *h))
    };
    if !deny.is_empty() && (host.is_none() || listed(deny)) {
        return Err(format!("URL \"{url}\" is blacklisted"));
    }
    if !allow.is_empty() && !listed(allow) {
        return Err(format!("URL \"{url}\" is not whitelisted"));
    }
    Ok(())
}

/// The request, from the action's parameters (action and runner ones).
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The URL.
    pub url: String,
    /// `method`, else POST with a body, else GET.
    pub method: Option<String>,
    /// Request headers (`headers`).
    pub headers: Map<String, Value>,
    /// `cookies`.
    pub cookies: Map<String, Value>,
    /// `params`: the query string.
    pub query: Map<String, Value>,
    /// `body`.
    pub body: Option<String>,
    /// `username` and `password`: basic auth when either is set.
    pub basic_auth: Option<(String, String)>,
    /// `allow_redirects`.
    pub allow_redirects: bool,
    /// `verify_ssl_cert`.
    pub verify_tls: bool,
    /// `http_proxy`, `https_proxy`.
    pub proxies: (Option<String>, Option<String>),
    /// `url_hosts_blacklist`.
    pub deny: Vec<String>,
    /// `url_hosts_whitelist`.
    pub allow: Vec<String>,
    /// `timeout`, seconds (connect and read).
    pub timeout: f64,
    /// The action's name (without its pack), for `X-Stanley-Action`.
    pub action: String,
}

/// What a person sees as the client: st2 sends `st2/v<version>`.
pub const USER_AGENT: &str = concat!("airlock/", env!("CARGO_PKG_VERSION"));

impl Request {
    /// The request from rendered parameters `p` of action `action`.
    pub fn from_params(p: &Map<String, Value>, action: &str) -> Result<Request, String> {
        let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
        let obj = |k: &str| {
            p.get(k)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let list = |k: &str| -> Vec<String> {
            p.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().map(super::python::str_of).collect())
                .unwrap_or_default()
        };
        if p.get("auth").is_some_and(|v| !v.is_null()) {
            return Err("the auth parameter is not supported (st2 fails on it too): use username and password, or an Authorization header".into());
        }
        if p.get("file_path").is_some_and(|v| !v.is_null())
            || p.get("file_content").is_some_and(|v| !v.is_null())
        {
            return Err("file uploads (file_path, file_content) are not supported".into());
        }
        let user = s("username");
        let pass = s("password");
        Ok(Request {
            url: s("url").ok_or("the url parameter is required")?,
            method: s("method"),
            headers: obj("headers"),
            cookies: obj("cookies"),
            query: obj("params"),
            body: p.get("body").and_then(|b| match b {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }),
            basic_auth: (user.is_some() || pass.is_some())
                .then(|| (user.unwrap_or_default(), pass.unwrap_or_default())),
            allow_redirects: p.get("allow_redirects") == Some(&Value::Bool(true)),
            verify_tls: p.get("verify_ssl_cert") != Some(&Value::Bool(false)),
            proxies: (s("http_proxy"), s("https_proxy")),
            deny: list("url_hosts_blacklist"),
            allow: list("url_hosts_whitelist"),
            timeout: p.get("timeout").and_then(Value::as_f64).unwrap_or(60.0),
            action: action.rsplit('.').next().unwrap_or(action).to_string(),
        })
    }

    /// Send it; st2's status and result (`status_code`, `body`, `parsed`,
    /// `headers`), or `timeout` with `{"error"}`. `Err`: it could not be
    /// sent (a refused host, a bad URL, no connection), which st2 reports
    /// as `failed` with the error.
    pub fn send(&self) -> Result<(&'static str, Value), String> {
        check_host(&self.url, &self.deny, &self.allow)?;
        let timeout = Duration::from_secs_f64(self.timeout.clamp(0.001, 86_400.0));
        let (deny, allow) = (self.deny.clone(), self.allow.clone());
        let redirects = if self.allow_redirects {
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 10 {
                    return attempt.error("more than 10 redirects");
                }
                match check_host(attempt.url().as_str(), &deny, &allow) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(format!("redirect refused: {e}")),
                }
            })
        } else {
            reqwest::redirect::Policy::none()
        };
        let mut client = reqwest::blocking::Client::builder()
            .redirect(redirects)
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_gzip()
            .user_agent(USER_AGENT)
            .danger_accept_invalid_certs(!self.verify_tls);
        if let Some(p) = &self.proxies.0 {
            client = client.proxy(reqwest::Proxy::http(p).map_err(|e| format!("http_proxy: {e}"))?);
        }
        if let Some(p) = &self.proxies.1 {
            client =
                client.proxy(reqwest::Proxy::https(p).map_err(|e| format!("https_proxy: {e}"))?);
        }
        let client = client.build().map_err(|e| e.to_string())?;
        let method = match (&self.method, &self.body) {
            (Some(m), _) => m.to_ascii_uppercase(),
            (None, Some(_)) => "POST".into(),
            (None, None) => "GET".into(),
        };
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("\"{method}\" is not an HTTP method"))?;
        let mut url = Url::parse(&self.url).map_err(|e| format!("URL \"{}\": {e}", self.url))?;
        if !self.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &self.query {
                pairs.append_pair(k, &super::python::str_of(v));
            }
        }
        let mut req = client.request(method, url);
        let mut json_body = false;
        for (k, v) in &self.headers {
            let v = super::python::str_of(v);
            if k.eq_ignore_ascii_case("content-type") && v == "application/json" {
                json_body = true;
            }
            // st2's own headers win over the action's.
            if !k.eq_ignore_ascii_case("user-agent") && !k.eq_ignore_ascii_case("x-stanley-action")
            {
                req = req.header(k.as_str(), v);
            }
        }
        req = req.header("X-Stanley-Action", &self.action);
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={}", super::python::str_of(v)))
                .collect();
            req = req.header("Cookie", c.join("; "));
        }
        if let Some((u, p)) = &self.basic_auth {
            req = req.basic_auth(u, Some(p));
        }
        if let Some(body) = &self.body {
            let body = if json_body {
                // st2 re-encodes a JSON body compactly, reading a Python
                // literal when it is not JSON.
                serde_json::from_str::<Value>(body)
                    .ok()
                    .or_else(|| python_literal(body))
                    .map(|v| v.to_string())
                    .ok_or("the body is neither JSON nor a Python literal")?
            } else {
                body.clone()
            };
            req = req.body(body);
        }
        match req.send() {
            Ok(resp) => Ok(shape(resp)),
            Err(e) if e.is_timeout() => Ok((
                "timeout",
                json!({"error": timeout_error(&self.url, self.timeout)}),
            )),
            Err(e) => Err(error_text(e)),
        }
    }
}

/// st2's result for a response.
fn shape(resp: reqwest::blocking::Response) -> (&'static str, Value) {
    let status = resp.status().as_u16();
    let mut headers = Map::new();
    for (k, v) in resp.headers() {
        let name = title_case(k.as_str());
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        // Repeated headers are joined, as requests joins them.
        let joined = match headers.get(&name).and_then(Value::as_str) {
            Some(prev) => format!("{prev}, {v}"),
            None => v,
        };
        headers.insert(name, Value::String(joined));
    }
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let bytes = resp.bytes().map(|b| b.to_vec()).unwrap_or_default();
    let text = decode(&bytes, content_type.as_deref());
    let json = content_type
        .as_deref()
        .is_some_and(|ct| ct.split(';').next() == Some("application/json"));
    let (body, parsed) = match json.then(|| serde_json::from_str::<Value>(&text)) {
        Some(Ok(v)) => (v, true),
        _ => (Value::String(text), false),
    };
    let ok = (200..=206).contains(&status);
    (
        if ok { "succeeded" } else { "failed" },
        json!({"status_code": status, "body": body, "parsed": parsed, "headers": headers}),
    )
}

/// requests' `resp.text`: the charset the header names; ISO-8859-1 for
/// `text/*` without one; else UTF-8.
fn decode(bytes: &[u8], content_type: Option<&str>) -> String {
    let ct = content_type.unwrap_or_default().to_ascii_lowercase();
    let charset = ct
        .split(';')
        .skip(1)
        .filter_map(|p| p.trim().strip_prefix("charset="))
        .map(|c| c.trim_matches('"').to_string())
        .next();
    let latin1 = match charset.as_deref() {
        Some("iso-8859-1" | "latin-1" | "latin1") => true,
        Some(_) => false,
        None => ct.starts_with("text/"),
    };
    if latin1 {
        bytes.iter().map(|b| char::from(*b)).collect()
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// `content-type` → `Content-Type` (the http stack lowercases names;
/// servers almost always send them this way).
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// requests' message for a read timeout.
fn timeout_error(url: &str, timeout: f64) -> String {
    let parsed = Url::parse(url).ok();
    let host = parsed
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let port = parsed
        .as_ref()
        .and_then(Url::port_or_known_default)
        .unwrap_or(80);
    let pool = if url.starts_with("https") {
        "HTTPSConnectionPool"
    } else {
        "HTTPConnectionPool"
    };
    format!(
        "{pool}(host='{host}', port={port}): Read timed out. (read timeout={})",
        super::python::str_of(&json!(timeout))
    )
}

/// The error with its causes, without the URL's userinfo.
fn error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny(url: &str, list: &[&str]) -> bool {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        check_host(url, &list, &[]).is_err()
    }

    #[test]
    fn every_spelling_of_a_denied_host_is_denied() {
        for url in [
            "http://example.com/x",
            "http://EXAMPLE.com/",
            "http://user:pw@example.com/",
            "http://example.com./",
            "http://example.com:8080/",
            "https://example.com/",
        ] {
            assert!(deny(url, &["example.com"]), "{url}");
        }
        for url in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://017700000001/",
        ] {
            assert!(deny(url, &["127.0.0.1"]), "{url}");
        }
        assert!(deny("http://[::1]:8080/", &["::1"]));
        assert!(deny("http://[0:0::1]/", &["[::1]"]));
        // Something a parser cannot read is not let through a deny list.
        assert!(deny("http://exa mple.com/", &["example.com"]));
        assert!(!deny("http://example.org/", &["example.com"]));
    }
}
