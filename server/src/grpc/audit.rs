//! The audit trail: one structured log line (target `audit`) for every call that could change
//! state, whatever its outcome: who (token name and tenant), what (the method), on what (the
//! download's guid, or the transfer group), and the gRPC code it ended with. Calls refused before
//! a handler runs (no token, wrong role, overload) are audited too.
//!
//! The identify layer starts an [`Audit`] for each such call and logs it when the response is
//! ready; the handler names the subject with [`Subject::set`], because only it has decoded the
//! request. Select the lines with `TRANSFERD_LOG=audit=info,...`; they are at INFO, so the
//! default filter keeps them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::codegen::http::Response;

use crate::auth::Caller;
use crate::error::shorten;

/// The subject of an audited call, filled in by its handler.
#[derive(Clone, Debug, Default)]
pub(crate) struct Subject(Arc<Mutex<Option<String>>>);

impl Subject {
    /// The subject slot of `request`, if the call is audited.
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Subject {
        request
            .extensions()
            .get::<Subject>()
            .cloned()
            .unwrap_or_default()
    }

    /// Names what the call acts on (a guid or a transfer group). Echoed input, so shortened.
    pub(crate) fn set(&self, subject: &str) {
        *self.0.lock().expect("audit subject") = Some(shorten(subject).into_owned());
    }

    fn get(&self) -> String {
        self.0
            .lock()
            .expect("audit subject")
            .clone()
            .unwrap_or_else(|| "-".to_owned())
    }
}

/// Who made an audited call and which method, until its outcome is known.
#[derive(Debug)]
pub(crate) struct Audit {
    caller: Option<Caller>,
    method: String,
    subject: Subject,
}

impl Audit {
    /// Starts the audit of a call to `method` by `caller` (`None`: not authenticated).
    pub(crate) fn start(caller: Option<&Caller>, method: &str) -> Audit {
        Audit {
            caller: caller.cloned(),
            method: method.to_owned(),
            subject: Subject::default(),
        }
    }

    /// The slot the handler fills, to put in the request's extensions.
    pub(crate) fn subject(&self) -> Subject {
        self.subject.clone()
    }

    /// Logs the call with the code it ended with.
    pub(crate) fn finish(self, code: tonic::Code) {
        let (name, tenant) = match &self.caller {
            Some(caller) => (caller.name.as_ref(), caller.tenant.name()),
            None => ("-", "-"),
        };
        tracing::info!(
            target: "audit",
            caller = name,
            tenant,
            method = %self.method,
            subject = %self.subject.get(),
            code = ?code,
            "audit"
        );
    }

    /// Logs the call with the code of `response`: its `grpc-status` header when the call failed
    /// before any message (every refusal and error of a unary call), OK otherwise.
    pub(crate) fn finish_with<B>(self, response: &Response<B>) {
        let code = tonic::Status::from_header_map(response.headers())
            .map_or(tonic::Code::Ok, |status| status.code());
        self.finish(code);
    }
}

pin_project_lite::pin_project! {
    /// A response future that logs its call's audit line when it completes.
    pub struct Audited<F> {
        #[pin]
        inner: F,
        audit: Option<Audit>,
    }
}

impl<F> Audited<F> {
    /// `inner`, audited by `audit` if it is `Some`.
    pub(crate) fn new(inner: F, audit: Option<Audit>) -> Audited<F> {
        Audited { inner, audit }
    }
}

impl<F, B, E> Future for Audited<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Some(audit) = this.audit.take() {
            match &output {
                Ok(response) => audit.finish_with(response),
                // The connection failed under the call; the client saw no code.
                Err(_) => audit.finish(tonic::Code::Unknown),
            }
        }
        Poll::Ready(output)
    }
}
