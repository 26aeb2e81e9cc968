//! The upgrade pipeline: security and muxer negotiation over a raw stream.

use super::*;

impl Host {
    pub(super) fn observe_handshake(&self, started: Instant, route: Route) {
        self.inner
            .metrics
            .handshake_latency
            .get_or_create(&HandshakeLabels {
                transport: route.transport,
                security: route.security,
                muxer: route.muxer,
                early_muxer: route.early_muxer,
                ip_version: route.ip_version,
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// multistream-select /noise or /tls/1.0.0 → handshake → multistream-select
    /// /yamux/1.0.0 → yamux.
    pub(super) async fn upgrade(
        &self,
        raw: RawStream,
        dialer: bool,
        expected: Option<PeerId>,
    ) -> Result<Handshaken, DialError> {
        let secured = if dialer {
            crate::secure::outbound(raw, &self.inner.security, expected).await
        } else {
            crate::secure::inbound(raw, &self.inner.security).await
        }
        .map_err(|e| match e {
            crate::secure::Error::WrongPeer { expected, got } => {
                DialError::WrongPeer { expected, got }
            }
            crate::secure::Error::NoCommonProtocol => DialError::NoCommonProtocol("security"),
            other => DialError::Security(other),
        })?;
        let security = secured.security.label();
        let early = match secured.muxer.as_deref() {
            None => false,
            Some(YAMUX_PROTOCOL) => true,
            Some(other) => return Err(DialError::UnknownMuxer(other.to_string())),
        };
        let mut stream = secured.stream;
        // Agreed inside the handshake: no multistream-select round for the muxer at all.
        // Otherwise the dialer proposes `/yamux/1.0.0` lazily, with its first yamux frame.
        let stream = if early {
            Negotiated::done(stream)
        } else if dialer {
            Negotiated::lazy(stream, YAMUX_PROTOCOL)
        } else {
            multistream::listener_select(&mut stream, |p| p == YAMUX_PROTOCOL)
                .await
                .map_err(|e| match e {
                    multistream::Error::NoCommonProtocol | multistream::Error::TooManyProposals => {
                        DialError::NoCommonProtocol("muxer")
                    }
                    other => DialError::MuxerNegotiation(other),
                })?;
            Negotiated::done(stream)
        };
        let mut cfg = yamux::Config::default();
        let streams =
            self.inner.config.max_streams_per_connection.clamp(1, 4096) + YAMUX_STREAM_HEADROOM;
        cfg.set_max_num_streams(streams);
        cfg.set_max_connection_receive_window(Some(streams * 256 * 1024));
        cfg.set_split_send_size(YAMUX_SPLIT_SEND_SIZE);
        let mode = if dialer {
            yamux::Mode::Client
        } else {
            yamux::Mode::Server
        };
        Ok(Handshaken {
            mux: Muxer::Yamux(Box::new(yamux::Connection::new(stream.compat(), cfg, mode))),
            peer: secured.remote_peer,
            key: secured.remote_key,
            // The transport's labels are filled in by the caller, which knows them.
            route: Route {
                transport: "",
                security,
                muxer: "yamux",
                early_muxer: if early { "true" } else { "false" },
                ip_version: "",
            },
        })
    }
}
