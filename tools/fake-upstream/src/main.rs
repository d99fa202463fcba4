//! `fake-upstream`: a fake OpenAI-compatible model server for tests and
//! benchmarks.
//!
//! It binds, prints `LISTENING <addr>` on stdout (tests parse that line to
//! learn the ephemeral port), then serves until SIGTERM or SIGINT.

use std::error::Error;
use std::future::IntoFuture;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use clap::Parser;
use fake_upstream::{Config, router};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// After a shutdown signal, in-flight responses (such as a minute-long
/// `fault-slow-stream`) get this long to finish before the process exits, so
/// test teardown is never held up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A fake OpenAI-compatible upstream with fault modes selected by model name.
#[derive(Parser, Debug)]
#[command(name = "fake-upstream", version, about)]
struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Name used as the reply prefix ("NAME: prompt") and as `owned_by`.
    #[arg(long, default_value = "fake")]
    name: String,
    /// Comma-separated model ids listed by GET /v1/models.
    #[arg(long, default_value = "fake-model", value_delimiter = ',')]
    models: Vec<String>,
    /// Delay in milliseconds before responding to `fault-slow-first-byte`.
    #[arg(long, default_value_t = 3000)]
    slow_ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let cli = Cli::parse();
    let config = Config {
        name: cli.name,
        models: cli.models,
        slow_first_byte: Duration::from_millis(cli.slow_ms),
    };

    let listener = TcpListener::bind(&cli.listen).await?;
    let addr = listener.local_addr()?;
    // Small SSE events must leave immediately; Nagle's algorithm would add
    // delayed-ACK stalls that distort streaming benchmarks.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });

    // Signal handlers are installed before announcing the address, so a test
    // that sends SIGTERM as soon as it reads the line still gets a clean exit.
    let stopping = Arc::new(Notify::new());
    let signal = shutdown_signal(Arc::clone(&stopping))?;

    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "LISTENING {addr}")?;
        stdout.flush()?;
    }

    let server = axum::serve(listener, router(config)).with_graceful_shutdown(signal);
    tokio::select! {
        result = server.into_future() => result?,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {}
    }
    Ok(())
}

/// Registers the signal handlers up front (so failures surface as errors)
/// and returns a future that resolves on the first SIGTERM or SIGINT, after
/// telling `stopping` that the grace period has started.
fn shutdown_signal(
    stopping: Arc<Notify>,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    // Both handlers are created eagerly: `tokio::signal::ctrl_c` would only
    // install its handler when first polled, leaving a window where SIGINT
    // still kills the process with a non-zero status.
    #[cfg(unix)]
    let (mut terminate, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        // `notify_one` stores a permit, so the waiter sees it even if it has
        // not started waiting yet.
        stopping.notify_one();
    })
}
