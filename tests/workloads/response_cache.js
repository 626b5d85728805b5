// A node service that keeps every response buffer it renders in a cache that never evicts, while the request's
// scratch buffer is dropped. Run with --perf-basic-prof so that V8 writes /tmp/perf-<pid>.map. Arguments: requests
// per second, seconds of activity, seconds to hold.
'use strict';
const [rate = 160, secs = 7, hold = 120] = process.argv.slice(2).map(Number);
const cache = [];

function cacheResponseBuffer(id) {
  const body = Buffer.alloc(256 * 1024, id & 0xff);
  cache.push(body);
  return body.length;
}

function handleRequest(id) {
  const scratch = Buffer.alloc(16 * 1024, 1);
  return cacheResponseBuffer(id + scratch[0]);
}

let served = 0;
const start = Date.now();
const timer = setInterval(() => {
  const due = Math.floor(((Date.now() - start) / 1000) * rate);
  while (served < due) handleRequest(served++);
  if (Date.now() - start > secs * 1000) clearInterval(timer);
}, 10);
setTimeout(() => {}, (secs + hold) * 1000);
