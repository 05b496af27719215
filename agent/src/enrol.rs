//! Enrolment: `init --enrol CODE` registers this agent's new key with the hub named in the
//! code, over the network, in one step. The request carries the code's one-time secret,
//! the new public key and that key's signature over
//! [`spacesync_shared::admin::enrol_message`] (bound to the code and to the hub key the
//! code pins); the hub registers the key as `agents add` does and answers the source and
//! scope it was invited for, signed by the hub's key
//! ([`spacesync_shared::admin::enrolled_message`]): the agent believes the answer only when
//! that signature verifies with the hub key the code pins, for its own new key. The agent
//! then pins the code's hub key, so it never trusts a key first seen on the network.

use ed25519_dalek::SigningKey;
use spacesync_shared::admin::{self, EnrolCode, Enrolled, EnrolledError};
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
    /// The answer is not signed by the key the code pins, for this agent's key.
    #[error(
        "the hub at {hub} answered an enrolment not signed by the hub key the code pins (for this agent's key); nothing is trusted (is something between this machine and the hub?)"
    )]
    Unsigned {
        /// The code's hub URL.
        hub: String,
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
    let own = spacesync_shared::keys::public_key_line(&key.verifying_key());
    match enrolled.verify(&code.hub_key, &own) {
        Ok(()) => Ok(enrolled),
        Err(EnrolledError::WrongHub { pinned, answered }) => Err(EnrolError::WrongHub {
            hub,
            pinned,
            answered,
        }),
        Err(EnrolledError::Signature) => Err(EnrolError::Unsigned { hub }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spacesync_shared::keys::public_key_line;

    /// A "hub" on a loopback port that answers every enrolment with `answer`.
    async fn answering(answer: Enrolled) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let app = axum::Router::new().route(
            admin::PATH_ENROL,
            axum::routing::post(move || {
                let answer = answer.clone();
                async move { axum::Json(answer) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn code(hub: String, hub_key: &SigningKey) -> EnrolCode {
        EnrolCode {
            hub,
            hub_key: public_key_line(&hub_key.verifying_key()),
            secret: "ab".repeat(32),
        }
    }

    #[tokio::test]
    async fn only_an_answer_signed_by_the_pinned_hub_for_this_key_is_believed() {
        let hub = SigningKey::from_bytes(&[41; 32]);
        let agent = SigningKey::from_bytes(&[42; 32]);
        let own = public_key_line(&agent.verifying_key());

        // The pinned hub's answer for this agent's key: believed.
        let genuine = Enrolled::signed(&hub, "gd-a", "440000", &own);
        let url = answering(genuine.clone()).await;
        let got = enrol(&code(url, &hub), &agent, None).await;
        assert_eq!(got.ok(), Some(genuine.clone()));

        // Something in between widens the scope of the genuine answer: refused.
        let mut wider = genuine.clone();
        wider.scope = "110000".into();
        let url = answering(wider).await;
        let got = enrol(&code(url.clone(), &hub), &agent, None).await;
        assert!(matches!(got, Err(EnrolError::Unsigned { .. })), "{got:?}");

        // A genuine answer for another agent's key: refused.
        let other = public_key_line(&SigningKey::from_bytes(&[43; 32]).verifying_key());
        let url = answering(Enrolled::signed(&hub, "gd-a", "440000", &other)).await;
        let got = enrol(&code(url, &hub), &agent, None).await;
        assert!(matches!(got, Err(EnrolError::Unsigned { .. })), "{got:?}");

        // Another hub's signed answer: the wrong hub.
        let impostor = SigningKey::from_bytes(&[44; 32]);
        let url = answering(Enrolled::signed(&impostor, "gd-a", "440000", &own)).await;
        let got = enrol(&code(url, &hub), &agent, None).await;
        assert!(matches!(got, Err(EnrolError::WrongHub { .. })), "{got:?}");
    }
}
