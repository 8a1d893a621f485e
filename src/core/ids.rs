//! Matrix identifiers, by the grammar of the Matrix specification
//! (appendices, "Identifier grammar"), in one place: the policy, the
//! configuration, the CLI and the engine all ask here.
//!
//! * user IDs: `@localpart:server_name`, the historical localpart grammar
//!   (any printable ASCII but `:`), at most 255 bytes;
//! * room IDs: `!opaque_id:server_name` (room versions 1–11) or
//!   `!opaque_id` with no server part (room version 12, where the opaque
//!   part is the create event's reference hash), at most 255 bytes;
//! * room aliases: `#localpart:server_name`, at most 255 bytes;
//! * server names: a DNS name, an IPv4 address or a bracketed IPv6
//!   address, with an optional port.
//!
//! Globs over these (`@*:example.org`, `!*`) are checked by putting a
//! character in place of each wildcard and checking the result.

/// Longest identifier the spec allows, in bytes.
const MAX_ID_BYTES: usize = 255;

/// What an identifier names, for messages ("is not a room ID …").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `@user:server`
    User,
    /// `!room` or `!room:server`
    Room,
    /// `#alias:server`
    RoomAlias,
}

impl Kind {
    /// The form, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::User => "a Matrix user ID (@user:server)",
            Kind::Room => "a room ID (!id, or !id:server before room version 12)",
            Kind::RoomAlias => "a room alias (#alias:server)",
        }
    }
}

/// The kind of a valid identifier, or None.
pub fn kind(id: &str) -> Option<Kind> {
    if id.len() > MAX_ID_BYTES {
        return None;
    }
    let mut chars = id.chars();
    let kind = match chars.next()? {
        '@' => Kind::User,
        '!' => Kind::Room,
        '#' => Kind::RoomAlias,
        _ => return None,
    };
    let rest = chars.as_str();
    let ok = match kind {
        Kind::User => rest.split_once(':').is_some_and(|(l, s)| {
            !l.is_empty() && l.chars().all(historical_char) && server_name(s)
        }),
        Kind::Room => match rest.split_once(':') {
            Some((o, s)) => opaque(o) && server_name(s),
            None => opaque(rest),
        },
        Kind::RoomAlias => rest.split_once(':').is_some_and(|(l, s)| {
            !l.is_empty() && !l.chars().any(|c| c == '\0' || c.is_whitespace()) && server_name(s)
        }),
    };
    ok.then_some(kind)
}

/// A valid user ID.
pub fn is_user_id(id: &str) -> bool {
    kind(id) == Some(Kind::User)
}

/// A valid room ID, of any room version.
pub fn is_room_id(id: &str) -> bool {
    kind(id) == Some(Kind::Room)
}

/// A room ID or a room alias: what a policy or the CLI may call a room.
pub fn is_room(id: &str) -> bool {
    matches!(kind(id), Some(Kind::Room | Kind::RoomAlias))
}

/// `*` (anyone), or a user ID with wildcards.
pub fn is_user_glob(g: &str) -> bool {
    g == "*" || is_user_id(&instantiate(g))
}

/// `*` (anywhere), or a room ID or alias with wildcards.
pub fn is_room_glob(g: &str) -> bool {
    g == "*" || is_room(&instantiate(g))
}

/// A glob with each wildcard replaced by one ordinary character.
fn instantiate(g: &str) -> String {
    g.replace(['*', '?'], "x")
}

/// Historical user ID localparts: printable ASCII except `:`.
fn historical_char(c: char) -> bool {
    matches!(c, '\x21'..='\x39' | '\x3b'..='\x7e')
}

/// A room ID's opaque part: printable ASCII, no `:`.
fn opaque(s: &str) -> bool {
    !s.is_empty() && s.chars().all(historical_char)
}

/// `hostname [":" port]`, hostname being an IPv4 address, a bracketed IPv6
/// address or a DNS name.
pub fn server_name(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(p) => ("", Some(p)),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = s.starts_with('[')
        || (!host.is_empty()
            && host.len() <= 255
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_of_every_version() {
        // Room version 12: no server part.
        assert!(is_room_id("!e4_-U62puWxh0xAHKLfXe4uO7XcTuwkfltgSmxR3iho"));
        assert!(is_room_id("!ops:example.org"));
        assert!(is_room_id("!abc:[::1]:8448"));
        assert!(is_room_id("!abc:127.0.0.1:8008"));
        assert!(!is_room_id("!"));
        assert!(!is_room_id("!:example.org"));
        assert!(!is_room_id("!a b"));
        assert!(!is_room_id("!abc:exa mple.org"));
        assert!(!is_room_id("!abc:example.org:99999999"));
        assert!(!is_room_id("#ops:example.org"));
        assert!(!is_room_id(&format!("!{}", "a".repeat(255))));
    }

    #[test]
    fn user_ids_and_aliases() {
        assert!(is_user_id("@alice:example.org"));
        assert!(is_user_id("@Ali.ce+1=/_-:example.org:8448"));
        assert!(!is_user_id("@alice"));
        assert!(!is_user_id("@:example.org"));
        assert!(!is_user_id("@al ice:example.org"));
        assert!(!is_user_id("alice:example.org"));
        assert!(!is_user_id("@alice:"));
        assert!(is_room("#ops:example.org"));
        assert!(!is_room("#ops"));
        assert!(is_room("!e4_-U62puWxh0xAHKLfXe4uO7XcTuwkfltgSmxR3iho"));
    }

    #[test]
    fn globs() {
        assert!(is_user_glob("*"));
        assert!(is_user_glob("@*:example.org"));
        assert!(is_user_glob("@alice:*"));
        assert!(!is_user_glob("@*"));
        assert!(!is_user_glob("alice"));
        assert!(is_room_glob("!*"));
        assert!(is_room_glob("!*:example.org"));
        assert!(is_room_glob("#ops-*:example.org"));
        assert!(is_room_glob("!e4_-U62puWxh0xAHKLfXe4uO7XcTuwkfltgSmxR3iho"));
        assert!(!is_room_glob("ops"));
    }

    #[test]
    fn server_names() {
        assert!(server_name("example.org"));
        assert!(server_name("localhost:8008"));
        assert!(server_name("[::1]"));
        assert!(server_name("[::1]:8448"));
        assert!(!server_name(""));
        assert!(!server_name("[::1"));
        assert!(!server_name("[nope]"));
        assert!(!server_name("example.org:"));
        assert!(!server_name("exa_mple.org"));
    }
}
