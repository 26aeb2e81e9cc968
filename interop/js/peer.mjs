// js-libp2p interop peer for Pylon's interop tests (driven by interop/src/js.rs).
//
//   node peer.mjs listen          listen on /ip4/127.0.0.1/tcp/0, identify + ping every peer that connects
//   node peer.mjs dial <maddr>    same, and dial <maddr> (must end in /p2p/<peer id>), identify + ping it
//
// stdout carries only JSON lines, one event per line (see README below); everything else goes to
// stderr (set DEBUG=libp2p:* for js-libp2p's own logs). The process runs until stdin reaches EOF or
// it gets SIGTERM/SIGINT, then stops the node and exits 0. A fatal error prints an "error" event and
// exits 1.
//
// Events:
//   {"event":"listening","peerId","addrs":[...]}
//   {"event":"connection_open","peerId","remoteAddr","direction"}
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
process.stdin.resume()

const [mode, target] = process.argv.slice(2)
if (mode !== 'listen' && !(mode === 'dial' && target != null)) {
  console.error('usage: node peer.mjs listen | node peer.mjs dial <multiaddr-with-/p2p/>')
  emit({ event: 'error', error: `bad arguments: ${process.argv.slice(2).join(' ')}` })
  process.exit(1)
}

try {
  await main()
} catch (err) {
  fatal(err)
}

async function main () {
  const { createLibp2p } = await import('libp2p')
  const { tcp } = await import('@libp2p/tcp')
  const { noise } = await import('@chainsafe/libp2p-noise')
  const { yamux } = await import('@chainsafe/libp2p-yamux')
  const { identify } = await import('@libp2p/identify')
  const { ping } = await import('@libp2p/ping')
  const { multiaddr } = await import('@multiformats/multiaddr')

  node = await createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp({
      inboundSocketInactivityTimeout: SOCKET_INACTIVITY_TIMEOUT_MS,
      outboundSocketInactivityTimeout: SOCKET_INACTIVITY_TIMEOUT_MS
    })],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    // The identify service takes its agent version from components.nodeInfo.userAgent.
    nodeInfo: { userAgent: 'js-libp2p-interop' },
    // The connection monitor pings every connection every 10 s and by default aborts the
    // connection if that ping fails; keep the connection so failures show up as ping_error.
    connectionMonitor: { abortConnectionOnPingFailure: false },
    services: {
      // We run identify ourselves on connection:open so that failures are reported
      // (the built-in runOnConnectionOpen swallows them).
      identify: identify({ runOnConnectionOpen: false, timeout: IDENTIFY_TIMEOUT_MS }),
      ping: ping()
    }
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
      direction: conn.direction
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

  await node.start()
  emit({
    event: 'listening',
    peerId: node.peerId.toString(),
    addrs: node.getMultiaddrs().map((ma) => ma.toString())
  })

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
