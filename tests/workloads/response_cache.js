// A node service that keeps every response it renders in a cache that never evicts, while the request's scratch
// buffer is dropped. Mode `buffers` keeps each response as a Buffer (its bytes are off V8's heap); mode `objects`
// keeps it as JS objects and strings (V8's heap). Run with --perf-basic-prof so that V8 writes
// /tmp/perf-<pid>.map. Arguments: requests per second, seconds of activity, seconds to hold, mode.
'use strict';
const [rate = 160, secs = 7, hold = 120] = process.argv.slice(2, 5).map(Number);
const mode = process.argv[5] || 'buffers';
const cache = [];

function cacheResponseBuffer(id) {
  const body = Buffer.alloc(256 * 1024, id & 0xff);
  cache.push(body);
  return body.length;
}

function cacheResponseObject(id) {
  const rows = [];
  for (let i = 0; i < 2048; i++) rows.push({ id, row: i, text: `response ${id} row ${i} `.padEnd(96, '.') });
  cache.push(rows);
  return rows.length;
}

function handleRequest(id) {
  const scratch = Buffer.alloc(16 * 1024, 1);
  const keep = mode === 'objects' ? cacheResponseObject : cacheResponseBuffer;
  return keep(id + scratch[0]);
}

let served = 0;
const start = Date.now();
const timer = setInterval(() => {
  const due = Math.floor(((Date.now() - start) / 1000) * rate);
  while (served < due) handleRequest(served++);
  if (Date.now() - start > secs * 1000) clearInterval(timer);
}, 10);
setTimeout(() => {}, (secs + hold) * 1000);
