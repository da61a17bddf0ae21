//! The MQTT 3.1.1 listener's protocol: rumqttd's own, except that MQTT 5 properties are left
//! out of what goes to a 3.1.1 client.
//!
//! A message an MQTT 5 client publishes keeps its properties (response topic, correlation data,
//! user properties, …) in rumqttd's log, and rumqttd's 3.1.1 writer panics on a packet with
//! properties (`unreachable!`): every 3.1.1 subscriber of that topic lost its connection. With
//! booking over MQTT (integrators on MQTT 5, management's replies with correlation data), and
//! since any MQTT 5 client could do it on purpose, 3.1.1 clients get the message without them;
//! 3.1.1 has no place for them anyway.

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Error, Packet, Protocol};

/// rumqttd's MQTT 3.1.1 protocol that drops MQTT 5 properties when writing.
#[derive(Debug, Clone)]
pub(crate) struct V4WithoutProperties;

impl Protocol for V4WithoutProperties {
    fn read_mut(&mut self, stream: &mut BytesMut, max_size: usize) -> Result<Packet, Error> {
        V4.read_mut(stream, max_size)
    }

    fn write(&self, packet: Packet, write: &mut BytesMut) -> Result<usize, Error> {
        V4.write(without_properties(packet), write)
    }
}

fn without_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(publish, _) => Packet::Publish(publish, None),
        Packet::PubAck(ack, _) => Packet::PubAck(ack, None),
        Packet::SubAck(ack, _) => Packet::SubAck(ack, None),
        Packet::PubRec(rec, _) => Packet::PubRec(rec, None),
        Packet::PubRel(rel, _) => Packet::PubRel(rel, None),
        Packet::PubComp(comp, _) => Packet::PubComp(comp, None),
        Packet::UnsubAck(ack, _) => Packet::UnsubAck(ack, None),
        Packet::Disconnect(disconnect, _) => Packet::Disconnect(disconnect, None),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use rumqttd::protocol::{Publish, PublishProperties};

    use super::*;

    #[test]
    fn a_message_with_mqtt5_properties_is_written_without_them() {
        let publish = Publish::new("mujin/v1/integrators/acme/replies", "{}", false);
        let properties = PublishProperties {
            response_topic: Some("mujin/v1/integrators/acme/r".into()),
            correlation_data: Some("c-1".into()),
            ..PublishProperties::default()
        };
        let mut with = BytesMut::new();
        V4WithoutProperties
            .write(
                Packet::Publish(publish.clone(), Some(properties)),
                &mut with,
            )
            .unwrap();
        let mut plain = BytesMut::new();
        V4.write(Packet::Publish(publish, None), &mut plain)
            .unwrap();
        assert_eq!(with, plain);
    }
}
