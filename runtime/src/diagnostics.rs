//! The diagnostics listener both server processes run beside their API
//! ([`meridian_rest::diagnostics`]): `--diagnostics-address`, default
//! `127.0.0.1:5680` (the incumbent's port; loopback, since it needs no
//! token: give `0.0.0.0:5680` to let Prometheus scrape from elsewhere),
//! `off` to run without it.

use std::{fmt, net::SocketAddr, str::FromStr};

use anyhow::Context;
use clap::Args;
use meridian_rest::ApiState;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{Tasks, announce};

/// The incumbent's diagnostics port.
pub const DEFAULT_DIAGNOSTICS_ADDRESS: &str = "127.0.0.1:5680";

/// Where the diagnostics listener listens, or that it is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(SocketAddr),
}

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        match s.trim() {
            "off" | "" => Ok(Listen::Off),
            other => other
                .parse()
                .map(Listen::At)
                .map_err(|e| format!("{other:?}: {e}; give ip:port (127.0.0.1:5680) or `off`")),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Off => f.write_str("off"),
            Listen::At(a) => write!(f, "{a}"),
        }
    }
}

impl Serialize for Listen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `--diagnostics-address`, flattened into both `run` commands.
#[derive(Debug, Clone, Args, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticsArgs {
    /// Address of the diagnostics listener: `/healthy`, `/ready` and
    /// `/metrics` without authentication (as the incumbent's port 5680),
    /// nothing else. `off` disables it; port 0 picks a free one.
    #[arg(long, env = "MERIDIAN_DIAGNOSTICS_ADDRESS", default_value = DEFAULT_DIAGNOSTICS_ADDRESS)]
    pub diagnostics_address: Listen,
}

impl DiagnosticsArgs {
    /// Binds the listener (failing the start when the address is taken)
    /// and spawns it into `tasks` until `shutdown`; announces
    /// `<process>: diagnostics on http://ADDR`. Does nothing when `off`.
    pub async fn spawn(
        &self,
        process: &str,
        tasks: &mut Tasks,
        state: ApiState,
        limits: meridian_rest::listener::Limits,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let Listen::At(addr) = self.diagnostics_address else {
            tracing::info!("diagnostics listener off (--diagnostics-address off)");
            return Ok(());
        };
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for diagnostics (--diagnostics-address; `off` disables it)")
        })?;
        let local = listener.local_addr()?;
        announce(&format!("{process}: diagnostics on http://{local}"));
        tracing::info!(%local, "diagnostics listening");
        if !local.ip().is_loopback() {
            tracing::warn!(
                %local,
                "the diagnostics listener (/metrics, /ready, /healthy; no token) is reachable from other hosts: \
                 it shows zone, mesh and resource counts; bind it to 127.0.0.1 unless a Prometheus elsewhere scrapes it"
            );
        }
        let router = meridian_rest::diagnostics::router(state);
        let stop = shutdown.clone().cancelled_owned();
        tasks.spawn("diagnostics server", async move {
            Ok(meridian_rest::server::serve(listener, None, limits, router, stop).await?)
        });
        Ok(())
    }
}
