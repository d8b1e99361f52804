// Throughput of @herald/client from Node: acked publishes and group consume with acks, the
// workloads of `herald bench publish` and `herald bench consume` (docs/PERFORMANCE.md), measured
// through the client's public API.
//
//   npm run bench                                   # starts herald from HERALD_BIN (fsync interval)
//   EVENT_BUS_URL=http://127.0.0.1:3003 npm run bench   # a running server instead
//
// Settings (environment): BENCH_RUNS (3), BENCH_EVENTS (200000), BENCH_WINDOW (10000 publishes
// outstanding), BENCH_BATCH (100 events per frame), BENCH_MAX_IN_FLIGHT (1000), BENCH_FSYNC
// (interval), HERALD_BIN (default TEST_HERALD_BINARY, else ../../target/release/herald).

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { EventBusClient } from '@herald/client';

const here = path.dirname(fileURLToPath(import.meta.url));
const number = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const RUNS = number('BENCH_RUNS', 3);
const EVENTS = number('BENCH_EVENTS', 200_000);
const WINDOW = number('BENCH_WINDOW', 10_000);
const BATCH = number('BENCH_BATCH', 100);
const MAX_IN_FLIGHT = number('BENCH_MAX_IN_FLIGHT', 1000);
const SEQUENTIAL_EVENTS = number('BENCH_SEQUENTIAL_EVENTS', 5_000);
const FSYNC = process.env.BENCH_FSYNC ?? 'interval';
/** About 100 bytes of data, as herald bench sends. */
const PAD = 'x'.repeat(80);

async function startHerald(): Promise<{ url: string; stop(): Promise<void> }> {
  const binary = process.env.HERALD_BIN ?? process.env.TEST_HERALD_BINARY ?? path.join(here, '..', '..', '..', '..', 'target', 'release', 'herald');
  const dir = mkdtempSync(path.join(tmpdir(), 'herald-bench-'));
  const child = spawn(binary, ['serve', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--fsync', FSYNC], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('HERALD_'))), RUST_LOG: 'warn' },
  });
  const url = await new Promise<string>((resolve, reject) => {
    let log = '';
    const timer = setTimeout(() => reject(new Error(`herald did not start: ${log}`)), 10_000);
    child.stderr.on('data', (chunk: Buffer) => {
      log += chunk.toString();
      // Only a whole line: a chunk may end inside the address.
      const match = log.match(/listening on (http:\/\/127\.0\.0\.1:\d+)\s/);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]!);
      }
    });
    child.once('exit', (code) => reject(new Error(`herald exited with ${code}: ${log}`)));
  });
  console.error(`# herald ${binary} at ${url}, fsync=${FSYNC}`);
  return {
    url,
    async stop() {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A workload's rate and the Node process's CPU time per event (user + system), which tells
 * the client's own cost apart from the server's speed. */
interface Measured {
  rate: number;
  cpuMicrosPerEvent: number;
}

async function measure(events: number, work: () => Promise<unknown>): Promise<Measured> {
  const cpu = process.cpuUsage();
  const started = performance.now();
  await work();
  const seconds = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  return { rate: events / seconds, cpuMicrosPerEvent: (used.user + used.system) / events };
}

/** Publishes `events` with up to `window` unanswered; resolves with events per second. */
async function publishWindowed(bus: EventBusClient, type: string, events: number, window: number): Promise<number> {
  const started = performance.now();
  await new Promise<void>((resolve, reject) => {
    let issued = 0;
    let done = 0;
    const pump = () => {
      while (issued < events && issued - done < window) {
        issued += 1;
        bus.publish(type, { n: issued, pad: PAD }).then(() => {
          done += 1;
          if (done === events) resolve();
          else pump();
        }, reject);
      }
    };
    pump();
  });
  return events / ((performance.now() - started) / 1000);
}

async function publishSequential(bus: EventBusClient, type: string, events: number): Promise<number> {
  const started = performance.now();
  for (let n = 0; n < events; n += 1) await bus.publish(type, { n, pad: PAD });
  return events / ((performance.now() - started) / 1000);
}

async function consume(url: string, run: number): Promise<Measured> {
  const type = `benchc${run}x${Date.now() % 100000}.tick`;
  const producer = new EventBusClient({ eventBusUrl: url, batchSize: BATCH, maxBufferedEvents: WINDOW * 2, timeout: 60_000 });
  await publishWindowed(producer, type, EVENTS, WINDOW);
  await producer.close();
  const consumer = new EventBusClient({ eventBusUrl: url, timeout: 60_000 });
  const group = `bench-group-${run}-${Date.now()}`;
  let handled = 0;
  const measured = await measure(EVENTS, () => new Promise<void>((resolve) => {
    void consumer.subscribe(
      type,
      () => {
        handled += 1;
        if (handled === EVENTS) resolve();
      },
      { group, from: 'earliest', maxInFlight: MAX_IN_FLIGHT },
    );
  }));
  // Every ack reached the group (the last ones leave in the next event-loop turn).
  for (let tries = 0; ; tries += 1) {
    const info = await consumer.getGroup(group);
    if (info.acked === EVENTS) break;
    if (tries > 500) throw new Error(`the group counts ${info.acked} acks of ${EVENTS}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await consumer.close();
  return measured;
}

function summary(all: Measured[]): string {
  const values = all.map((m) => m.rate);
  const sorted = [...values].sort((a, b) => a - b);
  const cpu = [...all.map((m) => m.cpuMicrosPerEvent)].sort((a, b) => a - b)[Math.floor(all.length / 2)]!;
  const k = (v: number) => (v >= 10_000 ? `${Math.round(v / 1000)} k` : `${Math.round(v)}`);
  const median = sorted[Math.floor(sorted.length / 2)]!;
  return `${k(median)}/s (${k(sorted[0]!)}–${k(sorted[sorted.length - 1]!)}) | ${cpu.toFixed(1)} µs`;
}

async function main() {
  const external = process.env.EVENT_BUS_URL;
  const server = external === undefined ? await startHerald() : { url: external, stop: async () => {} };
  const results: Record<string, Measured[]> = { publish: [], sequential: [], consume: [] };
  try {
    for (let run = 0; run < RUNS; run += 1) {
      const bus = new EventBusClient({ eventBusUrl: server.url, batchSize: BATCH, maxBufferedEvents: WINDOW * 2, timeout: 60_000 });
      results.publish!.push(await measure(EVENTS, () => publishWindowed(bus, `benchp${run}.tick`, EVENTS, WINDOW)));
      results.sequential!.push(await measure(SEQUENTIAL_EVENTS, () => publishSequential(bus, `benchs${run}.tick`, SEQUENTIAL_EVENTS)));
      await bus.close();
      results.consume!.push(await consume(server.url, run));
      console.error(`# run ${run + 1}: ${Object.entries(results).map(([name, values]) => `${name} ${Math.round(values.at(-1)!.rate)}/s`).join(', ')}`);
    }
  } finally {
    await server.stop();
  }
  console.log(`Node ${process.version}, ${cpus().length} CPUs, ${RUNS} runs, ${EVENTS} events of ~100 bytes of data, fsync=${FSYNC}`);
  console.log('| workload | @herald/client (Node) | client CPU per event |');
  console.log('| --- | --- | --- |');
  console.log(`| publish, 1 client, ${WINDOW} outstanding, batchSize ${BATCH} | ${summary(results.publish!)} |`);
  console.log(`| publish, one awaited at a time | ${summary(results.sequential!)} |`);
  console.log(`| group consume with acks, 1 member, maxInFlight ${MAX_IN_FLIGHT}, ${EVENTS} backlog | ${summary(results.consume!)} |`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
