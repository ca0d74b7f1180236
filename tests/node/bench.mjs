// The queue benchmark's Node baseline: BullMQ running a trivial JS job, on the Redis given.
//
//   node bench.mjs redis://127.0.0.1:6379 WORKERS ROUND_TRIPS JOBS IN_FLIGHT [SHAPE]
//
// Prints one JSON line: {"p50Us", "p99Us", "perSecond"}: the round trip of one job (added,
// processed, its completion seen by the producer) one at a time, and the jobs completed per
// second with IN_FLIGHT in flight. Workers run in this process, 8 jobs at a time each.
// SHAPE is `single` (the default), `chain3` (a flow of three jobs, each the parent of the
// one before) or `par3` (a flow of three children and their parent): then a "job" is the
// whole flow, done when its root is.
import { FlowProducer, Queue, QueueEvents, Worker } from 'bullmq';
import { Redis } from 'ioredis';

const [url, workersArg, roundTripsArg, jobsArg, inFlightArg, shapeArg] = process.argv.slice(2);
const shape = shapeArg || 'single';
if (!['single', 'chain3', 'par3'].includes(shape)) throw new Error(`unknown shape ${shape}`);
const [workerCount, roundTrips, jobs, inFlight] = [workersArg, roundTripsArg, jobsArg, inFlightArg].map(Number);
const connections = [];
const connect = () => {
  const c = new Redis(url, { maxRetriesPerRequest: null });
  connections.push(c);
  return c;
};
const prefix = 'nodebench';
const name = 'trivial';
const queue = new Queue(name, { connection: connect(), prefix });
const events = new QueueEvents(name, { connection: connect(), prefix });
const workers = [];
for (let i = 0; i < workerCount; i++) {
  workers.push(new Worker(name, async () => ({}), { connection: connect(), prefix, concurrency: 8 }));
}
await events.waitUntilReady();
await Promise.all(workers.map((w) => w.waitUntilReady()));

const flows = new FlowProducer({ connection: connect(), prefix });
const opts = { removeOnComplete: 1000 };
const leaf = () => ({ name: 't', queueName: name, data: {}, opts });
const tree = {
  chain3: () => ({ ...leaf(), children: [{ ...leaf(), children: [leaf()] }] }),
  par3: () => ({ ...leaf(), children: [leaf(), leaf(), leaf()] }),
};
const once = async () => {
  const job = shape === 'single'
    ? await queue.add('t', {}, opts)
    : (await flows.add(tree[shape]())).job;
  await job.waitUntilFinished(events, 30_000);
};
for (let i = 0; i < 30; i++) await once();
const times = [];
for (let i = 0; i < roundTrips; i++) {
  const start = process.hrtime.bigint();
  await once();
  times.push(Number(process.hrtime.bigint() - start) / 1000);
}
times.sort((a, b) => a - b);
const pct = (p) => times[Math.min(times.length - 1, Math.floor((p / 100) * times.length))];

let next = 0;
const started = process.hrtime.bigint();
await Promise.all(
  Array.from({ length: inFlight }, async () => {
    while (next < jobs) {
      next++;
      await once();
    }
  }),
);
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
console.log(JSON.stringify({ p50Us: pct(50), p99Us: pct(99), perSecond: jobs / seconds }));
await Promise.all(workers.map((w) => w.close()));
await events.close();
await flows.close();
await queue.close();
await Promise.all(connections.map((c) => c.quit()));
