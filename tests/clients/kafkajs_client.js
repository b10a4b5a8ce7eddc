#!/usr/bin/env node
// kafkajs side of the client test contract (see kafka_client.py):
//
//   node kafkajs_client.js produce --bootstrap B --topic T --count N
//        --codec none|gzip|snappy|lz4|zstd --acks 0|1|all [--idempotent]
//   node kafkajs_client.js consume --bootstrap B --topic T --count N
//        [--group G] [--timeout S]
//   node kafkajs_client.js record TOPIC START [END]  (prints generated records)
//
// Security, on produce and consume (the same options as kafka_client.py):
//   [--security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL]
//   [--sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 --sasl-username U --sasl-password P]
//   [--ssl-ca FILE]   (PEM)
// A produce whose connection fails (an authentication error, for one) reports every record
// as an error with the reason, instead of exiting without a result.
//
// Prints exactly one JSON line on stdout; logs go to stderr. Modules are
// resolved through NODE_PATH (the test harness points it at
// $KKP_TOOLS_DIR/node/node_modules).
'use strict'

const {
  Kafka,
  CompressionTypes,
  CompressionCodecs,
  Partitioners,
  logLevel,
} = require('kafkajs')

// ---------------------------------------------------------------------------
// Mirror of records.py `record()` -- keep the two byte-identical.
const WORDS = [
  'alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel',
  'india', 'juliet', 'kilo', 'lima', 'mike', 'november', 'oscar', 'papa',
  'kafka', 'kinesis', 'proxy', 'record', 'batch', '0123456789', '~!@#$%^&*()', 'ZZZ',
]

function recordFor(topic, i) {
  let x = 0x811c9dc5
  for (const b of Buffer.from(`${topic}|${i}`)) {
    x = Math.imul(x ^ b, 0x01000193) >>> 0
  }
  if (x === 0) x = 0x9e3779b9
  const next = () => {
    x = (x ^ (x << 13)) >>> 0
    x = (x ^ (x >>> 17)) >>> 0
    x = (x ^ (x << 5)) >>> 0
    return x
  }
  const length = 10 + (next() % 991)
  const parts = []
  let n = 0
  while (n < length) {
    const w = WORDS[next() % WORDS.length]
    parts.push(w)
    n += w.length + 1
  }
  const payload = parts.join(' ').slice(0, length)
  return {
    key: Buffer.from(`key-${String(i).padStart(6, '0')}`),
    value: Buffer.from(`${topic}|${i}|${payload}`),
  }
}
// ---------------------------------------------------------------------------

function parseArgs(argv) {
  const out = { _: [] }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) {
      out._.push(a)
      continue
    }
    const name = a.slice(2)
    if (name === 'idempotent' || name === 'legacy-api') out[name] = true
    else out[name] = argv[++i]
  }
  return out
}

const fs = require('fs')

const log = (...a) => process.stderr.write(a.join(' ') + '\n')

function logCreator() {
  return ({ level, log: entry }) => {
    const { message, timestamp, logger, ...extra } = entry
    log(`${timestamp} kafkajs[${level}] ${message} ${JSON.stringify(extra)}`)
  }
}

async function registerCodecs(codec) {
  if (codec === 'snappy') {
    CompressionCodecs[CompressionTypes.Snappy] = require('kafkajs-snappy')
  } else if (codec === 'lz4') {
    const LZ4Codec = require('kafkajs-lz4')
    CompressionCodecs[CompressionTypes.LZ4] = new LZ4Codec().codec
  } else if (codec === 'zstd') {
    // zstd-codec is emscripten-compiled zstd shipped as plain JS: no native
    // build. Simple.compress writes the content size into the frame; the
    // streaming decoder also handles frames without it (Java/librdkafka).
    const { ZstdCodec } = require('zstd-codec')
    const zstd = await new Promise(resolve => ZstdCodec.run(resolve))
    CompressionCodecs[CompressionTypes.ZSTD] = () => ({
      async compress(encoder) {
        return Buffer.from(new zstd.Simple().compress(encoder.buffer, 3))
      },
      async decompress(buffer) {
        const out = new zstd.Streaming().decompress(buffer)
        if (!out) throw new Error('zstd-codec: failed to decompress')
        return Buffer.from(out)
      },
    })
  }
}

// Register every codec a consumer may meet (batches are decoded by codec id).
async function registerAllCodecs() {
  for (const c of ['snappy', 'lz4', 'zstd']) await registerCodecs(c)
}

const CODECS = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD,
}
const ACKS = { 0: 0, 1: 1, all: -1 }

// kafkajs `ssl` and `sasl` settings for the security options.
function security(a) {
  const protocol = a['security-protocol'] || 'PLAINTEXT'
  if (!['PLAINTEXT', 'SSL', 'SASL_PLAINTEXT', 'SASL_SSL'].includes(protocol)) {
    throw new Error(`--security-protocol: invalid choice ${protocol}`)
  }
  const out = {}
  if (protocol.endsWith('SSL')) {
    // Node verifies the certificate against the host dialled, as the other clients do.
    out.ssl = a['ssl-ca'] ? { ca: [fs.readFileSync(a['ssl-ca'])] } : true
  }
  const mechanism = a['sasl-mechanism']
  if (protocol.startsWith('SASL_') !== !!mechanism) {
    throw new Error('--sasl-mechanism goes with (and only with) a SASL_ --security-protocol')
  }
  if (mechanism) {
    if (!['PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512'].includes(mechanism)) {
      throw new Error(`--sasl-mechanism: invalid choice ${mechanism}`)
    }
    out.sasl = {
      mechanism: mechanism.toLowerCase(),
      username: a['sasl-username'],
      password: a['sasl-password'],
    }
  }
  return out
}

function client(a) {
  return new Kafka({
    ...security(a),
    clientId: 'kkp-kafkajs',
    brokers: a.bootstrap.split(','),
    logLevel: logLevel[(process.env.KKP_CLIENT_LOG || 'WARN').toUpperCase()] ?? logLevel.WARN,
    logCreator,
    retry: { retries: 5 },
  })
}

async function produce(a) {
  const count = Number(a.count)
  const codec = a.codec || 'none'
  if (!(codec in CODECS)) throw new Error(`unknown codec ${codec}`)
  if (!((a.acks || 'all') in ACKS)) throw new Error(`unknown acks ${a.acks}`)
  if (a['legacy-api']) throw new Error('--legacy-api is not supported by kafkajs')
  await registerCodecs(codec)
  const producer = client(a).producer({
    createPartitioner: Partitioners.DefaultPartitioner,
    allowAutoTopicCreation: false,
    idempotent: !!a.idempotent,
    maxInFlightRequests: a.idempotent ? 1 : undefined,
  })
  const errors = { count: 0, first: [] }
  const addError = (e, n) => {
    errors.count += n
    if (errors.first.length < 5) errors.first.push(String((e && e.message) || e))
  }
  let produced = 0
  try {
    await producer.connect()
  } catch (e) {
    addError(e, count)
    return { produced, errors: errors.first, error_count: errors.count }
  }
  try {
    const chunk = 500
    for (let start = 0; start < count; start += chunk) {
      const messages = []
      for (let i = start; i < Math.min(count, start + chunk); i++) messages.push(recordFor(a.topic, i))
      try {
        await producer.send({
          topic: a.topic,
          messages,
          acks: ACKS[a.acks || 'all'],
          compression: CODECS[codec],
          timeout: 30000,
        })
        produced += messages.length
      } catch (e) {
        addError(e, messages.length)
      }
    }
  } finally {
    await producer.disconnect()
  }
  return { produced, errors: errors.first, error_count: errors.count }
}

async function consume(a) {
  const count = Number(a.count)
  const timeoutMs = Number(a.timeout || 60) * 1000
  await registerAllCodecs()
  const kafka = client(a)
  const consumer = kafka.consumer({
    groupId: a.group || `kkp-nogroup-${process.pid}-${Date.now()}`,
    maxWaitTimeInMs: 500,
    allowAutoTopicCreation: false,
  })
  const seen = new Set()
  const stats = { consumed: 0, duplicates: 0, mismatched: 0, examples: [] }
  const errors = []
  const example = s => {
    if (stats.examples.length < 5) stats.examples.push(s)
  }
  let resolveDone
  const done = new Promise(resolve => {
    resolveDone = resolve
  })
  const verify = (key, value, where) => {
    stats.consumed++
    const k = key ? key.toString() : ''
    const m = /^key-(\d+)$/.exec(k)
    const i = m ? Number(m[1]) : -1
    if (i < 0 || i >= count) {
      stats.mismatched++
      example(`unexpected key ${JSON.stringify(k.slice(0, 60))} at ${where}`)
      return
    }
    if (seen.has(i)) {
      stats.duplicates++
      return
    }
    const want = recordFor(a.topic, i)
    if (!value || !want.value.equals(value)) {
      stats.mismatched++
      example(
        `value mismatch for key-${String(i).padStart(6, '0')} at ${where}: got ${value ? value.length : 0} bytes, want ${want.value.length} bytes`,
      )
    }
    seen.add(i)
  }
  const assigned = new Set()
  consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
    for (const p of payload.memberAssignment[a.topic] || []) assigned.add(p)
  })
  await consumer.connect()
  await consumer.subscribe({ topic: a.topic, fromBeginning: true })
  await consumer.run({
    autoCommit: !!a.group,
    eachBatch: async ({ batch, resolveOffset, heartbeat }) => {
      for (const m of batch.messages) {
        verify(m.key, m.value, `p${batch.partition}@${m.offset}`)
        resolveOffset(m.offset)
      }
      await heartbeat()
      if (seen.size >= count) resolveDone()
    },
  })
  const timer = setTimeout(resolveDone, timeoutMs)
  await done
  clearTimeout(timer)
  try {
    await consumer.disconnect()
  } catch (e) {
    errors.push(`disconnect: ${e.message}`)
  }
  const group = {}
  if (a.group) {
    // Same shape as kafka_client.py's group_summary().
    const admin = kafka.admin()
    await admin.connect()
    const [res] = await admin.fetchOffsets({ groupId: a.group, topics: [a.topic] })
    await admin.disconnect()
    const committed = {}
    let total = 0
    for (const { partition, offset } of res.partitions.sort((x, y) => x.partition - y.partition)) {
      const o = Number(offset) >= 0 ? Number(offset) : -1
      committed[String(partition)] = o
      if (o > 0) total += o
    }
    group.assigned = [...assigned].sort((x, y) => x - y)
    group.committed = committed
    group.committed_total = total
  }
  return {
    consumed: stats.consumed,
    distinct: seen.size,
    missing: count - seen.size,
    duplicates: stats.duplicates,
    mismatched: stats.mismatched,
    examples: stats.examples,
    errors,
    ...group,
  }
}

async function main() {
  const a = parseArgs(process.argv.slice(2))
  const cmd = a._[0]
  let out
  if (cmd === 'produce') out = await produce(a)
  else if (cmd === 'consume') out = await consume(a)
  else if (cmd === 'record') {
    const start = Number(a._[2])
    const end = a._[3] === undefined ? start + 1 : Number(a._[3])
    const lines = []
    for (let n = start; n < end; n++) {
      const r = recordFor(a._[1], n)
      lines.push(`${r.key}\n${r.value}\n`)
    }
    return lines.join('')
  } else throw new Error(`usage: kafkajs_client.js produce|consume|record ... (got ${cmd})`)
  return JSON.stringify(out) + '\n'
}

main().then(
  // Exit only once stdout is flushed (it is asynchronous on pipes); kafkajs
  // may leave timers behind that would otherwise keep the process alive.
  text => process.stdout.write(text, () => process.exit(0)),
  e => {
    log(`fatal: ${(e && e.stack) || e}`)
    process.exit(1)
  },
)
