//! Enrollment over QUIC: a connection without a client certificate may send one
//! `Enroll` with a join token and its public key; the coordinator checks the token (one
//! transaction spends a use and records the agent), signs the key into a client
//! certificate bound to a new agent id, and answers with it and the CA. Anything else
//! without a certificate is refused with a reason and counted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use quinn::{Connection, VarInt};
use tracing::info;

use persona_shared::protocol::{self, AgentMsg, CoordMsg, EnrollResponse, RejectCode};

use persona_shared::wire::WireError;

use super::limits::FrameBudget;
use super::{Ingest, STREAM_TIMEOUT, reject, send};
use crate::pki;
use crate::store::TokenRefusal;

pub(super) async fn enrollment(conn: Connection, ing: Arc<Ingest>) {
    let peer = conn.remote_address();
    let max = ing.app.settings.max_frame.min(64 * 1024);
    let Ok(Ok((mut tx, mut rx))) = tokio::time::timeout(STREAM_TIMEOUT, conn.accept_bi()).await
    else {
        ing.app.stats.reject("no_client_certificate");
        ing.log.warn(
            "no_client_certificate",
            peer,
            &"connection without client certificate and no enrollment",
        );
        conn.close(VarInt::from_u32(2), b"client certificate required");
        return;
    };
    // Unauthenticated frames are small (64 KiB at most) but come from anyone: their
    // bytes are reserved from the server's frame budget like an agent's.
    let read = async {
        let len = persona_shared::wire::read_header(&mut rx, max).await?;
        let held = FrameBudget::reserve(&[&ing.frames], len);
        if held.is_none() {
            // "Exceeds what is left": the budget is the bound here.
            return Err(WireError::TooLarge {
                len,
                max: ing.frames.available_bytes(),
            });
        }
        persona_shared::wire::read_body(&mut rx, len).await
    };
    let body = match tokio::time::timeout(STREAM_TIMEOUT, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            ing.app.stats.reject("bad_frame");
            ing.log.warn("bad_frame", peer, &e);
            reject(&mut tx, RejectCode::BadMessage, e.to_string(), max).await;
            conn.close(VarInt::from_u32(2), b"bad frame");
            return;
        }
        Err(_) => {
            conn.close(VarInt::from_u32(2), b"timeout");
            return;
        }
    };
    let req = match protocol::decode_body::<AgentMsg>(&body) {
        Ok(AgentMsg::Enroll(r)) => r,
        Ok(_) => {
            ing.app.stats.reject("no_client_certificate");
            ing.log.warn(
                "no_client_certificate",
                peer,
                &"message other than Enroll without a client certificate",
            );
            reject(
                &mut tx,
                RejectCode::NotEnrolled,
                "client certificate required; enroll first".into(),
                max,
            )
            .await;
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            return;
        }
        Err(e) => {
            ing.app.stats.reject("bad_message");
            ing.log.warn("bad_message", peer, &e);
            reject(&mut tx, RejectCode::BadMessage, e.to_string(), max).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            return;
        }
    };
    // Checked before the token, so a refused enrollment does not use it up.
    if let Err(e) = ing.app.pki.can_enroll() {
        ing.app.stats.reject("enrollment_offline");
        ing.log.warn("enrollment_offline", peer, &e);
        reject(&mut tx, RejectCode::Internal, e.to_string(), max).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        return;
    }
    let agent_id = match pki::random_hex(8) {
        Ok(h) => format!("a-{h}"),
        Err(e) => {
            reject(&mut tx, RejectCode::Internal, e.to_string(), max).await;
            return;
        }
    };
    let (cert_pem, fp) = match ing.app.pki.sign_agent(&agent_id, &req.public_key) {
        Ok(x) => x,
        Err(e) => {
            ing.app.stats.reject("bad_public_key");
            ing.log.warn("bad_public_key", peer, &e);
            reject(&mut tx, RejectCode::BadMessage, e.to_string(), max).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            return;
        }
    };
    let hostname: String = req
        .hostname
        .chars()
        .filter(|c| !c.is_control())
        .take(253)
        .collect();
    let store = ing.app.store.clone();
    let (token, id2, fp2) = (req.token.clone(), agent_id.clone(), fp.clone());
    let res =
        tokio::task::spawn_blocking(move || store.enroll(&token, &id2, &hostname, &fp2)).await;
    match res {
        Ok(Ok(Ok(()))) => {
            ing.app.stats.enrollments.fetch_add(1, Ordering::Relaxed);
            info!(agent = %agent_id, %peer, "agent enrolled");
            let msg = CoordMsg::Enrolled(EnrollResponse {
                agent_id,
                cert_pem,
                ca_pem: ing.app.pki.ca_pem.clone(),
            });
            if send(&mut tx, &msg, max).await.is_ok() {
                let _ = tx.finish();
            }
        }
        Ok(Ok(Err(refusal))) => {
            let reason = match refusal {
                TokenRefusal::Expired => "token_expired",
                TokenRefusal::UsedUp => "token_used",
                TokenRefusal::Revoked => "token_revoked",
                TokenRefusal::Unknown => "bad_token",
            };
            ing.app.stats.reject(reason);
            ing.log.warn(reason, peer, &refusal);
            reject(&mut tx, RejectCode::BadToken, refusal.to_string(), max).await;
        }
        Ok(Err(e)) => reject(&mut tx, RejectCode::Internal, e.to_string(), max).await,
        Err(e) => reject(&mut tx, RejectCode::Internal, e.to_string(), max).await,
    }
    // Keep the connection until the agent has read the answer and closes.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
}
