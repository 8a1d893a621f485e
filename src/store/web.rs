//! Sign-in to the web view: one-time links the bot sends a user in a
//! direct message, and the sessions they open. Only SHA-256 hashes of
//! tokens are stored, so a copy of the database opens no session; a link
//! is bound to its user, usable once and for minutes; a session lasts
//! hours and ends with `!web logout`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::kv::{self, Db, Tree};

/// A link's or a session's record, under the hash of its token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Grant {
    user: String,
    expires_ms: u64,
}

/// Why a link opened no session. One answer for every case: a page says
/// no more than "this link cannot be used".
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WebError {
    /// Unknown, used already, or expired.
    #[error(
        "this sign-in link cannot be used (it was used already, has expired, or was never given); ask for another with !web"
    )]
    Unusable,
    /// The database failed.
    #[error("web sign-in storage: {0}")]
    Storage(String),
}

impl From<kv::Error> for WebError {
    fn from(e: kv::Error) -> Self {
        WebError::Storage(e.to_string())
    }
}

/// The links and sessions (trees `web_links` and `web_sessions`).
#[derive(Clone)]
pub struct WebAccess {
    links: Tree,
    sessions: Tree,
}

/// 32 random bytes from the kernel, as 64 hex digits.
fn token() -> std::io::Result<String> {
    let bytes = super::random_bytes::<32>()?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn hashed(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn json(g: &Grant) -> Vec<u8> {
    serde_json::to_vec(g).expect("a grant serializes")
}

impl WebAccess {
    /// The records in `db`.
    pub fn open(db: &Db) -> kv::Result<Self> {
        Ok(WebAccess {
            links: db.open_tree("web_links")?,
            sessions: db.open_tree("web_sessions")?,
        })
    }

    /// A new sign-in link's token for `user`, valid until `expires_ms`.
    pub fn issue_link(&self, user: &str, expires_ms: u64) -> Result<String, WebError> {
        let t = token().map_err(|e| WebError::Storage(e.to_string()))?;
        let g = Grant {
            user: user.to_string(),
            expires_ms,
        };
        self.links.insert(hashed(&t), json(&g))?;
        self.links.flush()?;
        Ok(t)
    }

    /// Use link `link` at `now`: it is gone whatever the outcome, and if
    /// it was valid a session for its user opens, until
    /// `session_expires_ms`. The user and the session's token.
    pub fn redeem(
        &self,
        link: &str,
        now: u64,
        session_expires_ms: u64,
    ) -> Result<(String, String), WebError> {
        // Removing is the check: of two uses racing, one gets the record.
        let Some(bytes) = self.links.remove(hashed(link))? else {
            return Err(WebError::Unusable);
        };
        self.links.flush()?;
        let g: Grant = serde_json::from_slice(&bytes).map_err(|_| WebError::Unusable)?;
        if g.expires_ms <= now {
            return Err(WebError::Unusable);
        }
        let t = token().map_err(|e| WebError::Storage(e.to_string()))?;
        let session = Grant {
            user: g.user.clone(),
            expires_ms: session_expires_ms,
        };
        self.sessions.insert(hashed(&t), json(&session))?;
        self.sessions.flush()?;
        Ok((g.user, t))
    }

    /// The user whose session `token` is, while it lasts.
    pub fn session(&self, token: &str, now: u64) -> Option<String> {
        let bytes = self.sessions.get(hashed(token)).ok()??;
        let g: Grant = serde_json::from_slice(&bytes).ok()?;
        (g.expires_ms > now).then_some(g.user)
    }

    /// End every session and unused link of `user`; how many sessions.
    pub fn logout(&self, user: &str) -> Result<usize, WebError> {
        let mut ended = 0;
        for tree in [&self.sessions, &self.links] {
            for item in tree.iter() {
                let (k, v) = item?;
                if serde_json::from_slice::<Grant>(&v).is_ok_and(|g| g.user == user) {
                    tree.remove(k)?;
                    if std::ptr::eq(tree, &self.sessions) {
                        ended += 1;
                    }
                }
            }
            tree.flush()?;
        }
        Ok(ended)
    }

    /// Forget what has expired by `now`.
    pub fn prune(&self, now: u64) -> Result<(), WebError> {
        for tree in [&self.sessions, &self.links] {
            for item in tree.iter() {
                let (k, v) = item?;
                if serde_json::from_slice::<Grant>(&v).is_ok_and(|g| g.expires_ms <= now) {
                    tree.remove(k)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores() -> Vec<(Option<tempfile::TempDir>, WebAccess)> {
        kv::tests::backends()
            .into_iter()
            .map(|(dir, db)| (dir, WebAccess::open(&db).unwrap()))
            .collect()
    }

    #[test]
    fn a_link_opens_one_session_for_its_user_once_and_in_time() {
        for (_d, w) in stores() {
            let link = w.issue_link("@alice:x", 1_000).unwrap();
            assert_eq!(link.len(), 64);
            let (user, session) = w.redeem(&link, 500, 10_000).unwrap();
            assert_eq!(user, "@alice:x");
            assert_eq!(w.session(&session, 9_999).as_deref(), Some("@alice:x"));
            assert_eq!(w.session(&session, 10_000), None, "past its hours");
            // Replayed: refused.
            assert_eq!(w.redeem(&link, 600, 10_000), Err(WebError::Unusable));
            // Expired before its use: refused, and gone.
            let late = w.issue_link("@alice:x", 1_000).unwrap();
            assert_eq!(w.redeem(&late, 1_000, 10_000), Err(WebError::Unusable));
            // Forged: refused; a session token is no link.
            assert_eq!(
                w.redeem(&"0".repeat(64), 1, 10_000),
                Err(WebError::Unusable)
            );
            assert_eq!(w.redeem(&session, 1, 10_000), Err(WebError::Unusable));
            assert_eq!(w.session(&link, 1), None, "a link is no session");
        }
    }

    #[test]
    fn logout_ends_every_session_of_its_user_only() {
        for (_d, w) in stores() {
            let open = |u: &str| {
                let l = w.issue_link(u, 1_000).unwrap();
                w.redeem(&l, 1, 10_000).unwrap().1
            };
            let (a1, a2, b) = (open("@alice:x"), open("@alice:x"), open("@bob:x"));
            let pending = w.issue_link("@alice:x", 1_000).unwrap();
            assert_eq!(w.logout("@alice:x").unwrap(), 2);
            assert_eq!(w.session(&a1, 2), None);
            assert_eq!(w.session(&a2, 2), None);
            assert_eq!(w.redeem(&pending, 2, 10_000), Err(WebError::Unusable));
            assert_eq!(w.session(&b, 2).as_deref(), Some("@bob:x"));
            w.prune(20_000).unwrap();
            assert_eq!(w.session(&b, 2), None, "pruned once expired");
        }
    }
}
