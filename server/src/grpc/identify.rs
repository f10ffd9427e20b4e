//! The layer in front of every route that decides who is calling and whether they may: it
//! authenticates the call's bearer token against the token file, puts the resulting [`Caller`]
//! in the request's extensions, checks the caller's role against the table in `roles.rs`, and
//! writes the audit line of every call that could change state (`audit.rs`).
//! A tower layer rather than a tonic interceptor, because it needs the method path.
//!
//! Without a token file every call runs as [`Caller::local`] (an admin), as before
//! authentication existed. Health and reflection are served to anyone.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use tonic::Status;
use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response, header::AUTHORIZATION};

use super::audit::{Audit, Audited};
use super::roles::{self, Access};
use crate::auth::Caller;
use crate::auth::tokens::TokenFile;

/// The authentication scheme clients send: `authorization: Bearer <token>`.
const BEARER: &str = "bearer ";

/// Puts the caller of each call in its extensions and refuses calls it may not make.
#[derive(Clone, Debug)]
pub struct IdentifyLayer {
    tokens: Option<Arc<TokenFile>>,
}

impl IdentifyLayer {
    /// Authenticates with `tokens`, or runs every call as [`Caller::local`] when `None`.
    pub(crate) fn new(tokens: Option<Arc<TokenFile>>) -> IdentifyLayer {
        IdentifyLayer { tokens }
    }
}

impl<S> tower::Layer<S> for IdentifyLayer {
    type Service = Identify<S>;

    fn layer(&self, inner: S) -> Identify<S> {
        Identify {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The service [`IdentifyLayer`] wraps around the routes.
#[derive(Clone, Debug)]
pub struct Identify<S> {
    inner: S,
    tokens: Option<Arc<TokenFile>>,
}

impl<S, B, ResBody> Service<Request<B>> for Identify<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<std::future::Ready<Result<S::Response, S::Error>>, Audited<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        let method = roles::method_name(path);
        let (caller, verdict) = match roles::access(path) {
            Access::Open => (None, Ok(())),
            Access::AtLeast(least) => {
                match identify(self.tokens.as_deref(), request.headers().get(AUTHORIZATION)) {
                    Ok(caller) => {
                        let verdict = permit(&caller, least, method);
                        (Some(caller), verdict)
                    }
                    Err(refused) => (None, Err(refused)),
                }
            }
        };
        let audit = roles::changes_state(path).then(|| Audit::start(caller.as_ref(), method));
        match verdict {
            Ok(()) => {
                if let Some(audit) = &audit {
                    request.extensions_mut().insert(audit.subject());
                }
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                Either::Right(Audited::new(self.inner.call(request), audit))
            }
            Err(status) => {
                if let Some(audit) = audit {
                    audit.finish(status.code());
                }
                Either::Left(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// The caller presenting `authorization`, or UNAUTHENTICATED. The message never repeats the
/// token.
fn identify(
    tokens: Option<&TokenFile>,
    authorization: Option<&tonic::codegen::http::HeaderValue>,
) -> Result<Caller, Status> {
    let Some(tokens) = tokens else {
        return Ok(Caller::local());
    };
    let Some(value) = authorization else {
        return Err(Status::unauthenticated(
            "this server needs a token: send `authorization: Bearer <token>` metadata",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .filter(|v| v.len() > BEARER.len() && v[..BEARER.len()].eq_ignore_ascii_case(BEARER))
        .map(|v| v[BEARER.len()..].trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated("malformed authorization metadata: expected `Bearer <token>`")
        })?;
    tokens
        .caller_for(token)
        .ok_or_else(|| Status::unauthenticated("unknown token"))
}

/// Whether `caller`'s role is at least `least`; PERMISSION_DENIED naming the role needed if not.
fn permit(caller: &Caller, least: crate::auth::Role, method: &str) -> Result<(), Status> {
    if caller.role >= least {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{method} needs role {}; this token ({}) has role {}",
        roles::roles_from(least),
        caller.name,
        caller.role
    )))
}
