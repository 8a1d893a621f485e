//! The bot's Matrix session: logging in once, keeping the session (one
//! device across restarts), and syncing through rate limits.

use std::path::Path;
use std::time::Duration;

use matrix_sdk::Client;
use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::UserId;
use matrix_sdk::ruma::api::error::{ErrorKind, RetryAfter};

use super::Error;

/// The homeserver's own wait for a 429, when that is the error.
pub(super) fn retry_after(e: &matrix_sdk::Error) -> Option<Duration> {
    match e.client_api_error_kind() {
        Some(ErrorKind::LimitExceeded(data)) => match data.retry_after {
            Some(RetryAfter::Delay(d)) => Some(d),
            _ => Some(Duration::from_secs(5)),
        },
        _ => None,
    }
}

pub(super) async fn sync_with_retry(client: &Client, settings: SyncSettings) {
    let mut backoff = Duration::from_millis(500);
    while let Err(e) = client.sync_once(settings.clone()).await {
        let wait = retry_after(&e).unwrap_or(backoff);
        tracing::warn!("initial sync failed ({e}); retrying in {wait:?}");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// Restore the saved session, or log in once and save it: one device for
/// the bot across restarts.
pub(super) async fn login(
    client: &Client,
    homeserver: &str,
    user_id: &UserId,
    device_name: &str,
    session_file: &Path,
) -> Result<(), Error> {
    if let Ok(text) = std::fs::read_to_string(session_file) {
        let session: MatrixSession = serde_json::from_str(&text)
            .map_err(|e| Error::Session(session_file.into(), e.to_string()))?;
        if session.meta.user_id != *user_id {
            return Err(Error::Session(
                session_file.into(),
                format!("belongs to {}, not {user_id}", session.meta.user_id),
            ));
        }
        client
            .matrix_auth()
            .restore_session(session, Default::default())
            .await?;
        return Ok(());
    }
    let session = if let Ok(token) = std::env::var("AIRLOCK_ACCESS_TOKEN") {
        // A token alone does not say which device it is: ask, on a client
        // with no store, so no crypto state is made for a wrong device.
        let probe = Client::builder().homeserver_url(homeserver).build().await?;
        probe
            .matrix_auth()
            .restore_session(
                MatrixSession {
                    meta: matrix_sdk::SessionMeta {
                        user_id: user_id.to_owned(),
                        device_id: "AIRLOCKPROBE".into(),
                    },
                    tokens: matrix_sdk::SessionTokens {
                        access_token: token.clone(),
                        refresh_token: None,
                    },
                },
                Default::default(),
            )
            .await?;
        let who = probe.whoami().await.map_err(matrix_sdk::Error::from)?;
        let device_id = who
            .device_id
            .ok_or_else(|| Error::Config("the access token has no device".into()))?;
        let session = MatrixSession {
            meta: matrix_sdk::SessionMeta {
                user_id: who.user_id,
                device_id,
            },
            tokens: matrix_sdk::SessionTokens {
                access_token: token,
                refresh_token: None,
            },
        };
        client
            .matrix_auth()
            .restore_session(session.clone(), Default::default())
            .await?;
        session
    } else if let Ok(password) = std::env::var("AIRLOCK_PASSWORD") {
        client
            .matrix_auth()
            .login_username(user_id, &password)
            .initial_device_display_name(device_name)
            .send()
            .await?;
        client
            .matrix_auth()
            .session()
            .ok_or_else(|| Error::Config("login returned no session".into()))?
    } else {
        return Err(Error::Config(
            "no saved session and neither AIRLOCK_PASSWORD nor AIRLOCK_ACCESS_TOKEN is set".into(),
        ));
    };
    let json = serde_json::to_string(&session)
        .map_err(|e| Error::Session(session_file.into(), e.to_string()))?;
    crate::store::write_private(session_file, json.as_bytes())
        .map_err(|e| Error::Session(session_file.into(), e.to_string()))?;
    Ok(())
}
