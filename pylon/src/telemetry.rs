//! Traces: the node's `tracing` spans (connections, inbound streams of every protocol and
//! role, DHT lookups, relay circuits, AutoNAT dial-backs) exported to an OpenTelemetry
//! collector over OTLP/HTTP (protobuf).
//!
//! On when an endpoint is configured (`[telemetry] otlp_endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and neither
//! `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says otherwise. The service
//! name comes from `OTEL_SERVICE_NAME` (default `pylon`), the sampling ratio from
//! `OTEL_TRACES_SAMPLER=traceidratio` / `parentbased_traceidratio` with
//! `OTEL_TRACES_SAMPLER_ARG`, the batching from `OTEL_BSP_MAX_QUEUE_SIZE`,
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY` and
//! `OTEL_BSP_EXPORT_TIMEOUT` (milliseconds); headers, compression and the per-signal
//! endpoint are read by the OTLP exporter itself (`OTEL_EXPORTER_OTLP_*`).
//!
//! **Never blocks the node**: a finished span goes into a bounded queue with `try_send`;
//! when the queue is full (the collector is slow or gone) the span is dropped and counted
//! (`pylon_trace_spans_dropped_total{reason="queue_full"}`). One task batches the queue
//! and exports, each export under a timeout; a failed export drops its batch and counts it
//! (`reason="export_failed"`). Exported spans: `pylon_trace_spans_exported_total`.
//!
//! Not here: which spans exist (they are where the work is, in `pylon-node` and
//! `pylon-roles`, at info level, so the log filter governs them too), or metrics and logs
//! over OTLP (Prometheus serves metrics).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::SpanExporter as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Span, SpanData, SpanProcessor};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

/// Largest queue and batch an operator may ask for.
const MAX_QUEUE: usize = 1 << 20;

/// Settings, read from the config file and the `OTEL_*` environment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    /// The collector's OTLP/HTTP base URL (`http://host:4318`); `/v1/traces` is appended.
    /// `None`: the exporter takes `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as given).
    pub endpoint: Option<String>,
    pub service_name: String,
    /// Share of traces kept (1.0 = all).
    pub sample_ratio: f64,
    /// Finished spans waiting for export, at most; more are dropped.
    pub max_queue: usize,
    /// Spans per export, at most.
    pub max_batch: usize,
    /// How long the first span of a batch waits for company.
    pub delay: Duration,
    /// One export, at most.
    pub export_timeout: Duration,
}

impl Config {
    /// The settings, or `None` when traces are off. `file_endpoint` is
    /// `[telemetry] otlp_endpoint`; `var` reads the environment (the binary's own
    /// lookup, so tests can pass theirs). Errors name the variable and the value.
    pub(crate) fn from_sources(
        file_endpoint: Option<&str>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Config>, String> {
        let flag = |name: &str| var(name).map(|v| v.trim().to_ascii_lowercase());
        if flag("OTEL_SDK_DISABLED").as_deref() == Some("true") {
            return Ok(None);
        }
        match flag("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other}: only \"otlp\" and \"none\" are supported"
                ))
            }
        }
        if let Some(p) = flag("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| flag("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            if p != "http/protobuf" {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={p}: only \"http/protobuf\" is supported (OTLP over HTTP, port 4318)"
                ));
            }
        }
        let signal = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|s| !s.is_empty());
        let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .filter(|s| !s.is_empty())
            .or_else(|| file_endpoint.filter(|s| !s.is_empty()).map(str::to_owned));
        if signal.is_none() && endpoint.is_none() {
            return Ok(None);
        }
        for url in signal.iter().chain(&endpoint) {
            if !url.starts_with("http://") {
                return Err(format!(
                    "OTLP endpoint {url}: must be an http:// URL (put a collector beside the node for TLS)"
                ));
            }
        }
        let number = |name: &str, default: usize| -> Result<usize, String> {
            match var(name) {
                None => Ok(default),
                Some(v) => match v.trim().parse::<usize>() {
                    Ok(n) if (1..=MAX_QUEUE).contains(&n) => Ok(n),
                    _ => Err(format!(
                        "{name}={v}: must be a whole number from 1 to {MAX_QUEUE}"
                    )),
                },
            }
        };
        let millis = |name: &str, default: u64| -> Result<Duration, String> {
            match var(name) {
                None => Ok(Duration::from_millis(default)),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if (1..=600_000).contains(&n) => Ok(Duration::from_millis(n)),
                    _ => Err(format!("{name}={v}: must be milliseconds from 1 to 600000")),
                },
            }
        };
        let sample_ratio = match flag("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("always_on") | Some("parentbased_always_on") => 1.0,
            Some("always_off") | Some("parentbased_always_off") => 0.0,
            Some("traceidratio") | Some("parentbased_traceidratio") => {
                let arg = var("OTEL_TRACES_SAMPLER_ARG").unwrap_or_else(|| "1.0".into());
                match arg.trim().parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => r,
                    _ => {
                        return Err(format!(
                            "OTEL_TRACES_SAMPLER_ARG={arg}: must be a ratio from 0 to 1"
                        ))
                    }
                }
            }
            Some(other) => return Err(format!("OTEL_TRACES_SAMPLER={other}: not supported")),
        };
        let max_queue = number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)?;
        let max_batch = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?.min(max_queue);
        Ok(Some(Config {
            endpoint: if signal.is_some() { None } else { endpoint },
            service_name: var("OTEL_SERVICE_NAME")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "pylon".into()),
            sample_ratio,
            max_queue,
            max_batch,
            delay: millis("OTEL_BSP_SCHEDULE_DELAY", 5000)?,
            export_timeout: millis("OTEL_BSP_EXPORT_TIMEOUT", 30_000)?,
        }))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// The counters of the export path.
#[derive(Clone, Default)]
struct Counters {
    exported: Counter,
    dropped: Family<DropLabels, Counter>,
}

impl Counters {
    fn dropped(&self, reason: &'static str, n: usize) {
        self.dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(n as u64);
    }
}

/// Finished spans into the bounded queue; never waits.
#[derive(Debug)]
struct Dropping {
    queue: mpsc::Sender<SpanData>,
    counters: CountersRef,
}

/// `Counters` is not `Debug`; the processor must be.
#[derive(Clone)]
struct CountersRef(Counters);

impl std::fmt::Debug for CountersRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

impl SpanProcessor for Dropping {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.counters.0.dropped("queue_full", 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        // The queue's task is stopped and drained by `Traces::shutdown`, asynchronously.
        Ok(())
    }
}

/// The layer that turns spans into OpenTelemetry spans, first on the subscriber.
pub(crate) type Layer =
    Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static>;

/// Running trace export: the provider behind the tracing layer, and the export task.
pub(crate) struct Traces {
    provider: SdkTracerProvider,
    task: tokio::task::JoinHandle<()>,
    counters: CountersRef,
}

impl Traces {
    /// Starts the export (on the current tokio runtime: enter it first) and returns it
    /// with the layer to put first on the subscriber. Its counters join the metrics with
    /// [`Traces::register`].
    pub(crate) fn start(config: &Config) -> Result<(Traces, Layer), String> {
        let mut builder = SpanExporter::builder()
            .with_http()
            .with_timeout(config.export_timeout);
        if let Some(base) = &config.endpoint {
            builder = builder.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
        }
        let mut exporter = builder.build().map_err(|e| format!("OTLP exporter: {e}"))?;
        let counters = Counters::default();
        let counters_for_metrics = counters.clone();
        let (queue, mut spans) = mpsc::channel::<SpanData>(config.max_queue);
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        exporter.set_resource(&resource);
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_span_processor(Dropping {
                queue,
                counters: CountersRef(counters.clone()),
            })
            .build();
        let (max_batch, delay, timeout) = (config.max_batch, config.delay, config.export_timeout);
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            loop {
                // The first span of a batch, then more until the batch is full or the
                // delay is over.
                let Some(first) = spans.recv().await else {
                    break;
                };
                batch.push(first);
                let deadline = tokio::time::Instant::now() + delay;
                while batch.len() < max_batch {
                    match tokio::time::timeout_at(deadline, spans.recv()).await {
                        Ok(Some(span)) => batch.push(span),
                        Ok(None) | Err(_) => break,
                    }
                }
                let n = batch.len();
                let sent =
                    tokio::time::timeout(timeout, exporter.export(std::mem::take(&mut batch)))
                        .await;
                match sent {
                    Ok(Ok(())) => {
                        counters.exported.inc_by(n as u64);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(target: "pylon::telemetry", "trace export failed: {e}");
                        counters.dropped("export_failed", n);
                    }
                    Err(_) => {
                        tracing::debug!(target: "pylon::telemetry", "trace export timed out");
                        counters.dropped("export_failed", n);
                    }
                }
            }
            let _ = exporter.shutdown();
        });
        let tracer = provider.tracer("pylon");
        let layer = Box::new(tracing_opentelemetry::layer().with_tracer(tracer));
        Ok((
            Traces {
                provider,
                task,
                counters: CountersRef(counters_for_metrics),
            },
            layer,
        ))
    }

    /// Registers the export's counters (`pylon_trace_spans_*`).
    pub(crate) fn register(&self, registry: &mut Registry) {
        let counters = &self.counters.0;
        registry.register(
            "pylon_trace_spans_exported",
            "Spans exported to the OTLP collector",
            counters.exported.clone(),
        );
        registry.register(
            "pylon_trace_spans_dropped",
            "Spans dropped: the export queue was full, or their export failed",
            counters.dropped.clone(),
        );
    }

    /// Ends the provider (no new spans), then lets the task export what is queued, for at
    /// most `grace`.
    pub(crate) async fn shutdown(self, grace: Duration) {
        // Dropping the provider's processor closes the queue once the last span ends.
        let _ = self.provider.shutdown();
        drop(self.provider);
        let _ = tokio::time::timeout(grace, self.task).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert_eq!(Config::from_sources(None, env(&[])), Ok(None));
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        assert!(Config::from_sources(None, env(&on)).unwrap().is_some());
        let off = [on[0], ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(Config::from_sources(None, env(&off)), Ok(None));
        let none = [on[0], ("OTEL_TRACES_EXPORTER", "none")];
        assert_eq!(Config::from_sources(None, env(&none)), Ok(None));
    }

    #[test]
    fn the_environment_wins_over_the_file_and_bad_values_are_named() {
        let c = Config::from_sources(
            Some("http://file:4318"),
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_SERVICE_NAME", "relay-7"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://env:4318"));
        assert_eq!(c.service_name, "relay-7");
        assert_eq!(c.sample_ratio, 0.25);
        assert_eq!((c.max_queue, c.max_batch), (16, 16));
        assert_eq!(c.delay, Duration::from_millis(100));
        let file = Config::from_sources(Some("http://file:4318"), env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(file.endpoint.as_deref(), Some("http://file:4318"));
        for (k, v) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ] {
            let mut pairs = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"), (k, v)];
            if k == "OTEL_TRACES_SAMPLER_ARG" {
                pairs.push(("OTEL_TRACES_SAMPLER", "traceidratio"));
            }
            let e = Config::from_sources(None, env(&pairs)).unwrap_err();
            assert!(e.contains(k) && e.contains(v), "{e}");
        }
        let https = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://x:4318")]);
        assert!(Config::from_sources(None, https)
            .unwrap_err()
            .contains("http://"));
    }
}
