// Bull Board, the BullMQ dashboard, over weir's queues. weir's distributed runtime speaks
// BullMQ's protocol: each processor has a BullMQ queue named after it under weir's key
// prefix (default `weir`), so Bull Board shows them as they are — waiting, active,
// completed and failed jobs, with their data (the input state) and return values (weir's
// result documents). The queues are the processors published to Redis (`weir:_:plugins`);
// the list is read again every 30 s, so newly published processors appear.
//
//   npm install
//   REDIS_URL=redis://127.0.0.1:6379 [WEIR_PREFIX=weir] [PORT=3000] node server.mjs
//
// Then open http://127.0.0.1:3000/. Bull Board can retry, promote and clean jobs: it acts
// on weir's queues directly, so keep it behind your own authentication.
import express from 'express';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';

const url = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const prefix = process.env.WEIR_PREFIX || 'weir';
const port = Number(process.env.PORT ?? 3000);
const connection = new Redis(url, { maxRetriesPerRequest: null });

const serverAdapter = new ExpressAdapter();
serverAdapter.setBasePath('/');
const board = createBullBoard({ queues: [], serverAdapter });
const shown = new Map();

// weir's own queues: fan-outs' joins, chains' delays, and schedules' ticks (each schedule
// is a job scheduler of `_schedule`, its next tick a delayed job there).
const own = ['_join', '_delay', '_schedule'];

// Every processor weir has published gets its queue on the board, after weir's own.
async function addPublishedQueues() {
  const names = [...own, ...(await connection.hkeys(`${prefix}:_:plugins`)).sort()];
  for (const name of names) {
    if (shown.has(name)) continue;
    const queue = new Queue(name, { connection, prefix });
    shown.set(name, queue);
    board.addQueue(new BullMQAdapter(queue));
  }
}
await addPublishedQueues();
setInterval(() => addPublishedQueues().catch((e) => console.error(e.message)), 30_000).unref();

const app = express();
app.use('/', serverAdapter.getRouter());
const server = app.listen(port, '127.0.0.1', () => {
  console.log(`bull board on http://127.0.0.1:${server.address().port}/ (${shown.size} queues)`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, async () => {
    server.close();
    await Promise.all([...shown.values()].map((q) => q.close()));
    await connection.quit();
    process.exit(0);
  });
}
