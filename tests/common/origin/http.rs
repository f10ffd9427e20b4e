//! The request handler: records the request, then answers it as the path's [`Resource`] says:
//! 404 for unknown paths, status faults, single byte ranges honoured under `If-Range`
//! (RFC 9110 §13.1.5, §14), 416 past the end, and the resource's validators.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::watch;

use super::body::{Cut, ResponseBody, endless_body, stream_body};
use super::conn::ConnCtl;
use super::resource::{Fault, Resource};
use super::{RecordedRequest, State};

/// Answers one request on connection `conn` and records it in `state`.
pub(super) fn handle(
    state: &Arc<State>,
    conn: &Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let (resource, release, fault) = record(state, &req);

    let is_head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut resp = text_response(StatusCode::METHOD_NOT_ALLOWED, false);
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
    };
    let (Some(resource), Some(release)) = (resource, release) else {
        return text_response(StatusCode::NOT_FOUND, is_head);
    };

    if let Some(Fault::Status { code, retry_after }) = &fault {
        let status = StatusCode::from_u16(*code).expect("status validated by Resource::faults");
        let mut resp = text_response(status, is_head);
        if let Some(v) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, hv(v.clone()));
        }
        return resp;
    }

    let status = StatusCode::from_u16(resource.status).expect("status validated by setter");
    if status != StatusCode::OK {
        let mut resp = text_response(status, is_head);
        add_resource_headers(resp.headers_mut(), &resource);
        if let Some(location) = &resource.location {
            resp.headers_mut()
                .insert(header::LOCATION, hv(location.clone()));
        }
        return resp;
    }
    if let Some(Fault::Endless) = fault {
        let mut resp = Response::new(endless_body(state, conn, &resource, release));
        add_resource_headers(resp.headers_mut(), &resource);
        return resp;
    }
    let mut resource = resource;
    if let Some(Fault::Trickle(throttle)) = fault {
        resource.throttle = Some(throttle);
    }

    let selection = match select(req.headers(), &resource, fault.as_ref()) {
        Ok(selection) => selection,
        Err(RangeNotSatisfiable { len }) => {
            let mut resp = empty_response(StatusCode::RANGE_NOT_SATISFIABLE);
            add_resource_headers(resp.headers_mut(), &resource);
            resp.headers_mut()
                .insert(header::CONTENT_RANGE, hv(format!("bytes */{len}")));
            return resp;
        }
    };
    let body = if is_head {
        empty_body()
    } else {
        let cut = body_cut(fault.as_ref(), selection.slice.len() as u64);
        stream_body(
            state,
            conn,
            selection.slice.clone(),
            &resource,
            cut,
            release,
        )
    };
    selection_response(body, selection, &resource)
}

/// Records the request in the log and counts it as a hit on its path; returns what the path
/// serves, its release flag, and the fault for this hit (see [`Resource::faults`]).
fn record(
    state: &State,
    req: &Request<Incoming>,
) -> (
    Option<Resource>,
    Option<watch::Receiver<bool>>,
    Option<Fault>,
) {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();

    let mut inner = state.lock();
    inner.requests.push(RecordedRequest {
        method: req.method().as_str().to_owned(),
        path: path.clone(),
        headers,
    });
    let hits = inner.hits.entry(path.clone()).or_insert(0);
    let attempt = *hits;
    *hits += 1;
    let resource = inner.resources.get(&path).cloned();
    let fault = resource
        .as_ref()
        .and_then(|r| r.faults.get(attempt).cloned().flatten());
    let release = inner.released.get(&path).map(watch::Sender::subscribe);
    (resource, release, fault)
}

/// The part of a 200 resource that a GET or HEAD is answered with.
struct Selection {
    /// 200, or 206 for an honoured range.
    status: StatusCode,
    /// The `Content-Range` of a 206.
    content_range: Option<String>,
    /// The body bytes to send (all of them for a HEAD too, for `Content-Length`).
    slice: Bytes,
}

/// A requested range that starts past the end of a body of `len` bytes: answered with 416.
struct RangeNotSatisfiable {
    len: u64,
}

/// Picks the whole body or the requested range (shifted by a [`Fault::ShiftRange`]).
fn select(
    headers: &HeaderMap,
    resource: &Resource,
    fault: Option<&Fault>,
) -> Result<Selection, RangeNotSatisfiable> {
    let len = resource.body.len() as u64;
    let whole = Selection {
        status: StatusCode::OK,
        content_range: None,
        slice: resource.body.clone(),
    };
    if let Some(&Fault::Partial {
        start,
        end,
        unknown_total,
    }) = fault
    {
        let total = if unknown_total {
            "*".into()
        } else {
            len.to_string()
        };
        return Ok(Selection {
            status: StatusCode::PARTIAL_CONTENT,
            content_range: Some(format!("bytes {start}-{end}/{total}")),
            slice: resource.body.slice(start as usize..=end as usize),
        });
    }
    if resource.ignore_range {
        return Ok(whole);
    }
    let Some((start, end)) = requested_range(headers, resource) else {
        return Ok(whole);
    };
    if start >= len {
        return Err(RangeNotSatisfiable { len });
    }
    let mut start = start;
    let mut last = end.map_or(len - 1, |e| e.min(len - 1));
    if let Some(&Fault::ShiftRange(by)) = fault {
        // Shift both ends by what the start could actually move, so the range keeps its
        // length unless it runs past the end of the file.
        let shifted = (i128::from(start) + i128::from(by)).clamp(0, i128::from(len - 1));
        let shifted = u64::try_from(shifted).expect("clamped to the file");
        last = (last + shifted).saturating_sub(start).min(len - 1);
        start = shifted;
    }
    Ok(Selection {
        status: StatusCode::PARTIAL_CONTENT,
        content_range: Some(format!("bytes {start}-{last}/{len}")),
        slice: resource.body.slice(start as usize..=last as usize),
    })
}

/// Where a body fault cuts a body of `len` bytes, if one applies: a fault at or past the end
/// would come after a complete response, so the response is served normally.
fn body_cut(fault: Option<&Fault>, len: u64) -> Option<(u64, Cut)> {
    match fault {
        Some(&Fault::ResetAfter(n)) => Some((n, Cut::Reset)),
        Some(&Fault::TruncateAfter(n)) => Some((n, Cut::Truncate)),
        Some(&Fault::StallAfter(n)) => Some((n, Cut::Stall)),
        _ => None,
    }
    .filter(|&(n, _)| n < len)
}

/// The response for `selection` with `body`, and the resource's headers.
fn selection_response(
    body: ResponseBody,
    selection: Selection,
    resource: &Resource,
) -> Response<ResponseBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = selection.status;
    let headers = resp.headers_mut();
    add_resource_headers(headers, resource);
    if let Some(cr) = selection.content_range {
        headers.insert(header::CONTENT_RANGE, hv(cr));
    }
    if !resource.chunked {
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(selection.slice.len()),
        );
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// The byte range to serve, if the request asks for one that should be honoured: a single
/// `bytes=N-` or `bytes=N-M` whose `If-Range` (if any) still matches. Returns `(start, end)`
/// with `end` inclusive and not yet clamped to the body. Malformed or unsupported ranges are
/// ignored (a full 200), which RFC 9110 §14.2 permits.
fn requested_range(headers: &HeaderMap, resource: &Resource) -> Option<(u64, Option<u64>)> {
    let range = headers.get(header::RANGE)?.to_str().ok()?;
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        let if_range = if_range.to_str().ok()?;
        if !if_range_matches(if_range, resource) {
            return None;
        }
    }
    let spec = range.trim().strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end = end.trim();
    if end.is_empty() {
        return Some((start, None));
    }
    let end: u64 = end.parse().ok()?;
    (end >= start).then_some((start, Some(end)))
}

/// RFC 9110 §13.1.5: an entity-tag `If-Range` needs a strong, byte-identical match; a date
/// needs to equal `Last-Modified` exactly.
fn if_range_matches(if_range: &str, resource: &Resource) -> bool {
    let if_range = if_range.trim();
    if if_range.starts_with('"') || if_range.starts_with("W/") {
        match &resource.etag {
            Some(etag) => {
                !etag.starts_with("W/") && !if_range.starts_with("W/") && etag == if_range
            }
            None => false,
        }
    } else {
        resource.last_modified.as_deref() == Some(if_range)
    }
}

fn add_resource_headers(headers: &mut HeaderMap, resource: &Resource) {
    if let Some(etag) = &resource.etag {
        headers.insert(header::ETAG, hv(etag.clone()));
    }
    if let Some(lm) = &resource.last_modified {
        headers.insert(header::LAST_MODIFIED, hv(lm.clone()));
    }
    if resource.accept_ranges {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
}

fn hv(value: String) -> HeaderValue {
    HeaderValue::try_from(value).expect("test supplied a header value that is not valid HTTP")
}

fn text_response(status: StatusCode, is_head: bool) -> Response<ResponseBody> {
    // 204 and 304 must not carry a body.
    if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
        return empty_response(status);
    }
    let text = format!(
        "{} {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    let len = text.len();
    let body = if is_head {
        empty_body()
    } else {
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn empty_response(status: StatusCode) -> Response<ResponseBody> {
    let mut resp = Response::new(empty_body());
    *resp.status_mut() = status;
    resp
}

fn empty_body() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed()
}
