//! One booking request from payload to reply: where the reply goes, whether the request is the
//! integrator's own (its key, its signature, recent), and carrying it out once per request id
//! with its reply recorded in the same transaction.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use mujin_protocol::booking::{
    self, ActionName, BookingEnvelope, BookingReply, BookingRequest, ErrorCode, Refusal,
};
use mujin_protocol::topic;
use mujin_protocol::{IntegratorId, RequestId};

use super::act;
use super::Desk;
use crate::db::WorkError;
use crate::integrators;

/// The reply to one request and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub topic: String,
    pub reply: BookingReply,
}

/// What could be read of a request before trusting it, to name it in a refusal.
#[derive(Debug, Clone, Copy, Default)]
struct Named {
    request_id: Option<RequestId>,
    action: Option<ActionName>,
}

impl Named {
    fn refuse(self, topic: String, refusal: Refusal) -> Answer {
        Answer {
            topic,
            reply: BookingReply::refused(self.request_id, self.action, refusal),
        }
    }
}

/// Answers one payload published on `integrator`'s bookings topic. `response_topic` is the MQTT
/// 5 response topic of the message, if it had one. An error is a database failure: the caller
/// tries again or answers `unavailable`.
pub async fn answer(
    desk: &Desk,
    integrator: &IntegratorId,
    payload: &[u8],
    response_topic: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Answer, WorkError> {
    let envelope = booking::decode_envelope(payload);
    let named = match &envelope {
        Ok(envelope) => {
            let (request_id, action) = booking::salvage(&envelope.request);
            Named { request_id, action }
        }
        Err(_) => Named::default(),
    };
    let request = envelope.map(|envelope| {
        let request = envelope.decode_request().map_err(|error| {
            Refusal::new(
                ErrorCode::Malformed,
                format!(
                    "the request {}",
                    error.to_string().trim_start_matches("payload ")
                ),
            )
        });
        (envelope, request)
    });
    let reply_to = match &request {
        Ok((_, Ok(request))) => request.reply_to.as_deref(),
        _ => None,
    };
    let topic = match reply_topic(integrator, response_topic, reply_to) {
        Ok(topic) => topic,
        Err((default, refusal)) => return Ok(named.refuse(default, refusal)),
    };
    let (envelope, request) = match request {
        Ok((envelope, Ok(request))) => (envelope, request),
        Ok((_, Err(refusal))) | Err(refusal) => return Ok(named.refuse(topic, refusal)),
    };
    if let Err(refusal) = authenticate(&desk.pool, integrator, &envelope).await? {
        tracing::warn!(%integrator, request_id = %request.request_id, %refusal, "booking request refused: not authenticated");
        return Ok(named.refuse(topic, refusal));
    }
    if let Err(refusal) = booking::check_fresh(request.sent_at, now) {
        return Ok(named.refuse(topic, refusal));
    }
    let reply = decide_once(desk, integrator, &request, now).await?;
    tracing::info!(%integrator, request_id = %request.request_id, action = %request.action.name(), ok = reply.ok, error = ?reply.error, "booking request answered");
    Ok(Answer { topic, reply })
}

/// Where the reply goes: the MQTT 5 response topic, else the request's `reply_to`, else the
/// integrator's default replies topic. One outside the integrator's subtree is refused with
/// `reply_topic_not_allowed`, to be answered on the default topic (returned with it).
pub fn reply_topic(
    integrator: &IntegratorId,
    response_topic: Option<&str>,
    reply_to: Option<&str>,
) -> Result<String, (String, Refusal)> {
    let default = topic::integrator_replies(integrator);
    match response_topic.or(reply_to) {
        None => Ok(default),
        Some(wanted) if topic::reply_topic_allowed(integrator, wanted) => Ok(wanted.to_owned()),
        Some(wanted) => {
            let detail = format!(
                "reply topic {wanted:?} is not under {} (or is its bookings topic)",
                topic::integrator_subtree(integrator)
            );
            let refusal = Refusal::new(ErrorCode::ReplyTopicNotAllowed, detail);
            Err((default, refusal))
        }
    }
}

/// `unknown_key` unless the envelope's key is `integrator`'s current one, `bad_signature`
/// unless it signed the request.
async fn authenticate(
    pool: &Pool,
    integrator: &IntegratorId,
    envelope: &BookingEnvelope,
) -> Result<Result<(), Refusal>, WorkError> {
    let client = pool.get().await?;
    let key = integrators::key_by_id(&client, &envelope.key_id).await?;
    let unknown = || {
        Refusal::new(
            ErrorCode::UnknownKey,
            format!(
                "{} is not a current key of integrator {integrator}",
                envelope.key_id
            ),
        )
    };
    let Some(key) = key else {
        return Ok(Err(unknown()));
    };
    if &key.integrator != integrator || key.revoked_at.is_some() {
        return Ok(Err(unknown()));
    }
    Ok(envelope.verify(&key.key).map_err(|_| {
        Refusal::new(
            ErrorCode::BadSignature,
            "the signature does not match the request text",
        )
    }))
}

/// Carries out a request unless its id was seen before, and records its reply in the same
/// transaction. The claim (the row inserted first) is held while the action runs: another
/// worker handling the same id waits on it, then finds the recorded reply. A request id seen
/// with another request, or from another integrator, is refused with `request_id_reused`.
async fn decide_once(
    desk: &Desk,
    integrator: &IntegratorId,
    request: &BookingRequest,
    now: DateTime<Utc>,
) -> Result<BookingReply, WorkError> {
    let request_id = request.request_id;
    let action = request.action.name();
    // The request without its sent_at and reply_to: a retry signed again later is the same.
    let fingerprint = serde_json::to_value(&request.action).unwrap_or_default();
    let mut client = desk.pool.get().await?;
    let mut tx = client.transaction().await?;
    let claimed = tx
        .execute(
            "INSERT INTO booking_requests (request_id, integrator, action, fingerprint, reply, decided_at)
             VALUES ($1, $2, $3, $4, 'null'::jsonb, $5) ON CONFLICT (request_id) DO NOTHING",
            &[
                &request_id.as_uuid(),
                &integrator.as_str(),
                &action.as_str(),
                &fingerprint,
                &now,
            ],
        )
        .await?;
    if claimed == 0 {
        let reply = recorded_reply(&tx, integrator, request, &fingerprint).await?;
        tx.commit().await?;
        return Ok(reply);
    }
    // On an error the transaction is dropped, which releases the claim for the retry.
    let reply = act::act(desk, &mut tx, integrator, request, now).await?;
    let recorded = serde_json::to_value(&reply).unwrap_or_default();
    tx.execute(
        "UPDATE booking_requests SET reply = $2 WHERE request_id = $1",
        &[&request_id.as_uuid(), &recorded],
    )
    .await?;
    tx.commit().await?;
    Ok(reply)
}

async fn recorded_reply(
    client: &impl GenericClient,
    integrator: &IntegratorId,
    request: &BookingRequest,
    fingerprint: &serde_json::Value,
) -> Result<BookingReply, WorkError> {
    let request_id = request.request_id;
    let row = client
        .query_one(
            "SELECT integrator, fingerprint, reply FROM booking_requests WHERE request_id = $1",
            &[&request_id.as_uuid()],
        )
        .await?;
    let (owner, seen, reply): (String, serde_json::Value, serde_json::Value) =
        (row.get(0), row.get(1), row.get(2));
    let same = owner == integrator.as_str() && &seen == fingerprint;
    match serde_json::from_value::<BookingReply>(reply) {
        Ok(reply) if same => {
            tracing::info!(%integrator, %request_id, "booking request seen before; sending its recorded reply");
            Ok(reply)
        }
        _ => Ok(BookingReply::refused(
            Some(request_id),
            Some(request.action.name()),
            Refusal::new(
                ErrorCode::RequestIdReused,
                format!("request id {request_id} was already used for another request"),
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_goes_to_the_response_topic_then_reply_to_then_the_default() {
        let acme = IntegratorId::parse("acme").unwrap();
        let own = "mujin/v1/integrators/acme/replies/web";
        let other = "mujin/v1/integrators/acme/replies/kiosk";
        assert_eq!(reply_topic(&acme, Some(own), Some(other)).unwrap(), own);
        assert_eq!(reply_topic(&acme, None, Some(other)).unwrap(), other);
        assert_eq!(
            reply_topic(&acme, None, None).unwrap(),
            "mujin/v1/integrators/acme/replies"
        );
        let (topic, refusal) =
            reply_topic(&acme, Some("mujin/v1/integrators/bob/replies"), Some(own)).unwrap_err();
        assert_eq!(topic, "mujin/v1/integrators/acme/replies");
        assert_eq!(refusal.code, ErrorCode::ReplyTopicNotAllowed);
    }

    #[test]
    fn a_refusal_names_what_could_be_read() {
        let id = RequestId::random();
        let named = Named {
            request_id: Some(id),
            action: Some(ActionName::Cancel),
        };
        let answer = named.refuse("t".into(), Refusal::new(ErrorCode::BadSignature, "no"));
        assert_eq!(answer.reply.request_id, Some(id));
        assert_eq!(answer.reply.action, Some(ActionName::Cancel));
        assert_eq!(answer.reply.error, Some(ErrorCode::BadSignature));
        assert!(!answer.reply.ok);
    }
}
