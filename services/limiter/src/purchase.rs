//! The sale a `Purchase` is for, read from the call's own request message (its first gRPC
//! frame) instead of a header the caller writes: the sidecar charges a sale's limit to the sale
//! the call buys from, and a call it cannot read is refused, never let through unjudged.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use prost::Message;

/// The method whose request names its sale in field 1.
pub const PURCHASE_PATH: &str = "/flashsale.v1.FlashSale/Purchase";

/// Most bytes read ahead to find a Purchase's sale (a Purchase request is a few hundred).
const MOST_BYTES: usize = 64 * 1024;

/// The sale a call's own request names: the `sale` source of the limit layer takes it over
/// the `flashsale-sale-id` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleOfCall(pub String);

/// A request body whose first bytes were read ahead: those, then the rest as it comes.
#[derive(Debug)]
pub struct ReadAhead {
    head: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
    rest: Option<Incoming>,
}

impl ReadAhead {
    /// A body nothing was read from.
    pub fn untouched(body: Incoming) -> Self {
        Self {
            head: None,
            trailers: None,
            rest: Some(body),
        }
    }
}

impl Body for ReadAhead {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(head) = this.head.take().filter(|h| !h.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if let Some(rest) = this.rest.as_mut() {
            return Pin::new(rest).poll_frame(cx);
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.head.as_ref().is_none_or(Bytes::is_empty)
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }
}

/// For a `Purchase`, reads its request message ahead, records its sale as [`SaleOfCall`] and
/// hands the body on whole; other calls pass untouched. A Purchase whose message cannot be
/// read (compressed, over 64 KiB, cut short, not a `PurchaseRequest`, no sale) is refused.
pub async fn read_sale(
    request: http::Request<Incoming>,
) -> Result<http::Request<ReadAhead>, tonic::Status> {
    let (mut parts, mut body) = request.into_parts();
    if parts.uri.path() != PURCHASE_PATH {
        return Ok(http::Request::from_parts(parts, ReadAhead::untouched(body)));
    }
    let mut head = BytesMut::new();
    let mut trailers = None;
    let mut ended = false;
    while first_message_len(&head).is_none_or(|n| head.len() < n) {
        if first_message_len(&head).is_some_and(|n| n > MOST_BYTES) || head.len() > MOST_BYTES {
            return Err(invalid(format!(
                "a Purchase request of more than {MOST_BYTES} bytes"
            )));
        }
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => head.extend_from_slice(&data),
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    ended = true;
                    break;
                }
            },
            Some(Err(e)) => return Err(tonic::Status::cancelled(format!("request body: {e}"))),
            None => {
                ended = true;
                break;
            }
        }
    }
    let sale_id = sale_of(&head)?;
    parts.extensions.insert(SaleOfCall(sale_id));
    let body = ReadAhead {
        head: Some(head.freeze()),
        trailers,
        rest: (!ended).then_some(body),
    };
    Ok(http::Request::from_parts(parts, body))
}

/// The bytes the first gRPC message takes (its 5-byte prefix included), once the prefix is in.
fn first_message_len(head: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = head.get(1..5)?.try_into().ok()?;
    Some(5 + u32::from_be_bytes(prefix) as usize)
}

/// Field 1 of the `PurchaseRequest` in the first gRPC message of `head` (its 5-byte prefix
/// included): the sale a Purchase buys from, or why it cannot be read.
pub fn sale_of(head: &[u8]) -> Result<String, tonic::Status> {
    let len = first_message_len(head)
        .filter(|n| head.len() >= *n)
        .ok_or_else(|| invalid("the call ended before its request message".into()))?;
    if head[0] != 0 {
        return Err(invalid(
            "a compressed Purchase request cannot be judged by the rate limit".into(),
        ));
    }
    let request = flashsale_proto::v1::PurchaseRequest::decode(&head[5..len])
        .map_err(|e| invalid(format!("the Purchase request does not decode: {e}")))?;
    if request.sale_id.is_empty() {
        return Err(invalid("sale_id is required".into()));
    }
    Ok(request.sale_id)
}

fn invalid(why: String) -> tonic::Status {
    flashsale_runtime::to_status(&crate::Error::InvalidArgument(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend((message.len() as u32).to_be_bytes());
        framed.extend(message);
        framed
    }

    #[test]
    fn the_sale_comes_from_field_one() {
        let request = flashsale_proto::v1::PurchaseRequest {
            sale_id: "sale-7".into(),
            quantity: 1,
            idempotency_key: "k".into(),
            purchase_token: String::new(),
        };
        let message = framed(&request.encode_to_vec());
        assert_eq!(sale_of(&message).unwrap(), "sale-7");
        assert!(sale_of(&message[..message.len() - 1]).is_err(), "cut short");
        let mut compressed = message;
        compressed[0] = 1;
        assert!(sale_of(&compressed).is_err(), "compressed");
        assert!(sale_of(&framed(&[])).is_err(), "no sale");
        assert!(
            sale_of(&framed(&[0xff, 0xff])).is_err(),
            "not a PurchaseRequest"
        );
    }
}
