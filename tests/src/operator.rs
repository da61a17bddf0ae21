//! Operators for tests: [`Operator::add`] registers one with a role (as `mujin-management
//! operator-add` does, without the key file) and keeps its private key, to sign requests,
//! publish them on its requests topic and wait for the replies.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use mujin_management::operators::{self, Role};
use mujin_protocol::message::{self, Reply, Request, RequestAction};
use mujin_protocol::signed::{self, sign_request_at};
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::topic::Topic;
use mujin_protocol::{KeyId, OperatorId, RequestId};

use crate::stack::Stack;

/// How long a test waits for a reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A registered operator and its private key.
pub struct Operator {
    pub id: OperatorId,
    pub key: SigningKey,
    /// The key's PKCS#8 document, as `operator-add` writes it to the operator's key file.
    pkcs8: Vec<u8>,
}

impl Operator {
    /// Registers operator `name` with `role` in the stack's database.
    pub async fn add(stack: &Stack, name: &str, role: Role) -> Operator {
        let operator = Operator::unregistered(name);
        operators::add(
            &stack.pool,
            &operator.id,
            role,
            &operator.key.public_key(),
            Utc::now(),
        )
        .await
        .expect("add the operator");
        operator
    }

    /// An operator with a fresh key that management does not know.
    pub fn unregistered(name: &str) -> Operator {
        let placeholder = KeyId::parse("op").expect("key id");
        let (_, pkcs8) = SigningKey::generate(placeholder).expect("a key");
        Operator {
            id: OperatorId::parse(name).expect("operator id"),
            key: signed::operator_key(&pkcs8).expect("an operator key"),
            pkcs8,
        }
    }

    /// Writes the private key where a console can read it (`--operator-key`), owner-only.
    pub fn write_key_file(&self, path: &Path) {
        std::fs::write(path, &self.pkcs8).expect("write the operator key");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .expect("make the operator key owner-only");
    }

    /// A new request with a fresh id, signed now.
    pub fn request(&self, action: RequestAction) -> Request {
        let mut request = Request::new(RequestId::random(), action);
        self.sign(&mut request);
        request
    }

    /// Stamps `request` with the current time and signs it.
    pub fn sign(&self, request: &mut Request) {
        sign_request_at(&self.key, request, Utc::now());
    }

    /// Signs a new request, publishes it on this operator's topic and returns the reply.
    pub async fn ask(&self, stack: &Stack, action: RequestAction) -> Reply {
        let request = self.request(action);
        self.send(stack, &request).await
    }

    /// Publishes `request` as it is on this operator's topic and waits for its first reply.
    pub async fn send(&self, stack: &Stack, request: &Request) -> Reply {
        publish(stack, &self.id, request).await;
        wait_replies(stack, &self.id, request.request_id, 1)
            .await
            .remove(0)
    }
}

/// Publishes `request` on `operator`'s requests topic, signed or not.
pub async fn publish(stack: &Stack, operator: &OperatorId, request: &Request) {
    publish_raw(stack, operator, message::encode(request)).await;
}

/// Publishes any payload on `operator`'s requests topic.
pub async fn publish_raw(stack: &Stack, operator: &OperatorId, payload: Vec<u8>) {
    let topic = Topic::Requests {
        operator: operator.clone(),
    };
    stack
        .observer
        .publish_raw(&topic.to_string(), payload)
        .await;
}

/// Every reply recorded on `operator`'s replies topic, in order.
pub fn replies(stack: &Stack, operator: &OperatorId) -> Vec<Reply> {
    stack
        .observer
        .recorded()
        .into_iter()
        .filter(
            |recorded| matches!(&recorded.topic, Topic::Replies { operator: o } if o == operator),
        )
        .filter_map(|recorded| message::decode(&recorded.payload).ok())
        .collect()
}

/// Waits until `count` replies to `request_id` were published on `operator`'s replies topic.
pub async fn wait_replies(
    stack: &Stack,
    operator: &OperatorId,
    request_id: RequestId,
    count: usize,
) -> Vec<Reply> {
    crate::wait_for(
        &format!("{count} replie(s) to request {request_id}"),
        REPLY_TIMEOUT,
        || {
            let found: Vec<Reply> = replies(stack, operator)
                .into_iter()
                .filter(|reply| reply.request_id == request_id)
                .collect();
            async move { (found.len() >= count).then_some(found) }
        },
    )
    .await
}
