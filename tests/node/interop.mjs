// Node BullMQ enqueues jobs for weir processors and reads what comes back: the job's data is
// the input state, its return value weir's result document, and a failed step fails the job
// with "kind (code): message" as its reason.
//
//   node interop.mjs redis://127.0.0.1:6379 [prefix]
//
// Prints one JSON line: {"ok": <return value of increment>, "failed": <failed reason>,
// "over": <failed reason of a third job>} (the test's tenant may run two a minute).
import { Queue, QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';

const [url, prefix = 'weir'] = process.argv.slice(2);
// BullMQ wants its own connections: `maxRetriesPerRequest: null` for the blocking ones.
const connect = () => new Redis(url, { maxRetriesPerRequest: null });

async function run(name, data) {
  const connections = [connect(), connect()];
  const queue = new Queue(name, { connection: connections[0], prefix });
  const events = new QueueEvents(name, { connection: connections[1], prefix });
  await events.waitUntilReady();
  try {
    const job = await queue.add('from-node', data);
    return await job.waitUntilFinished(events, 30_000);
  } finally {
    await events.close();
    await queue.close();
    // Connections passed in are ours to close.
    await Promise.all(connections.map((c) => c.quit()));
  }
}

// The reason a job failed with, or null if it succeeded.
async function reason(name, data) {
  try {
    await run(name, data);
    return null;
  } catch (error) {
    return error.message;
  }
}

const ok = await run('increment', { count: 41 });
const failed = await reason('validate-email', { email: 'nope' });
const over = await reason('increment', { count: 1 });
console.log(JSON.stringify({ ok, failed, over }));
