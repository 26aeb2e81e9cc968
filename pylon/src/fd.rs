//! The process's file-descriptor budget. `pylon run` raises its soft `RLIMIT_NOFILE` to
//! the hard limit (a soft 1024 is common, and far below `connections.max`), then checks
//! that the configuration fits: every TCP or WebSocket connection, established or in its
//! handshake, is a descriptor, and so is every listener and HTTP connection. When the
//! limit is still too low, `connections.max` (and if need be
//! `connections.max_pending_incoming`) is lowered to what fits, with a warning, rather than
//! letting accept() and dials fail with EMFILE once the node is busy.
//!
//! Not here: raising the hard limit (that takes privilege: systemd's `LimitNOFILE=`,
//! `ulimit -Hn`, limits.conf).

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::Config;

/// Descriptors kept apart from connections: the database's files, the runtime's epoll and
/// eventfds, DNS sockets, stdio, the key and certificate files.
pub(crate) const RESERVE: u64 = 64;

/// The soft and hard `RLIMIT_NOFILE`, before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    pub before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft limit to the hard one (or to the kernel's `nr_open` when the hard
/// limit is unlimited).
pub(crate) fn raise() -> nix::Result<Limit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = if hard == RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    if soft >= target {
        return Ok(Limit {
            before: soft,
            soft,
            hard,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    Ok(Limit {
        before: soft,
        soft: target,
        hard,
    })
}

/// What the configuration asks of the descriptor budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs {
    pub max_connections: u64,
    /// `connections.max_pending_incoming`, which applies per transport.
    pub max_pending_incoming: u64,
    /// Transports whose handshakes hold a descriptor each: TCP and WebSocket listeners
    /// (QUIC connections share their UDP socket).
    pub stream_transports: u64,
    pub listeners: u64,
    pub http_connections: u64,
}

impl Needs {
    fn fixed(&self) -> u64 {
        RESERVE + self.listeners + self.http_connections
    }
    /// Descriptors the configuration may hold at once.
    pub(crate) fn total(&self) -> u64 {
        self.fixed() + self.max_connections + self.max_pending_incoming * self.stream_transports
    }
}

/// How the configuration fits a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    Fits,
    /// Lowered to these values, which fit.
    Lowered {
        max_connections: u64,
        max_pending_incoming: u64,
    },
    /// Not even one connection fits.
    TooLow,
}

/// Fits the configuration into `limit` descriptors. When lowering, pending handshakes
/// get at most a quarter of what is left for connections, the rest established ones.
pub(crate) fn fit(limit: u64, needs: &Needs) -> Fit {
    if needs.total() <= limit {
        return Fit::Fits;
    }
    let available = limit.saturating_sub(needs.fixed());
    let pending = match needs.stream_transports {
        0 => needs.max_pending_incoming,
        n => needs.max_pending_incoming.min((available / 4 / n).max(1)),
    };
    let max_connections = available
        .saturating_sub(pending * needs.stream_transports)
        .min(needs.max_connections);
    if max_connections == 0 {
        return Fit::TooLow;
    }
    Fit::Lowered {
        max_connections,
        max_pending_incoming: pending,
    }
}

fn needs(config: &Config) -> Needs {
    use pylon_node::transport::{parse, Target};
    let kinds = |want: fn(&Target) -> bool| {
        config
            .node
            .listen
            .iter()
            .any(|a| parse(a).is_ok_and(|(t, _)| want(&t))) as u64
    };
    Needs {
        max_connections: config.node.host.max_connections as u64,
        max_pending_incoming: config.node.host.max_pending_incoming as u64,
        stream_transports: kinds(|t| matches!(t, Target::Tcp(_)))
            + kinds(|t| matches!(t, Target::Ws(_))),
        listeners: config.node.listen.len() as u64,
        http_connections: config
            .metrics
            .map_or(0, |_| config.metrics_http.max_connections as u64)
            + config
                .admin
                .map_or(0, |_| config.admin_http.max_connections as u64),
    }
}

/// Raises the soft limit, then lowers `connections.max` (and the pending handshakes) in
/// `config` when they do not fit, saying so. Fails only when not one connection fits.
pub(crate) fn apply(config: &mut Config) -> anyhow::Result<()> {
    let limit = match raise() {
        Ok(l) => {
            if l.soft > l.before {
                tracing::info!(
                    "raised the file descriptor limit from {} to {} (the hard limit)",
                    l.before,
                    l.soft
                );
            }
            l.soft
        }
        Err(e) => {
            let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(s, _)| s);
            tracing::warn!("could not raise the file descriptor limit {soft}: {e}");
            soft
        }
    };
    let needs = needs(config);
    match fit(limit, &needs) {
        Fit::Fits => Ok(()),
        Fit::TooLow => anyhow::bail!(
            "the file descriptor limit {limit} leaves no room for a single connection \
             ({} listeners, {} HTTP connections, {RESERVE} reserved); raise it \
             (systemd LimitNOFILE=, ulimit -n) to at least {}",
            needs.listeners,
            needs.http_connections,
            needs.total()
        ),
        Fit::Lowered {
            max_connections,
            max_pending_incoming,
        } => {
            tracing::warn!(
                "file descriptor limit {limit} is too low for connections.max {} \
                 (the configuration needs {}: connections, {} pending handshakes per TCP \
                 transport, {} listeners, {} HTTP connections, {RESERVE} reserved): \
                 connections.max lowered to {max_connections}, \
                 connections.max_pending_incoming to {max_pending_incoming}; raise the \
                 hard limit (systemd LimitNOFILE=, ulimit -Hn) to at least {}",
                needs.max_connections,
                needs.total(),
                needs.max_pending_incoming,
                needs.listeners,
                needs.http_connections,
                needs.total()
            );
            let host = &mut config.node.host;
            host.max_connections = usize::try_from(max_connections).unwrap_or(usize::MAX);
            host.max_pending_incoming = usize::try_from(max_pending_incoming).unwrap_or(usize::MAX);
            Ok(())
        }
    }
}

/// `pylon_fd_limit` (the soft limit now) and `pylon_connections_max_effective`
/// (`connections.max` after [`apply`]).
pub(crate) fn register(registry: &mut Registry, config: &Config) {
    let gauge = |v: u64| {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(s, _)| s);
    registry.register(
        "pylon_fd_limit",
        "The process's file descriptor limit (soft RLIMIT_NOFILE, raised to the hard one at start)",
        gauge(soft),
    );
    registry.register(
        "pylon_connections_max_effective",
        "connections.max in force: the configured value, or lower when the file descriptor limit cannot hold it",
        gauge(config.node.host.max_connections as u64),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs() -> Needs {
        Needs {
            max_connections: 4096,
            max_pending_incoming: 256,
            stream_transports: 1,
            listeners: 4,
            http_connections: 64,
        }
    }

    #[test]
    fn a_high_limit_fits_the_defaults() {
        assert_eq!(needs().total(), 4096 + 256 + 4 + 64 + RESERVE);
        assert_eq!(fit(20_000, &needs()), Fit::Fits);
        assert_eq!(fit(needs().total(), &needs()), Fit::Fits);
    }

    #[test]
    fn a_low_limit_lowers_connections_to_what_fits() {
        for limit in [256, 1024, 4000, needs().total() - 1] {
            let Fit::Lowered {
                max_connections,
                max_pending_incoming,
            } = fit(limit, &needs())
            else {
                panic!("{limit}: not lowered");
            };
            let lowered = Needs {
                max_connections,
                max_pending_incoming,
                ..needs()
            };
            assert!(lowered.total() <= limit, "{limit}: {lowered:?}");
            assert!(
                max_connections >= 3 * max_pending_incoming.min(64),
                "{limit}"
            );
            assert!(max_connections < 4096 && max_pending_incoming <= 256);
        }
        // 1024 - 64 reserved - 4 listeners - 64 HTTP = 892: 223 pending, 669 connections.
        assert_eq!(
            fit(1024, &needs()),
            Fit::Lowered {
                max_connections: 669,
                max_pending_incoming: 223
            }
        );
        // Two stream transports (TCP and WebSocket) each get their pending handshakes.
        let two = Needs {
            stream_transports: 2,
            ..needs()
        };
        let Fit::Lowered {
            max_connections,
            max_pending_incoming,
        } = fit(1024, &two)
        else {
            panic!()
        };
        assert_eq!(max_connections + 2 * max_pending_incoming, 892);
        // QUIC only: handshakes hold no descriptor of their own.
        let quic = Needs {
            stream_transports: 0,
            ..needs()
        };
        assert_eq!(
            fit(1024, &quic),
            Fit::Lowered {
                max_connections: 892,
                max_pending_incoming: 256
            }
        );
    }

    #[test]
    fn a_limit_below_the_fixed_needs_is_too_low() {
        assert_eq!(fit(100, &needs()), Fit::TooLow);
        assert_eq!(fit(0, &needs()), Fit::TooLow);
    }
}
