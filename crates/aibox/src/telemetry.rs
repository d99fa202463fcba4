//! Logging and traces: the `tracing` subscriber, and its OpenTelemetry
//! layer exporting spans over OTLP/HTTP (protobuf) when `telemetry.traces`
//! is on.
//!
//! The log filter (`log.level`) applies to the log output only; the trace
//! layer has its own filter (aibox's own spans at `info`), so a quiet log
//! does not silence traces. Spans carry the GenAI semantic conventions for
//! model calls (`gen_ai.*`, set by the gateway); prompts and completions are
//! recorded only with `telemetry.capture_content: true` (seed 000 §9: they
//! may contain sensitive tenant data).
//!
//! Export runs on the SDK's own batch thread with a blocking HTTP client,
//! never on the request path; a collector that is down costs dropped spans,
//! not latency.

use std::collections::HashMap;
use std::time::Duration;

use aibox_config::{Config, LogFormat};
use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The target of the gateway's model-call spans (`aibox_gateway::telemetry`).
const GENAI_TARGET: &str = "aibox_gateway::genai";

/// What must be flushed at exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (bounded by the exporter timeout).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "traces: the last spans could not be exported");
        }
    }
}

fn provider(cfg: &Config) -> anyhow::Result<SdkTracerProvider> {
    let t = &cfg.telemetry;
    // reqwest is built without a default TLS provider (see aibox-router).
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .context("traces: cannot build the OTLP HTTP client")?;
    let mut headers = HashMap::new();
    if let Some(a) = &t.otlp_authorization {
        headers.insert("authorization".to_owned(), a.expose().to_owned());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(t.otlp_endpoint.as_str())
        .with_headers(headers)
        .with_timeout(Duration::from_secs(10))
        .build()
        .with_context(|| {
            format!(
                "traces: cannot build the OTLP exporter for {}; fix: telemetry.otlp_endpoint (AIBOX_OTLP_ENDPOINT)",
                t.otlp_endpoint
            )
        })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            t.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(t.service_name.clone())
                .build(),
        )
        .build())
}

/// Installs the subscriber: logs on stderr per `log.*`, and traces per
/// `telemetry.*`. Call outside the async runtime (the blocking HTTP client
/// of the exporter must not be built inside one).
pub fn init(cfg: &Config) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level).with_context(|| {
        format!(
            "log.level '{}' is not a valid filter; fix: use e.g. info, debug or aibox_router=debug,info (log.level or AIBOX_LOG_LEVEL)",
            cfg.log.level
        )
    })?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = match cfg.log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    // The model-call spans are for traces: in the log they would only
    // repeat the request span's context on every line.
    .with_filter(filter.and(tracing_subscriber::filter::filter_fn(|m| {
        !m.target().starts_with(GENAI_TARGET)
    })));
    let provider = if cfg.telemetry.traces {
        Some(provider(cfg)?)
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("aibox"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("aibox_gateway", tracing::Level::INFO)
                    .with_target(aibox_gateway::mcp::CLIENT_SPAN_TARGET, tracing::Level::INFO),
            )
    });
    // Without traces the OpenTelemetry layer is left out rather than added
    // as `None`: an absent `Option` layer is "interested" in every span and
    // event, which makes the registry create every `info` span (one per
    // request and model call) even when the log level filters them all out.
    match otel {
        Some(otel) => tracing_subscriber::registry()
            .with(fmt)
            .with(otel)
            .try_init(),
        None => tracing_subscriber::registry().with(fmt).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    if cfg.telemetry.traces {
        tracing::info!(
            endpoint = %cfg.telemetry.otlp_endpoint,
            sample_ratio = cfg.telemetry.sample_ratio,
            capture_content = cfg.telemetry.capture_content,
            "traces are exported over OTLP/HTTP"
        );
    }
    Ok(Telemetry { provider })
}
