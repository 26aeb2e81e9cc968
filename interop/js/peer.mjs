// js-libp2p interop peer for Pylon's interop tests (driven by interop/src/js.rs).
//
//   node peer.mjs listen [OPTIONS]          listen (see --transport), identify + ping every peer
//                                           that connects
//   node peer.mjs dial <maddr> [OPTIONS]    same, and dial <maddr> (must end in /p2p/<peer id>),
//                                           identify + ping it
//
// Options (each also accepted as --name=value):
//   --transport tcp|ws|quic   what to listen on: tcp  -> /ip4/<host>/tcp/0
//                                                ws   -> /ip4/<host>/tcp/0/ws   (plain WebSocket)
//                                                quic -> /ip4/<host>/udp/0/quic-v1
//                             Default: tcp for listen; for dial, the transport of <maddr>.
//                             TCP and WebSocket are always configured (so dial mode can dial either,
//                             and both /ws and /wss addresses of any host are dialable); QUIC
//                             (@chainsafe/libp2p-quic, a native module) is loaded only when listening
//                             on QUIC or dialing a /quic-v1 address.
//   --security noise|tls[,...]  connection encrypters offered, in preference order (a comma list
//                             such as tls,noise offers both). Default: noise. Ignored by QUIC, which
//                             has its own TLS 1.3 handshake.
//   --kad server|client       also run a Kademlia DHT (@libp2p/kad-dht, protocol /ipfs/kad/1.0.0):
//                             server mode answers DHT requests and advertises the protocol through
//                             identify (only such peers enter js-libp2p's routing table); client mode
//                             only queries. Default: no DHT. Loopback addresses are kept
//                             (peerInfoMapper: passthroughMapper; the default mapper drops private
//                             addresses, so no loopback peer would ever enter the routing table). Records:
//                             js-libp2p's built-in validator and selector for /pk/ only (other
//                             namespaces are refused). Driven by the kad_* commands below.
//   --relay                   (a flag, no value) also load @libp2p/circuit-relay-v2's circuitRelayTransport:
//                             dial .../p2p/<relay>/p2p-circuit/p2p/<peer> addresses, accept relayed
//                             connections (the STOP protocol, from any relay), and listen through a relay
//                             with the listen_relay command. Relay discovery stays off (no /p2p-circuit
//                             listen address without a relay). Default: no relay transport.
//   --dcutr                   (a flag; needs --relay) also run @libp2p/dcutr: on a relayed connection
//                             js-libp2p takes DCUtR's part (initiator when the circuit came in) and
//                             upgrades it to a direct one. js-libp2p sends only *verified* addresses
//                             in its CONNECT and dials only public ones it receives; an address behind
//                             a NAT gets verified by AutoNAT or UPnP, or by the confirm_observed
//                             command below. Default: off.
//   --host IP                 the IPv4 address to listen on (0.0.0.0: every interface). Default:
//                             127.0.0.1.
//   --autonat v1|v2|v1,v2     also run AutoNAT clients (each also serves its protocol): v1
//                             (@libp2p/autonat, service "autonat", /libp2p/autonat/1.0.0) and/or v2
//                             (@libp2p/autonat-v2, service "autonatV2", /libp2p/autonat/2/*). js-libp2p
//                             asks a server once per connection, when identify shows the server's
//                             protocol, about its public unverified addresses (v1: the first one; v2:
//                             all of them in one request). An address of a listener ("transport") is
//                             verified by one OK; an observed one needs 4 OKs (or 8 failures, which
//                             remove it) from servers in distinct "network segments", which js-libp2p
//                             takes to be the first octet of the server's IPv4 address. Watch it with
//                             the addresses command. Default: no AutoNAT.
// The stream muxer is always yamux (except on QUIC, which muxes natively).
//
// Node 20: js-libp2p 3.x wants Node >= 22, so this script polyfills Promise.withResolvers, and
// the WebSocket global (missing on Node 20 without --experimental-websocket) with the `ws`
// package's client. @chainsafe/libp2p-quic ships its native module as per-platform optional
// packages; the registry reachable here serves only the linux-x64-gnu one, so npm leaves the
// other six out of package-lock.json and `npm ci` then fails with "Missing ... from lock file".
// Their lock entries (version, os/cpu/libc, no integrity) were added by hand; npm install keeps
// them, but re-add them if the lock file is ever regenerated from scratch.
//
// stdout carries only JSON lines, one event per line (see README below); everything else goes to
// stderr (set DEBUG=libp2p:* for js-libp2p's own logs). The process runs until stdin reaches EOF or
// it gets SIGTERM/SIGINT, then stops the node and exits 0. A fatal error prints an "error" event and
// exits 1.
//
// Events:
//   {"event":"listening","peerId","addrs":[...],"transport","security":[...]}
//   {"event":"connection_open","peerId","remoteAddr","direction","transport","encryption",
//    "multiplexer","muxerNegotiation","limits"}
//     What js-libp2p negotiated for the connection. remoteAddr ends in /p2p/<remote peer id>;
//     transport is "tcp", "ws", "wss", "quic" or "p2p-circuit" (from remoteAddr; a relayed
//     connection's remoteAddr is <relay addr>/p2p-circuit/p2p/<peer>); encryption is the security
//     protocol id ("/noise", "/tls/1.0.0"; "native" on QUIC); multiplexer is the muxer protocol id
//     ("/yamux/1.0.0"; "quic" on QUIC) or null; muxerNegotiation says how the muxer was chosen:
//     "inlined" (inside the security handshake: noise handshake extensions, or TLS ALPN),
//     "multistream-select" (a separate negotiation after the handshake), "native" (QUIC) or null.
//     limits is null for an unlimited connection; for a relayed one, what js-libp2p's relay client
//     made of the relay's Limit (from the HOP STATUS when dialing, the STOP CONNECT when accepting):
//     {"seconds": whole seconds left (js reads Limit.duration as seconds) | null,
//      "bytes": "<decimal>" bytes left | null}, read when the connection opened. js-libp2p does not
//     enforce either on its side (the relay ends the circuit); a connection with limits is "limited":
//     only protocols registered with runOnLimitedConnection (identify, ping, STOP) run on it.
//   {"event":"identify","peerId","remoteAddr","agentVersion","protocolVersion","protocols","listenAddrs",
//    "observedAddr","signedPeerRecord":null|{"seq":"<decimal>","addrs":[...]},"peerStoreHasEnvelope"}
//     printed for every js-libp2p `peer:identify` event (identify and identify push).
//     signedPeerRecord is non-null only if js-libp2p opened and verified the remote's signed peer
//     record (RecordEnvelope.openAndCertify in @libp2p/identify). If the record fails verification,
//     js-libp2p rejects the whole identify message: no identify line, an identify_error line instead.
//   {"event":"identify_error","peerId","error"}
//   {"event":"ping","peerId","rttMs","remoteAddr"} / {"event":"ping_error","peerId","error"}
//     After identify, every new connection's peer is pinged: an unlimited connection with the ping
//     service (@libp2p/ping, which picks the connection itself: remoteAddr null), a limited one on
//     that very connection (remoteAddr its address): js-libp2p's ping service never uses a limited
//     connection and would dial the peer again instead, directly or through a new circuit.
//   {"event":"connection_close","peerId","remoteAddr","transport"}
//   {"event":"done"}                       (dial mode: identify + ping of the dialed peer finished)
//   {"event":"error","error"}              (fatal, exit code 1)
//
// Commands: stdin takes one JSON object a line, {"cmd":NAME,"id":N,...}, answered (in any order, as
// each finishes) by {"event":NAME,"id":N,...} or, if it failed, {"event":"NAME_error","id":N,"error"}.
// Every command takes an optional "timeoutMs" (default 20000) after which it is aborted. Bytes are hex.
//   {"cmd":"dial","addr"}            node.dial(addr) (ending in /p2p/<id>; through a relay with --relay)
//       -> the connection as in connection_open: {"peerId","remoteAddr","direction","transport",
//       "encryption","multiplexer","muxerNegotiation","limits"} (js-libp2p returns an open unlimited
//       connection to that peer, if it has one, instead of dialing)
//   {"cmd":"ping","peerId"}          one ping (/ipfs/ping/1.0.0) over the open connection to peerId
//       opened last, limited or not; never dials -> {"peerId","rttMs","remoteAddr"}
//   {"cmd":"listen_relay","addr"}    (needs --relay) listen on <addr>/p2p-circuit (addr: the relay's
//       address ending in /p2p/<relay id>; a trailing /p2p-circuit is accepted): js-libp2p connects,
//       reserves, and keeps the reservation (refreshed 5 min before it expires) ->
//       {"relay","addrs":[our /p2p-circuit addresses, with /p2p/<our id>],"reservation":{"expire":
//       "<unix seconds, decimal>","expiresInMs","addrs":[relay addresses from the answer, plus the
//       one we are connected to],"voucher":null|{"relay","peer","expiration":"<unix seconds>"}}}
//       (the voucher as js-libp2p decoded it: its pb parses the envelope, payload included, as
//       nested messages; it checks no signature). js-libp2p ignores the Limit of a reservation answer.
//   {"cmd":"confirm_observed","transport"}  waits until identify has stored an observed address
//       of ours on "transport" (tcp|quic; js-libp2p keeps only public ones, and no TCP ones at all,
//       as its TCP dials never leave from the listening port), then marks every such address
//       verified, as a positive AutoNAT or UPnP answer would -> {"addrs":[the confirmed addresses]}.
//       A test hook: behind a NAT that drops unsolicited packets no dial-back can confirm it,
//       yet it is the address a hole punch goes through (QUIC dials leave from one socket).
//   {"cmd":"addresses"}              our addresses as the address manager holds them, and what the
//       AutoNAT clients (--autonat) have counted so far -> {"addrs":[{"multiaddr","verified","type"}]
//       (getAddressesWithMetadata(): type "transport" (a listener's), "observed", "announce", "ip-mapping"
//       or "dns-mapping"; js-libp2p counts private addresses as verified), "autonat":{"v1":[...] | null,
//       "v2":[...] | null} (each client's pending results: {"multiaddr","success","failure",
//       "segments":[...]}; an address leaves the list once decided: verified, or removed after 8
//       failures)}
// The kad_* commands need --kad. A DHT query does not fail because some peer failed: such failures
// are listed in its "errors" as {"from","error"} (js-libp2p's QUERY_ERROR events).
//   {"cmd":"kad_bootstrap","addr"}   dial addr (ending in /p2p/<id>) and wait until that peer is in the
//       routing table (js-libp2p admits a peer once identify showed it serves the protocol and a
//       ping answered) -> {"peerId","tableSize"}
//   {"cmd":"kad_table"}              -> {"peers":[peer ids in the routing table]}
//   {"cmd":"kad_closest","key"}      getClosestPeers(key) -> {"peers":[...],"errors"}
//       (js-libp2p's first query waits for its initial self-query, about a second after start)
//   {"cmd":"kad_put","key","value"}  put(key, value) -> {"acks":[peers that echoed the record],"errors"}
//   {"cmd":"kad_get","key"}          get(key) -> {"value":hex|null (the best, js-libp2p's VALUE event),
//       "from":peer|null (who gave the best; our own id if it came from the local store),
//       "records":[{"from","value"}] (every GET_VALUE answer that carried a record),"errors"}
//   {"cmd":"kad_provide","key"}      provide(CIDv1 raw of the multihash key) -> {"sentTo":[peers that
//       were sent ADD_PROVIDER],"addrs":[the addresses announced],"errors"}
//   {"cmd":"kad_providers","key"}    findProviders(CIDv1 raw of the multihash key) ->
//       {"providers":[{"from","peerId","addrs"}] (every provider in every GET_PROVIDERS answer, so one
//       entry per provider per answering peer; "from" is our own id for the local store),"errors"}

// js-libp2p 3.x targets Node >= 22; Node 20 lacks Promise.withResolvers. Polyfill it before any
// libp2p module is loaded (hence the dynamic imports below).
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

// Keep stdout for JSON lines only, even if some dependency calls console.log.
console.log = console.error
console.info = console.error

const IDENTIFY_TIMEOUT_MS = 10_000
const PING_TIMEOUT_MS = 10_000
const DIAL_TIMEOUT_MS = 20_000
const STOP_TIMEOUT_MS = 5_000
// Longer than any interop test, so js never drops an idle connection on its own.
const SOCKET_INACTIVITY_TIMEOUT_MS = 30 * 60_000

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function errorString (err) {
  if (err == null) return 'unknown error'
  const name = err.name != null && err.name !== 'Error' ? `${err.name}: ` : ''
  return `${name}${err.message ?? String(err)}`
}

let node
let stopping = false

async function shutdown (code) {
  if (stopping) return
  stopping = true
  try {
    if (node != null) {
      await Promise.race([
        node.stop(),
        new Promise((resolve) => setTimeout(resolve, STOP_TIMEOUT_MS).unref())
      ])
    }
  } catch (err) {
    console.error('peer.mjs: error stopping node:', err)
  }
  process.exit(code)
}

function fatal (err) {
  if (stopping) return
  console.error('peer.mjs: fatal:', err)
  emit({ event: 'error', error: errorString(err) })
  shutdown(1)
}

process.on('uncaughtException', fatal)
process.on('unhandledRejection', fatal)
process.on('SIGTERM', () => { shutdown(0) })
process.on('SIGINT', () => { shutdown(0) })
process.stdin.on('end', () => { shutdown(0) })
process.stdin.on('close', () => { shutdown(0) })
process.stdin.on('error', () => { shutdown(0) })
// Command lines (see "Commands" above) arriving before the node is ready wait in `pendingLines`
// (data events of a flowing stream without a listener would be lost).
const pendingLines = []
let onCommandLine = (line) => { pendingLines.push(line) }
let stdinBuffered = ''
process.stdin.setEncoding('utf8')
process.stdin.on('data', (chunk) => {
  stdinBuffered += chunk
  let nl
  while ((nl = stdinBuffered.indexOf('\n')) >= 0) {
    const line = stdinBuffered.slice(0, nl).trim()
    stdinBuffered = stdinBuffered.slice(nl + 1)
    if (line !== '') onCommandLine(line)
  }
})
process.stdin.resume()

const OPTIONS_USAGE = '[--transport tcp|ws|quic] [--security noise|tls[,...]] [--kad server|client] [--relay] [--dcutr] [--host IP] [--autonat v1|v2|v1,v2]'
const USAGE = `usage: node peer.mjs listen ${OPTIONS_USAGE}\n` +
  `       node peer.mjs dial <multiaddr-with-/p2p/> ${OPTIONS_USAGE}`
const TRANSPORTS = ['tcp', 'ws', 'quic']
const SECURITIES = ['noise', 'tls']
const KAD_MODES = ['server', 'client']
const AUTONAT_VERSIONS = ['v1', 'v2']
const KAD_PROTOCOL = '/ipfs/kad/1.0.0'
const PING_PROTOCOL = '/ipfs/ping/1.0.0'
const PING_LENGTH = 32
const COMMAND_TIMEOUT_MS = 20_000
const LISTEN_ADDRS = {
  tcp: (host) => `/ip4/${host}/tcp/0`,
  ws: (host) => `/ip4/${host}/tcp/0/ws`,
  quic: (host) => `/ip4/${host}/udp/0/quic-v1`
}
// How often confirm_observed looks for an observed address: js-libp2p emits no event when identify
// stores one.
const OBSERVED_POLL_MS = 50

let args
try {
  args = parseArgs(process.argv.slice(2))
} catch (err) {
  console.error(`peer.mjs: ${err.message}\n${USAGE}`)
  emit({ event: 'error', error: `bad arguments: ${err.message}: ${process.argv.slice(2).join(' ')}` })
  process.exit(1)
}
const { mode, target, security, kad, relay, dcutr, host, autonat } = args
// For dial mode without --transport, listen on the transport of the dialed address (TCP for an
// address through a relay).
const transport = args.transport ??
  (mode === 'dial' && transportOfAddr(target) !== 'p2p-circuit' ? transportOfAddr(target) : null) ??
  'tcp'

/**
 * Parses `listen|dial <maddr>` followed by `--transport X` / `--security X` / `--kad X` / `--host X`
 * / `--autonat X` (or `--opt=X`) and the flags `--relay` and `--dcutr`.
 */
function parseArgs (argv) {
  const positional = []
  const opts = {}
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (!arg.startsWith('--')) {
      positional.push(arg)
      continue
    }
    let [name, value] = arg.slice(2).split(/=(.*)/s)
    if (name === 'relay' || name === 'dcutr') {
      if (value != null) throw new Error(`--${name} is a flag and takes no value`)
      if (opts[name]) throw new Error(`--${name} given twice`)
      opts[name] = true
      continue
    }
    if (value == null) {
      value = argv[++i]
      if (value == null) throw new Error(`--${name} needs a value`)
    }
    if (!['transport', 'security', 'kad', 'host', 'autonat'].includes(name)) throw new Error(`unknown option --${name}`)
    if (name in opts) throw new Error(`--${name} given twice`)
    opts[name] = value
  }
  const [mode, target, ...rest] = positional
  if (mode !== 'listen' && mode !== 'dial') throw new Error('first argument must be listen or dial')
  if (mode === 'listen' && target != null) throw new Error(`unexpected argument ${target}`)
  if (mode === 'dial' && target == null) throw new Error('dial needs a multiaddr')
  if (rest.length > 0) throw new Error(`unexpected argument ${rest[0]}`)
  if (opts.transport != null && !TRANSPORTS.includes(opts.transport)) {
    throw new Error(`unknown transport ${opts.transport} (expected ${TRANSPORTS.join('|')})`)
  }
  const security = (opts.security ?? 'noise').split(',')
  for (const s of security) {
    if (!SECURITIES.includes(s)) throw new Error(`unknown security ${s} (expected ${SECURITIES.join('|')})`)
  }
  if (new Set(security).size !== security.length) throw new Error(`duplicate security in ${opts.security}`)
  if (opts.kad != null && !KAD_MODES.includes(opts.kad)) {
    throw new Error(`unknown kad mode ${opts.kad} (expected ${KAD_MODES.join('|')})`)
  }
  if (opts.dcutr && !opts.relay) throw new Error('--dcutr needs --relay')
  const autonat = opts.autonat == null ? [] : opts.autonat.split(',')
  for (const v of autonat) {
    if (!AUTONAT_VERSIONS.includes(v)) throw new Error(`unknown AutoNAT version ${v} (expected v1|v2|v1,v2)`)
  }
  if (new Set(autonat).size !== autonat.length) throw new Error(`duplicate version in --autonat ${opts.autonat}`)
  const host = opts.host ?? '127.0.0.1'
  if (!/^(\d{1,3})(\.\d{1,3}){3}$/.test(host) || host.split('.').some((o) => Number(o) > 255)) {
    throw new Error(`--host ${host} is not an IPv4 address`)
  }
  return {
    mode,
    target,
    transport: opts.transport,
    security,
    kad: opts.kad ?? null,
    relay: opts.relay === true,
    dcutr: opts.dcutr === true,
    host,
    autonat
  }
}

/**
 * "tcp", "ws", "wss", "quic" or "p2p-circuit" (through a relay, whatever the relay's transport) for
 * a multiaddr string, from its protocol names; null if none.
 */
function transportOfAddr (addr) {
  const names = String(addr).split('/')
  if (names.includes('p2p-circuit')) return 'p2p-circuit'
  if (names.includes('quic-v1')) return 'quic'
  if (names.includes('wss') || (names.includes('tls') && names.includes('ws'))) return 'wss'
  if (names.includes('ws')) return 'ws'
  if (names.includes('tcp')) return 'tcp'
  return null
}

try {
  await main()
} catch (err) {
  fatal(err)
}

async function main () {
  // @libp2p/websockets dials with the global WebSocket (WHATWG API), which Node only has
  // unflagged from 22 on; on Node 20 use the `ws` package's client, which implements the same
  // API (addEventListener, binaryType = 'arraybuffer', CloseEvent.wasClean). The listener side
  // of @libp2p/websockets always uses `ws`.
  if (typeof globalThis.WebSocket !== 'function') {
    const { WebSocket } = await import('ws')
    globalThis.WebSocket = WebSocket
  }

  const { createLibp2p } = await import('libp2p')
  const { tcp } = await import('@libp2p/tcp')
  const { webSockets } = await import('@libp2p/websockets')
  const { noise } = await import('@chainsafe/libp2p-noise')
  const { tls } = await import('@libp2p/tls')
  const { yamux } = await import('@chainsafe/libp2p-yamux')
  const { identify } = await import('@libp2p/identify')
  const { ping } = await import('@libp2p/ping')
  const { multiaddr } = await import('@multiformats/multiaddr')

  const transports = [
    tcp({
      inboundSocketInactivityTimeout: SOCKET_INACTIVITY_TIMEOUT_MS,
      outboundSocketInactivityTimeout: SOCKET_INACTIVITY_TIMEOUT_MS
    }),
    // Its dialFilter accepts every /ws and /wss address (including plain /ip4/.../tcp/N/ws);
    // there is no `filter` option in @libp2p/websockets 10.x.
    webSockets()
  ]
  if (transport === 'quic' || (mode === 'dial' && transportOfAddr(target) === 'quic')) {
    const { quic } = await import('@chainsafe/libp2p-quic')
    // Defaults: handshakeTimeout 5 s, maxIdleTimeout 10 s, keepAliveInterval 5 s.
    transports.push(quic())
  }
  // The circuit relay transport instance, kept for listen_relay (its reservation store).
  let relayTransport = null
  if (relay) {
    const { circuitRelayTransport } = await import('@libp2p/circuit-relay-v2')
    const factory = circuitRelayTransport()
    transports.push((components) => {
      relayTransport = factory(components)
      return relayTransport
    })
  }

  // Wraps a connection encrypter factory to record, per connection, whether the security
  // handshake also chose the stream muxer (noise extensions / TLS ALPN), in earlyMuxer.
  const earlyMuxer = new WeakMap()
  function trackEarlyMuxer (factory) {
    return (components) => {
      const encrypter = factory(components)
      for (const method of ['secureInbound', 'secureOutbound']) {
        const original = encrypter[method].bind(encrypter)
        encrypter[method] = async (connection, options) => {
          const result = await original(connection, options)
          earlyMuxer.set(connection, result.streamMuxer != null)
          return result
        }
      }
      return encrypter
    }
  }
  const encrypters = { noise, tls }

  const services = {
    // We run identify ourselves on connection:open so that failures are reported
    // (the built-in runOnConnectionOpen swallows them).
    identify: identify({ runOnConnectionOpen: false, timeout: IDENTIFY_TIMEOUT_MS }),
    // With the DHT, our ping of each new connection runs alongside the routing table's ping of the
    // same peer (js-libp2p pings a DHT server before admitting it); ping's default of one outbound
    // stream per connection would fail one of them, and a peer whose admission ping failed is not
    // admitted again until it reconnects. Likewise the ping command alongside that first ping
    // (with --relay, where the ping command pings over a limited connection).
    ping: kad == null && !relay ? ping() : ping({ maxOutboundStreams: 4 })
  }
  if (dcutr) {
    const { dcutr: dcutrService } = await import('@libp2p/dcutr')
    services.dcutr = dcutrService()
  }
  if (autonat.includes('v1')) {
    const { autoNAT } = await import('@libp2p/autonat')
    services.autonat = autoNAT()
  }
  if (autonat.includes('v2')) {
    const { autoNATv2 } = await import('@libp2p/autonat-v2')
    services.autonatV2 = autoNATv2()
  }
  if (kad != null) {
    const { kadDHT, passthroughMapper } = await import('@libp2p/kad-dht')
    services.dht = kadDHT({
      protocol: KAD_PROTOCOL,
      // Explicit, so the mode never switches on its own (it would follow public addresses).
      clientMode: kad === 'client',
      peerInfoMapper: passthroughMapper
    })
  }

  node = await createLibp2p({
    addresses: { listen: [LISTEN_ADDRS[transport](host)] },
    transports,
    connectionEncrypters: security.map((name) => trackEarlyMuxer(encrypters[name]())),
    streamMuxers: [yamux()],
    // The identify service takes its agent version from components.nodeInfo.userAgent.
    nodeInfo: { userAgent: 'js-libp2p-interop' },
    // The connection monitor pings every connection every 10 s and by default aborts the
    // connection if that ping fails; keep the connection so failures show up as ping_error.
    connectionMonitor: { abortConnectionOnPingFailure: false },
    services
  })

  // peer:identify detail object -> promise that resolves once its line is printed.
  const identifyPrinted = new WeakMap()
  node.addEventListener('peer:identify', (evt) => {
    identifyPrinted.set(evt.detail, printIdentify(evt.detail))
  })

  async function printIdentify (result) {
    let peerStoreHasEnvelope = false
    try {
      const peer = await node.peerStore.get(result.peerId)
      peerStoreHasEnvelope = peer.peerRecordEnvelope != null
    } catch (err) {
      console.error('peer.mjs: peerStore.get failed:', err)
    }
    const spr = result.signedPeerRecord
    emit({
      event: 'identify',
      peerId: result.peerId.toString(),
      remoteAddr: result.connection?.remoteAddr?.toString() ?? null,
      agentVersion: result.agentVersion ?? null,
      protocolVersion: result.protocolVersion ?? null,
      protocols: result.protocols ?? [],
      listenAddrs: (result.listenAddrs ?? []).map((ma) => ma.toString()),
      observedAddr: result.observedAddr?.toString() ?? null,
      signedPeerRecord: spr == null
        ? null
        : { seq: spr.seq.toString(), addrs: spr.addresses.map((ma) => ma.toString()) },
      peerStoreHasEnvelope
    })
  }

  // connection id -> deferred resolved when identify + ping of that connection finished.
  const handled = new Map()
  function handledFor (connId) {
    let d = handled.get(connId)
    if (d == null) {
      d = Promise.withResolvers()
      handled.set(connId, d)
    }
    return d
  }

  async function handleConnection (conn) {
    const peerId = conn.remotePeer.toString()
    const limited = conn.limits != null
    try {
      const result = await node.services.identify.identify(conn, {
        signal: AbortSignal.timeout(IDENTIFY_TIMEOUT_MS)
      })
      await identifyPrinted.get(result)
    } catch (err) {
      console.error(`peer.mjs: identify of ${peerId} failed:`, err)
      emit({ event: 'identify_error', peerId, error: errorString(err) })
    }
    try {
      const signal = AbortSignal.timeout(PING_TIMEOUT_MS)
      if (limited) {
        // js-libp2p's ping service never picks a limited connection (it would dial again).
        const rttMs = await pingOn(conn, signal)
        emit({ event: 'ping', peerId, rttMs, remoteAddr: conn.remoteAddr.toString() })
      } else {
        const rttMs = await node.services.ping.ping(conn.remotePeer, { signal })
        emit({ event: 'ping', peerId, rttMs, remoteAddr: null })
      }
    } catch (err) {
      console.error(`peer.mjs: ping of ${peerId} failed:`, err)
      emit({ event: 'ping_error', peerId, error: errorString(err) })
    }
  }

  /** What connection_open (and the dial command) report about a connection. */
  function describeConnection (conn) {
    return {
      peerId: conn.remotePeer.toString(),
      remoteAddr: conn.remoteAddr.toString(),
      direction: conn.direction,
      transport: transportOfAddr(conn.remoteAddr),
      encryption: conn.encryption ?? null,
      multiplexer: conn.multiplexer ?? null,
      muxerNegotiation: muxerNegotiation(conn),
      limits: conn.limits == null
        ? null
        : { seconds: conn.limits.seconds ?? null, bytes: conn.limits.bytes?.toString() ?? null }
    }
  }

  node.addEventListener('connection:open', (evt) => {
    const conn = evt.detail
    emit({ event: 'connection_open', ...describeConnection(conn) })
    const d = handledFor(conn.id)
    handleConnection(conn).then(d.resolve, d.resolve)
  })
  node.addEventListener('connection:close', (evt) => {
    const conn = evt.detail
    emit({
      event: 'connection_close',
      peerId: conn.remotePeer.toString(),
      remoteAddr: conn.remoteAddr.toString(),
      transport: transportOfAddr(conn.remoteAddr)
    })
  })

  function muxerNegotiation (conn) {
    if (conn.multiplexer == null) return null
    if (conn.encryption === 'native') return 'native'
    // conn.maConn is the connection the encrypter secured (no connection protector is configured).
    const early = earlyMuxer.get(conn.maConn)
    if (early == null) return null
    return early ? 'inlined' : 'multistream-select'
  }

  await node.start()
  emit({
    event: 'listening',
    peerId: node.peerId.toString(),
    addrs: node.getMultiaddrs().map((ma) => ma.toString()),
    transport,
    security
  })

  readCommands(node, multiaddr, { describeConnection, relayTransport: () => relayTransport })

  if (mode === 'dial') {
    const ma = multiaddr(target)
    if (ma.getComponents().every((c) => c.name !== 'p2p')) {
      throw new Error(`dial address has no /p2p/<peer id>: ${target}`)
    }
    const conn = await node.dial(ma, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) })
    // handleConnection is itself bounded by the identify and ping timeouts.
    await handledFor(conn.id).promise
    emit({ event: 'done' })
  }
}

/**
 * One ping (/ipfs/ping/1.0.0: 32 random bytes, echoed) on `conn` itself, limited or not; the round
 * trip in ms. js-libp2p's ping service takes a peer or an address and, given only a limited
 * connection, dials again rather than use it.
 */
async function pingOn (conn, signal) {
  const stream = await conn.newStream(PING_PROTOCOL, { runOnLimitedConnection: true, signal })
  const echoed = Promise.withResolvers()
  const onAbort = () => { echoed.reject(signal.reason) }
  const onClose = () => { echoed.reject(new Error('ping stream closed before the echo')) }
  const chunks = []
  let received = 0
  let start
  const onMessage = (evt) => {
    const bytes = evt.data.subarray()
    chunks.push(bytes)
    received += bytes.byteLength
    if (received >= PING_LENGTH) echoed.resolve(performance.now() - start)
  }
  try {
    signal.addEventListener('abort', onAbort, { once: true })
    stream.addEventListener('message', onMessage)
    stream.addEventListener('close', onClose)
    const data = crypto.getRandomValues(new Uint8Array(PING_LENGTH))
    start = performance.now()
    stream.send(data)
    const rttMs = await echoed.promise
    if (!Buffer.concat(chunks).equals(Buffer.from(data))) {
      throw new Error(`wrong ping echo: ${Buffer.concat(chunks).toString('hex')}`)
    }
    stream.removeEventListener('close', onClose)
    await stream.close({ signal })
    return rttMs
  } catch (err) {
    stream.abort(err)
    throw err
  } finally {
    signal.removeEventListener('abort', onAbort)
    stream.removeEventListener('message', onMessage)
    stream.removeEventListener('close', onClose)
  }
}

/** Reads commands from stdin (see "Commands" at the top) and answers each as it finishes. */
function readCommands (node, multiaddr, { describeConnection, relayTransport }) {
  // name -> [handler, what it needs: 'dht' (--kad), 'relay' (--relay) or null]
  const handlers = {
    dial: [dial, null],
    ping: [pingPeer, null],
    listen_relay: [listenRelay, 'relay'],
    confirm_observed: [confirmObserved, null],
    addresses: [addresses, null],
    kad_bootstrap: [kadBootstrap, 'dht'],
    kad_table: [kadTable, 'dht'],
    kad_closest: [kadClosest, 'dht'],
    kad_put: [kadPut, 'dht'],
    kad_get: [kadGet, 'dht'],
    kad_provide: [kadProvide, 'dht'],
    kad_providers: [kadProviders, 'dht']
  }
  onCommandLine = runCommand
  for (const line of pendingLines.splice(0)) runCommand(line)

  function runCommand (line) {
    let cmd
    try {
      cmd = JSON.parse(line)
    } catch (err) {
      emit({ event: 'command_error', id: null, error: `not JSON: ${line}` })
      return
    }
    const name = typeof cmd?.cmd === 'string' ? cmd.cmd : null
    const id = cmd?.id ?? null
    const [handler, needs] = name != null && Object.hasOwn(handlers, name) ? handlers[name] : [null, null]
    if (handler == null) {
      emit({ event: `${name ?? 'command'}_error`, id, error: `unknown command: ${line}` })
      return
    }
    Promise.resolve().then(async () => {
      if (needs === 'dht' && node.services.dht == null) {
        throw new Error('no DHT: start the peer with --kad server|client')
      }
      if (needs === 'relay' && relayTransport() == null) {
        throw new Error('no circuit relay transport: start the peer with --relay')
      }
      const signal = AbortSignal.timeout(cmd.timeoutMs ?? COMMAND_TIMEOUT_MS)
      const result = await handler(needs === 'dht' ? node.services.dht : null, cmd, signal)
      emit({ event: name, id, ...result })
    }).catch((err) => {
      console.error(`peer.mjs: command ${line} failed:`, err)
      emit({ event: `${name}_error`, id, error: errorString(err) })
    })
  }

  function hexBytes (cmd, field) {
    const hex = cmd[field]
    if (typeof hex !== 'string' || !/^([0-9a-f]{2})*$/i.test(hex)) {
      throw new Error(`"${field}" must be a hex string`)
    }
    return new Uint8Array(Buffer.from(hex, 'hex'))
  }

  const hex = (bytes) => Buffer.from(bytes).toString('hex')

  /** The CIDv1 (raw codec) whose multihash is the command's "key": what provide/findProviders take. */
  async function cidOf (cmd) {
    const { CID } = await import('multiformats/cid')
    const Digest = await import('multiformats/hashes/digest')
    const RAW_CODEC = 0x55
    return CID.createV1(RAW_CODEC, Digest.decode(hexBytes(cmd, 'key')))
  }

  function addrOf (cmd) {
    if (typeof cmd.addr !== 'string') throw new Error('"addr" must be a multiaddr string')
    return multiaddr(cmd.addr)
  }

  async function dial (_, cmd, signal) {
    const ma = addrOf(cmd)
    if (ma.getComponents().every((c) => c.name !== 'p2p')) {
      throw new Error(`dial address has no /p2p/<peer id>: ${cmd.addr}`)
    }
    return describeConnection(await node.dial(ma, { signal }))
  }

  async function pingPeer (_, cmd, signal) {
    const open = node.getConnections()
      .filter((c) => c.remotePeer.toString() === cmd.peerId && c.status === 'open')
    const conn = open.sort((a, b) => a.timeline.open - b.timeline.open).at(-1)
    if (conn == null) throw new Error(`no open connection to ${cmd.peerId}`)
    const rttMs = await pingOn(conn, signal)
    return { peerId: cmd.peerId, rttMs, remoteAddr: conn.remoteAddr.toString() }
  }

  async function listenRelay (_, cmd, signal) {
    let ma = addrOf(cmd)
    const names = ma.getComponents().map((c) => c.name)
    if (names.at(-1) !== 'p2p-circuit') ma = ma.encapsulate('/p2p-circuit')
    const relayId = ma.getComponents().findLast((c) => c.name === 'p2p')?.value
    if (relayId == null) throw new Error(`relay address has no /p2p/<relay id>: ${cmd.addr}`)
    // libp2p has no public listen() after start; its transport manager does what start() does
    // with addresses.listen. The circuit listener bounds the reservation by its own
    // reservationCompletionTimeout (10 s).
    await raceAbort(node.components.transportManager.listen([ma]), signal)
    const relayConn = node.getConnections().find((c) => c.remotePeer.toString() === relayId)
    const reservation = relayConn == null
      ? null
      : relayTransport().reservationStore.getReservation(relayConn.remotePeer)
    if (reservation == null) throw new Error(`listening on ${ma} but no reservation on ${relayId}`)
    const { base58btc } = await import('multiformats/bases/base58')
    const peerIdOf = (bytes) => base58btc.encode(bytes).slice(1)
    const voucher = reservation.voucher?.payload
    return {
      relay: relayId,
      addrs: node.getMultiaddrs().map((a) => a.toString()).filter((a) => a.includes('/p2p-circuit')),
      reservation: {
        expire: reservation.expire.toString(),
        expiresInMs: Number(reservation.expire) * 1000 - Date.now(),
        addrs: reservation.addrs.map((bytes) => multiaddr(bytes).toString()),
        voucher: voucher == null
          ? null
          : { relay: peerIdOf(voucher.relay), peer: peerIdOf(voucher.peer), expiration: voucher.expiration.toString() }
      }
    }
  }

  async function confirmObserved (_, cmd, signal) {
    if (!['tcp', 'quic'].includes(cmd.transport)) throw new Error('"transport" must be tcp or quic')
    const addressManager = node.components.addressManager
    for (;;) {
      const addrs = addressManager.getObservedAddrs().filter((ma) => transportOfAddr(ma) === cmd.transport)
      if (addrs.length > 0) {
        for (const ma of addrs) addressManager.confirmObservedAddr(ma)
        return { addrs: addrs.map((ma) => ma.toString()) }
      }
      await raceAbort(new Promise((resolve) => setTimeout(resolve, OBSERVED_POLL_MS)), signal)
    }
  }

  async function addresses () {
    // The clients' pending results (dialResults: multiaddr string -> counts), read from the
    // services' fields: neither module reports them otherwise.
    const pending = (client) => client == null
      ? null
      : [...client.dialResults.values()].map((r) => ({
          multiaddr: r.multiaddr.toString(),
          success: r.success,
          failure: r.failure,
          segments: [...r.networkSegments]
        }))
    return {
      addrs: node.components.addressManager.getAddressesWithMetadata().map((a) => ({
        multiaddr: a.multiaddr.toString(),
        verified: a.verified,
        type: a.type
      })),
      autonat: { v1: pending(node.services.autonat), v2: pending(node.services.autonatV2?.client) }
    }
  }

  function raceAbort (promise, signal) {
    return new Promise((resolve, reject) => {
      const onAbort = () => { reject(signal.reason) }
      if (signal.aborted) return onAbort()
      signal.addEventListener('abort', onAbort, { once: true })
      promise.then(resolve, reject).finally(() => { signal.removeEventListener('abort', onAbort) })
    })
  }

  function queryError (event) {
    return { from: event.from.toString(), error: errorString(event.error) }
  }

  async function kadBootstrap (dht, cmd, signal) {
    const ma = multiaddr(cmd.addr)
    const peerId = ma.getComponents().findLast((c) => c.name === 'p2p')?.value
    if (peerId == null) throw new Error(`address has no /p2p/<peer id>: ${cmd.addr}`)
    await node.dial(ma, { signal })
    while (!(await inTable(dht, peerId))) {
      signal.throwIfAborted()
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    return { peerId, tableSize: dht.routingTable.size }
  }

  function tablePeers (dht) {
    return [...dht.routingTable.kb.toIterable()].map((contact) => contact.peerId.toString())
  }

  async function inTable (dht, peerId) {
    return tablePeers(dht).includes(peerId)
  }

  async function kadTable (dht) {
    return { peers: tablePeers(dht) }
  }

  async function kadClosest (dht, cmd, signal) {
    const peers = []
    const errors = []
    for await (const event of dht.getClosestPeers(hexBytes(cmd, 'key'), { signal })) {
      if (event.name === 'FINAL_PEER') peers.push(event.peer.id.toString())
      if (event.name === 'QUERY_ERROR') errors.push(queryError(event))
    }
    return { peers, errors }
  }

  async function kadPut (dht, cmd, signal) {
    const value = hexBytes(cmd, 'value')
    const acks = []
    const errors = []
    for await (const event of dht.put(hexBytes(cmd, 'key'), value, { signal })) {
      if (event.name === 'PEER_RESPONSE' && event.messageName === 'PUT_VALUE' &&
          event.record != null && hex(event.record.value) === hex(value)) {
        acks.push(event.from.toString())
      }
      if (event.name === 'QUERY_ERROR') errors.push(queryError(event))
    }
    return { acks, errors }
  }

  async function kadGet (dht, cmd, signal) {
    let best = null
    const records = []
    const errors = []
    for await (const event of dht.get(hexBytes(cmd, 'key'), { signal })) {
      if (event.name === 'VALUE') best = { value: hex(event.value), from: event.from.toString() }
      if (event.name === 'PEER_RESPONSE' && event.messageName === 'GET_VALUE' && event.record != null) {
        records.push({ from: event.from.toString(), value: hex(event.record.value) })
      }
      if (event.name === 'QUERY_ERROR') errors.push(queryError(event))
    }
    return { value: best?.value ?? null, from: best?.from ?? null, records, errors }
  }

  async function kadProvide (dht, cmd, signal) {
    const cid = await cidOf(cmd)
    const sentTo = []
    const errors = []
    for await (const event of dht.provide(cid, { signal })) {
      if (event.name === 'PEER_RESPONSE' && event.messageName === 'ADD_PROVIDER') {
        sentTo.push(event.from.toString())
      }
      if (event.name === 'QUERY_ERROR') errors.push(queryError(event))
    }
    const addrs = node.getMultiaddrs().map((ma) => ma.toString())
    return { sentTo, addrs, errors }
  }

  async function kadProviders (dht, cmd, signal) {
    const cid = await cidOf(cmd)
    const providers = []
    const errors = []
    for await (const event of dht.findProviders(cid, { signal })) {
      // Not the PROVIDER events: js-libp2p reports each provider once, with the first peer
      // that named it; every answer's full list is in its PEER_RESPONSE event.
      if (event.name === 'PEER_RESPONSE' && event.messageName === 'GET_PROVIDERS') {
        for (const p of event.providers) {
          providers.push({
            from: event.from.toString(),
            peerId: p.id.toString(),
            addrs: p.multiaddrs.map((ma) => ma.toString())
          })
        }
      }
      if (event.name === 'QUERY_ERROR') errors.push(queryError(event))
    }
    return { providers, errors }
  }
}
