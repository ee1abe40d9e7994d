//! Trace context on the wire: the span a request is sent from travels with it.
//!
//! When the calling code runs inside a span that OpenTelemetry records (a `tracing` span
//! seen by a `tracing-opentelemetry` layer with a sampled trace), every request sent from it
//! carries that span's W3C trace context as a [`Request::Traced`] envelope, and the node
//! handles it as a child span — and so do the replicas the node writes to. Without such a
//! layer (the default: no OTLP endpoint configured) [`current`] finds no span and requests go
//! out as they are: nothing is added to the wire and nothing is allocated.
//!
//! [`Request::Traced`]: strata_proto::wire::Request::Traced

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use strata_proto::wire::{Request, RequestFrame, TraceContext};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The trace context of the current span, when OpenTelemetry records it.
pub fn current() -> Option<TraceContext> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_ref = context.span();
    let sc = span_ref.span_context();
    if !sc.is_valid() || !sc.is_sampled() {
        return None;
    }
    Some(TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}

/// An OpenTelemetry context whose remote parent is the span `trace` describes; none if the
/// ids are invalid (all zero).
pub fn parent_context(trace: &TraceContext) -> Option<opentelemetry::Context> {
    let sc = SpanContext::new(
        TraceId::from_bytes(trace.trace_id),
        SpanId::from_bytes(trace.span_id),
        TraceFlags::new(trace.flags),
        true,
        TraceState::default(),
    );
    sc.is_valid()
        .then(|| opentelemetry::Context::new().with_remote_span_context(sc))
}

/// `frame` wrapped in a [`Request::Traced`] envelope when the current span is recorded;
/// none otherwise (send `frame` as it is).
pub fn traced_frame(frame: &RequestFrame) -> Option<RequestFrame> {
    if matches!(frame.request, Request::Traced { .. }) {
        return None;
    }
    let trace = current()?;
    Some(RequestFrame {
        id: frame.id,
        epoch: frame.epoch,
        request: Request::Traced {
            trace,
            request: Box::new(frame.request.clone()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_recorded_span_nothing_is_added() {
        let frame = RequestFrame {
            id: 1,
            epoch: 0,
            request: Request::Ping,
        };
        assert_eq!(current(), None);
        assert_eq!(traced_frame(&frame), None);
    }

    #[test]
    fn remote_parents_keep_their_ids_and_invalid_ones_are_refused() {
        let trace = TraceContext {
            trace_id: [7; 16],
            span_id: [9; 8],
            flags: 1,
        };
        let cx = parent_context(&trace).expect("valid ids");
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(sc.trace_id().to_bytes(), [7; 16]);
        assert_eq!(sc.span_id().to_bytes(), [9; 8]);
        assert!(sc.is_remote() && sc.is_sampled());
        let zero = TraceContext {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: 1,
        };
        assert!(parent_context(&zero).is_none());
    }
}
