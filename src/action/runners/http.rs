//! The http-request runner's host allow and deny lists. st2 compares the
//! URL's netloc as a string, so `EXAMPLE.com`, `user@example.com`,
//! `example.com.` and `2130706433` all pass a deny list; airlock compares
//! the parsed host as a URL parser normalises it (case, IPv4 in any
//! numeric form, IPv6 brackets), without userinfo, port or a trailing dot.
//! Redirects are checked with the same function.

use url::{Host, Url};

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
