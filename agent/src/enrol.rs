//! Enrolment: `init --enrol CODE` registers this agent's new key with the hub named in the
//! code, over the network, in one step. The request carries the code's one-time secret,
//! the new public key and that key's signature over
//! [`spacesync_shared::admin::enrol_message`] (bound to the code and to the hub key the
//! code pins); the hub registers the key as `agents add` does and answers the source and
//! scope it was invited for. The agent then pins the code's hub key, so it never trusts a
//! key first seen on the network.

use ed25519_dalek::SigningKey;
use spacesync_shared::admin::{self, EnrolCode, Enrolled};
use spacesync_shared::wire::ErrorBody;

/// Why enrolment failed; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The hub was not reached.
    #[error(
        "cannot reach the hub at {hub} ({why}); check the network, or ask for a code with the hub's reachable URL"
    )]
    Unreachable {
        /// The code's hub URL.
        hub: String,
        /// Why.
        why: String,
    },
    /// The hub refused the enrolment.
    #[error("the hub at {hub} refused the enrolment ({status}): {said}")]
    Refused {
        /// The code's hub URL.
        hub: String,
        /// HTTP status.
        status: u16,
        /// What it said.
        said: String,
    },
    /// The hub answered something else than an enrolment.
    #[error(
        "the hub at {hub} answered what is not an enrolment ({why}); is the code's URL a spacesync hub?"
    )]
    Answer {
        /// The code's hub URL.
        hub: String,
        /// Why it does not read.
        why: String,
    },
    /// The hub that answered is not the one the code pins.
    #[error(
        "the hub at {hub} answered with key {answered}, but the code pins {pinned}; nothing is trusted (is something between this machine and the hub?)"
    )]
    WrongHub {
        /// The code's hub URL.
        hub: String,
        /// The key line the code pins.
        pinned: String,
        /// The key line the answer named.
        answered: String,
    },
}

/// Largest answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// Registers `key` with the hub of `code`; returns what the hub registered it as.
/// The hub's certificate is checked against the system's roots plus `ca_file` (`init
/// --ca-file`), as the pusher will check it.
pub async fn enrol(
    code: &EnrolCode,
    key: &SigningKey,
    ca_file: Option<&std::path::PathBuf>,
) -> Result<Enrolled, EnrolError> {
    let hub = code.hub.clone();
    let unreachable = |e: reqwest::Error| EnrolError::Unreachable {
        hub: hub.clone(),
        why: spacesync_shared::err_chain(&e),
    };
    let client =
        crate::tls::http_client(&code.hub, ca_file, None, std::time::Duration::from_secs(60))
            .map_err(|e| EnrolError::Unreachable {
                hub: hub.clone(),
                why: format!("cannot set up TLS: {e}"),
            })?;
    let body =
        serde_json::to_vec(&admin::enrol_request(code, key)).map_err(|e| EnrolError::Answer {
            hub: hub.clone(),
            why: e.to_string(),
        })?;
    let mut resp = client
        .post(format!("{hub}{}", admin::PATH_ENROL))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(unreachable)?;
    let status = resp.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
        if bytes.len() + chunk.len() > MAX_ANSWER {
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let said = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(300).collect());
        return Err(EnrolError::Refused {
            hub,
            status: status.as_u16(),
            said,
        });
    }
    let enrolled: Enrolled = serde_json::from_slice(&bytes).map_err(|e| EnrolError::Answer {
        hub: hub.clone(),
        why: e.to_string(),
    })?;
    if enrolled.hub_key != code.hub_key {
        return Err(EnrolError::WrongHub {
            hub,
            pinned: code.hub_key.clone(),
            answered: enrolled.hub_key,
        });
    }
    Ok(enrolled)
}
