// js-libp2p interop peer for Pylon's interop tests (driven by interop/src/js.rs).
//
//   node peer.mjs listen [OPTIONS]          listen (see --transport), identify + ping every peer
//                                           that connects
//   node peer.mjs dial <maddr> [OPTIONS]    same, and dial <maddr> (must end in /p2p/<peer id>),
//                                           identify + ping it
//
// Options (each also accepted as --name=value):
//   --transport tcp|ws|quic   what to listen on: tcp  -> /ip4/127.0.0.1/tcp/0
//                                                ws   -> /ip4/127.0.0.1/tcp/0/ws   (plain WebSocket)
//                                                quic -> /ip4/127.0.0.1/udp/0/quic-v1
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
//    "multiplexer","muxerNegotiation"}
//     What js-libp2p negotiated for the connection. remoteAddr ends in /p2p/<remote peer id>;
//     transport is "tcp", "ws", "wss" or "quic" (from remoteAddr); encryption is the security
//     protocol id ("/noise", "/tls/1.0.0"; "native" on QUIC); multiplexer is the muxer protocol id
//     ("/yamux/1.0.0"; "quic" on QUIC) or null; muxerNegotiation says how the muxer was chosen:
//     "inlined" (inside the security handshake: noise handshake extensions, or TLS ALPN),
//     "multistream-select" (a separate negotiation after the handshake), "native" (QUIC) or null.
//   {"event":"identify","peerId","remoteAddr","agentVersion","protocolVersion","protocols","listenAddrs",
//    "observedAddr","signedPeerRecord":null|{"seq":"<decimal>","addrs":[...]},"peerStoreHasEnvelope"}
//     printed for every js-libp2p `peer:identify` event (identify and identify push).
//     signedPeerRecord is non-null only if js-libp2p opened and verified the remote's signed peer
//     record (RecordEnvelope.openAndCertify in @libp2p/identify). If the record fails verification,
//     js-libp2p rejects the whole identify message: no identify line, an identify_error line instead.
//   {"event":"identify_error","peerId","error"}
//   {"event":"ping","peerId","rttMs"} / {"event":"ping_error","peerId","error"}
//   {"event":"connection_close","peerId","remoteAddr"}
//   {"event":"done"}                       (dial mode: identify + ping of the dialed peer finished)
//   {"event":"error","error"}              (fatal, exit code 1)
//
// Commands: stdin takes one JSON object a line, {"cmd":NAME,"id":N,...}, answered (in any order, as
// each finishes) by {"event":NAME,"id":N,...} or, if it failed, {"event":"NAME_error","id":N,"error"}.
// Every command takes an optional "timeoutMs" (default 20000) after which it is aborted. Bytes are hex.
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

const USAGE = 'usage: node peer.mjs listen [--transport tcp|ws|quic] [--security noise|tls[,...]] [--kad server|client]\n' +
  '       node peer.mjs dial <multiaddr-with-/p2p/> [--transport tcp|ws|quic] [--security noise|tls[,...]] [--kad server|client]'
const TRANSPORTS = ['tcp', 'ws', 'quic']
const SECURITIES = ['noise', 'tls']
const KAD_MODES = ['server', 'client']
const KAD_PROTOCOL = '/ipfs/kad/1.0.0'
const COMMAND_TIMEOUT_MS = 20_000
const LISTEN_ADDRS = {
  tcp: '/ip4/127.0.0.1/tcp/0',
  ws: '/ip4/127.0.0.1/tcp/0/ws',
  quic: '/ip4/127.0.0.1/udp/0/quic-v1'
}

let args
try {
  args = parseArgs(process.argv.slice(2))
} catch (err) {
  console.error(`peer.mjs: ${err.message}\n${USAGE}`)
  emit({ event: 'error', error: `bad arguments: ${err.message}: ${process.argv.slice(2).join(' ')}` })
  process.exit(1)
}
const { mode, target, security, kad } = args
// For dial mode without --transport, listen on the transport of the dialed address.
const transport = args.transport ?? (mode === 'dial' ? transportOfAddr(target) : null) ?? 'tcp'

/** Parses `listen|dial <maddr>` followed by `--transport X` / `--security X` / `--kad X` (or `--opt=X`). */
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
    if (value == null) {
      value = argv[++i]
      if (value == null) throw new Error(`--${name} needs a value`)
    }
    if (!['transport', 'security', 'kad'].includes(name)) throw new Error(`unknown option --${name}`)
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
  return { mode, target, transport: opts.transport, security, kad: opts.kad ?? null }
}

/** "tcp", "ws", "wss" or "quic" for a multiaddr string, from its protocol names; null if none. */
function transportOfAddr (addr) {
  const names = String(addr).split('/')
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
    // admitted again until it reconnects.
    ping: kad == null ? ping() : ping({ maxOutboundStreams: 4 })
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
    addresses: { listen: [LISTEN_ADDRS[transport]] },
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
      const rttMs = await node.services.ping.ping(conn.remotePeer, {
        signal: AbortSignal.timeout(PING_TIMEOUT_MS)
      })
      emit({ event: 'ping', peerId, rttMs })
    } catch (err) {
      console.error(`peer.mjs: ping of ${peerId} failed:`, err)
      emit({ event: 'ping_error', peerId, error: errorString(err) })
    }
  }

  node.addEventListener('connection:open', (evt) => {
    const conn = evt.detail
    emit({
      event: 'connection_open',
      peerId: conn.remotePeer.toString(),
      remoteAddr: conn.remoteAddr.toString(),
      direction: conn.direction,
      transport: transportOfAddr(conn.remoteAddr),
      encryption: conn.encryption ?? null,
      multiplexer: conn.multiplexer ?? null,
      muxerNegotiation: muxerNegotiation(conn)
    })
    const d = handledFor(conn.id)
    handleConnection(conn).then(d.resolve, d.resolve)
  })
  node.addEventListener('connection:close', (evt) => {
    const conn = evt.detail
    emit({
      event: 'connection_close',
      peerId: conn.remotePeer.toString(),
      remoteAddr: conn.remoteAddr.toString()
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

  readCommands(node, multiaddr)

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

/** Reads commands from stdin (see "Commands" at the top) and answers each as it finishes. */
function readCommands (node, multiaddr) {
  const handlers = {
    kad_bootstrap: kadBootstrap,
    kad_table: kadTable,
    kad_closest: kadClosest,
    kad_put: kadPut,
    kad_get: kadGet,
    kad_provide: kadProvide,
    kad_providers: kadProviders
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
    const handler = name != null && Object.hasOwn(handlers, name) ? handlers[name] : null
    if (handler == null) {
      emit({ event: `${name ?? 'command'}_error`, id, error: `unknown command: ${line}` })
      return
    }
    Promise.resolve().then(async () => {
      if (node.services.dht == null) throw new Error('no DHT: start the peer with --kad server|client')
      const signal = AbortSignal.timeout(cmd.timeoutMs ?? COMMAND_TIMEOUT_MS)
      const result = await handler(node.services.dht, cmd, signal)
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
