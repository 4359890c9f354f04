//! How `run` stops before its work ends: a signal (SIGINT, SIGTERM, SIGHUP)
//! or its standard output closed (`| head -1`). Either way what it started
//! on the server is cancelled before it exits: nothing keeps running for a
//! reader that is gone.

use std::io::Write;
use std::process::ExitCode;

use futures_util::FutureExt;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Why `run` stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Halt {
    /// This signal arrived.
    Signal(i32),
    /// Standard output was closed.
    Closed,
}

impl Halt {
    /// The exit status a shell gives a process ended this way: 128 plus
    /// the signal (SIGPIPE for a closed output).
    pub(super) fn code(self) -> ExitCode {
        let signal = match self {
            Halt::Signal(s) => s,
            Halt::Closed => libc::SIGPIPE,
        };
        ExitCode::from(u8::try_from(128 + signal).unwrap_or(u8::MAX))
    }
}

/// Why a step of `run` did not go on.
#[derive(Debug)]
pub(super) enum Failure {
    /// Stopped early: cancel what was started.
    Halt(Halt),
    /// An error to report.
    Error(String),
}

impl From<modal_agents::client::ClientError> for Failure {
    fn from(e: modal_agents::client::ClientError) -> Self {
        Failure::Error(e.to_string())
    }
}

/// The signals that stop `run`, listened for from its start so that none
/// is missed between two waits.
pub(super) struct Stop {
    signals: Vec<(i32, Signal)>,
}

impl Stop {
    /// Listens for SIGINT, SIGTERM and SIGHUP (instead of dying of them).
    pub(super) fn listen() -> Result<Stop, String> {
        let kinds = [
            (libc::SIGINT, SignalKind::interrupt()),
            (libc::SIGTERM, SignalKind::terminate()),
            (libc::SIGHUP, SignalKind::hangup()),
        ];
        let signals = kinds
            .into_iter()
            .map(|(n, kind)| signal(kind).map(|s| (n, s)))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("listening for signals: {e}"))?;
        Ok(Stop { signals })
    }

    /// The next stopping signal.
    pub(super) async fn recv(&mut self) -> i32 {
        let waits = self
            .signals
            .iter_mut()
            .map(|(n, s)| {
                let n = *n;
                async move {
                    s.recv().await;
                    n
                }
                .boxed()
            })
            .collect::<Vec<_>>();
        futures_util::future::select_all(waits).await.0
    }

    /// A stopping signal that has already arrived, if any.
    pub(super) fn arrived(&mut self) -> Option<i32> {
        self.recv().now_or_never()
    }
}

/// Writes `text` to standard output (under the progress bar); a closed
/// output is [`Halt::Closed`].
pub(super) fn emit(bar: &indicatif::ProgressBar, text: &str) -> Result<(), Failure> {
    bar.suspend(|| {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).and_then(|()| out.flush())
    })
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => Failure::Halt(Halt::Closed),
        _ => Failure::Error(format!("writing results: {e}")),
    })
}
