//! What the handlers read from a request: the body, the query, the path parameter, each
//! refused as a problem naming the part that is wrong.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{BODY_LIMIT, MAX_PAGE};
use crate::problem::Problem;

/// A JSON body read whole (within the limit) and parsed with the failing field's path.
pub(super) struct JsonBody<T>(pub(super) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            Problem::new(
                if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                },
                "unreadable body",
                format!(
                    "the request body could not be read ({e}); the limit is {BODY_LIMIT} bytes"
                ),
            )
        })?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Problem::field("body", format!("the body is not JSON ({e})")))?;
        if !value.is_object() {
            return Err(Problem::field("body", "the body is a JSON object"));
        }
        serde_path_to_error::deserialize(value)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." { "body".to_owned() } else { path };
                Problem::field(&field, format!("{field}: {}", e.inner()))
            })
    }
}

/// The query string's parameters (a malformed one is a problem, not plain text).
pub(super) struct Params(pub(super) HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        axum::extract::Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|q| Self(q.0))
            .map_err(|e| Problem::field("query", format!("the query string is malformed ({e})")))
    }
}

/// The route's one path parameter.
pub(super) struct Seg(pub(super) String);

impl<S: Send + Sync> FromRequestParts<S> for Seg {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e| Problem::field("path", format!("the path is malformed ({e})")))
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    crate::auth::valid_tenant(s)
}

pub(super) fn name_param(name: &str) -> Result<String, Problem> {
    if valid_name(name) {
        Ok(name.to_owned())
    } else {
        Err(Problem::field(
            "name",
            "a deployment name is 1 to 63 of a-z, 0-9, '-', '_', '.' starting with a letter or digit",
        ))
    }
}

pub(super) fn id_param(id: &str) -> Result<i64, Problem> {
    id.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Problem::field("id", "a job id is a positive integer"))
}

pub(super) fn query_num(
    q: &HashMap<String, String>,
    key: &str,
    default: i64,
    max: i64,
) -> Result<i64, Problem> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (0..=max).contains(n))
            .ok_or_else(|| Problem::field(key, format!("{key} is an integer from 0 to {max}"))),
    }
}

pub(super) fn limit(q: &HashMap<String, String>) -> Result<usize, Problem> {
    let n = query_num(q, "limit", 50, MAX_PAGE as i64)?;
    Ok(n.max(1) as usize)
}
