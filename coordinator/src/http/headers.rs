//! The headers the API adds to OpenAI's and Anthropic's (the end customer
//! a request is for, the receipt id, the exact cost), read and written in
//! one place for every endpoint.

use axum::http::{HeaderMap, HeaderValue};

use crate::core::error::Error;

/// Header naming the builder's end customer (when the body has no `user`).
pub const END_CUSTOMER_HEADER: &str = "x-sharenet-end-customer";
/// Header carrying the receipt id (= job id) on completion responses.
pub const RECEIPT_HEADER: &str = "x-sharenet-receipt-id";
/// The exact charge of a non-streamed response, nano-USD.
pub const COST_HEADER: &str = "x-sharenet-cost-nano-usd";

/// The end customer a request is for: the OpenAI `user` field, else the
/// `x-sharenet-end-customer` header.
pub(super) fn end_customer(
    headers: &HeaderMap,
    user: Option<&str>,
) -> Result<Option<String>, Error> {
    let from_header = headers
        .get(END_CUSTOMER_HEADER)
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| Error::bad_request("x-sharenet-end-customer must be ASCII", None))?;
    let customer = user.map(str::to_string).or(from_header);
    if customer
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > 256)
    {
        return Err(Error::bad_request(
            "the end customer id must be 1 to 256 bytes",
            Some("user"),
        ));
    }
    Ok(customer)
}

/// `x-sharenet-cost-nano-usd`: the exact charge, for clients that read
/// headers (a stream's cost comes in its usage chunk, after the headers).
pub(super) fn cost_header(charge: &sharenet_market::Charge) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(COST_HEADER, HeaderValue::from(charge.total));
    headers
}

/// `x-sharenet-receipt-id`.
pub(super) fn receipt_header(receipt_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(receipt_id) {
        headers.insert(RECEIPT_HEADER, v);
    }
    headers
}
